"""The shared state on a real 3-master Redis Cluster and through a real Sentinel failover, on loopback.

The cluster: three `redis-server --cluster-enabled yes` joined by `redis-cli --cluster create`. Two
`llmgate serve` processes share it: a rollout change made on one is served by the other, a team's
requests per minute and a team's daily budget hold in total, and an answer cached by one is a hit on
the other. The state store itself, on the cluster: keys spread over every master are listed, updates
and leases hold between two stores, change notices reach the other store.

Sentinel: a master, its replica and a Sentinel; a gateway connected through the Sentinel keeps serving
while `SENTINEL FAILOVER` moves the master, and then writes its state to the new master.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import redis

from gateway.state.redis import RedisStateStore
from plugins.api_keys.plugin import hash_key
from tests.conftest import UPSTREAM_KEY
from tests.support import GatewayProcess, free_port, wait_until

ADMIN = "admin-token-for-cluster-tests-0123"
ROLL_KEY, LIMITED_KEY, SPENDER_KEY = (f"sk-lg-cluster-{name}-key-0123456789abcdef" for name in ("roll", "lim", "spend"))
PRICE = {"input": 100.0, "output": 100.0}  # $0.0001 a token: a short answer costs about $0.0007


def _redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `make test`, which installs it")
    return binary


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                    return port
                except OSError:
                    continue


def _start(workdir, port: int, *args: str) -> subprocess.Popen:
    common = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = subprocess.Popen([_redis_server(), *args, *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: _answers(port), f"redis-server on port {port}", timeout=10)
    return proc


def _answers(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_timeout=1).ping()
    except redis.ConnectionError:
        return False


def _stop(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 3-master Redis Cluster on loopback; yields its gateway URL (every master listed)."""
    workdir = tmp_path_factory.mktemp("cluster")
    ports = [_cluster_port() for _ in range(3)]
    procs = []
    try:
        for port in ports:
            node_config = f"nodes-{port}.conf"
            procs.append(_start(workdir, port, "--cluster-enabled", "yes", "--cluster-config-file", node_config))
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        wait_until(
            lambda: all(
                redis.Redis(port=p, decode_responses=True).cluster("info").get("cluster_state") == "ok" for p in ports
            ),
            "cluster_state:ok on every node",
            timeout=20,
        )
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    finally:
        _stop(procs)


@pytest.fixture
def cluster_url(cluster):
    """The cluster, emptied: every master flushed."""
    direct = redis.RedisCluster(host="127.0.0.1", port=int(cluster.split("//")[1].split(",")[0].split(":")[1]))
    direct.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    direct.close()
    return cluster


def direct_cluster(url: str) -> redis.RedisCluster:
    host, port = url.split("//")[1].split(",")[0].split(":")
    return redis.RedisCluster(host=host, port=int(port), decode_responses=True)


# --- the state store on a cluster ------------------------------------------------------------------


async def test_the_state_store_lists_updates_leases_and_notifies_across_the_clusters_masters(cluster_url):
    one, two = RedisStateStore(cluster_url), RedisStateStore(cluster_url)
    heard: list[dict] = []
    two.subscribe(heard.append)
    await one.open()
    await two.open()
    try:
        assert one.mode == "cluster"
        for i in range(30):
            await one.set(f"spread:{i}", {"i": i})
        direct = direct_cluster(cluster_url)
        masters = {direct.get_node_from_key(f"llmgate:state:spread:{i}").name for i in range(30)}
        direct.close()
        assert len(masters) == 3, "the keys are on every master"
        assert await two.items("spread:") == {f"spread:{i}": {"i": i} for i in range(30)}

        async def add(store):
            await store.update("counter", lambda old: (old or 0) + 1)

        await asyncio.gather(*(add(store) for _ in range(25) for store in (one, two)))
        assert await one.get("counter") == 50, "WATCH/MULTI on the key's master: no update lost"

        results = await asyncio.gather(one.acquire_lease("job", "a", 1.0), two.acquire_lease("job", "b", 1.0))
        assert sorted(results) == [False, True], "one holder at a time"
        holder, other = ("a", "b") if results[0] else ("b", "a")
        first = one if results[0] else two
        assert await first.acquire_lease("job", holder, 1.0), "the holder renews it"
        assert not await (two if first is one else one).acquire_lease("job", other, 1.0)
        await asyncio.sleep(1.2)
        assert await (two if first is one else one).acquire_lease("job", other, 1.0), "taken once it lapsed"

        await asyncio.sleep(0.3)  # the listener subscribed
        await one.publish({"kind": "test", "n": 1})
        for _ in range(50):
            if {"kind": "test", "n": 1} in heard:
                break
            await asyncio.sleep(0.05)
        assert {"kind": "test", "n": 1} in heard, "a PUBLISH on one node reaches a subscriber on another"
        event = await one.append_event({"kind": "audit", "route": "bot"})
        assert (await two.events(kind="audit"))[0]["id"] == event["id"]
    finally:
        await one.close()
        await two.close()


# --- two gateways sharing the cluster --------------------------------------------------------------


def gateway_config(fake, workdir, redis_url: str) -> dict:
    def backend(model):
        return {"kind": "openai", "base_url": fake.url + "/v1", "model": model, "api_key": UPSTREAM_KEY}

    return {
        "server": {"admin_token": ADMIN},
        "state": {"redis_url": redis_url, "sqlite_path": str(workdir / "state.db")},
        "backends": {"base": backend("gpt-test"), "cand": backend("gpt-test")},
        "routes": {"bot": {"baseline": "base", "candidates": {"cand": 50}}, "faq": {"baseline": "base"}},
        "prices": {"gpt-test": PRICE},
        "plugins": {
            "api_keys": {
                "enabled": True,
                "teams": {
                    "roll": {"keys": [hash_key(ROLL_KEY)]},
                    "limited": {"keys": [hash_key(LIMITED_KEY)], "requests_per_minute": 6},
                    "spender": {"keys": [hash_key(SPENDER_KEY)]},
                },
            },
            "quotas": {"enabled": True, "redis_timeout_ms": 5000},
            "budgets": {"enabled": True, "redis_timeout_ms": 5000, "teams": {"spender": {"daily_usd": 0.01}}},
            "semantic_cache": {"enabled": True, "semantic": False, "routes": ["faq"]},
            "rollout": {"resync_interval": 3600},  # so that only the change notice can move the other
            "traffic_log": {"path": str(workdir / "traffic.db"), "batch_wait_ms": 0},
        },
    }


def two_gateways(fake, tmp_path, redis_url):
    gateways = []
    for name in ("one", "two"):
        workdir = tmp_path / name
        workdir.mkdir()
        gateways.append(GatewayProcess(gateway_config(fake, workdir, redis_url), workdir))
    for gw in gateways:
        gw.start()
    return gateways


def ask(gw, key: str, content: str, route: str = "bot", user: str | None = None):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=route, max_tokens=8, messages=[{"role": "user", "content": content}], **({"user": user} or {})
        )
        return 200, raw.headers
    except openai.APIStatusError as err:
        return err.status_code, err.response.headers


def admin(gw, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        gw.url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def variants(gw, users) -> set[str]:
    with ThreadPoolExecutor(8) as pool:
        answers = pool.map(lambda u: ask(gw, ROLL_KEY, f"hello from {u} {time.monotonic()}", user=u), users)
        return {headers["x-llmgate-variant"] for status, headers in answers if status == 200}


def test_two_gateways_share_rollout_quotas_budgets_and_cache_on_a_cluster(fake_openai, tmp_path, cluster_url):
    one, two = two_gateways(fake_openai, tmp_path, cluster_url)
    try:
        users = [f"user-{i}" for i in range(40)]
        assert variants(two, users) == {"base", "cand"}
        admin(one, "/admin/routes/bot/rollout", {"candidate": "cand", "percent": 0})
        wait_until(lambda: variants(two, users) == {"base"}, "the other gateway to serve the change", timeout=5)

        with ThreadPoolExecutor(12) as pool:  # at once, half on each gateway
            statuses = list(pool.map(lambda i: ask((one, two)[i % 2], LIMITED_KEY, f"q {i}")[0], range(12)))
        assert statuses.count(200) == 6 and statuses.count(429) == 6, statuses

        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda i: ask((one, two)[i % 2], SPENDER_KEY, f"spend {i}")[0], range(30)))
        assert 200 in statuses and 429 in statuses, statuses
        direct = direct_cluster(cluster_url)
        spend_keys = [k for k in direct.scan_iter(match="{llmgate:spend}:team:spender:*")]
        assert spend_keys, "the team's counters under one hash tag"
        assert all(int(direct.get(k)) <= 10_000 for k in spend_keys), "the $0.01 held in total (micro-USD)"
        quota_keys = list(direct.scan_iter(match="llmgate:quota:*{limited}*"))
        assert len(quota_keys) == 2 and len({direct.keyslot(k) for k in quota_keys}) == 1, quota_keys
        direct.close()

        question = "What are your opening hours?"
        assert ask(one, ROLL_KEY, question, route="faq")[1].get("x-llmgate-cache") == "miss"
        wait_until(
            lambda: ask(two, ROLL_KEY, question, route="faq")[1].get("x-llmgate-cache") == "hit-exact",
            "the other gateway to answer from the shared entry",
            timeout=10,
        )
    finally:
        for gw in (one, two):
            gw.stop()
    for gw in (one, two):
        assert "Traceback" not in gw.log(), gw.log()[-3000:]


# --- Sentinel ---------------------------------------------------------------------------------------


@pytest.fixture
def sentinel(tmp_path):
    """A master, its replica and one Sentinel watching them (quorum 1), on loopback."""
    master_port, replica_port, sentinel_port = free_port(), free_port(), free_port()
    procs = [_start(tmp_path, master_port)]
    try:
        procs.append(_start(tmp_path, replica_port, "--replicaof", "127.0.0.1", str(master_port)))
        replica = redis.Redis(port=replica_port, decode_responses=True)
        wait_until(lambda: replica.info("replication")["master_link_status"] == "up", "the replica in sync")
        conf = tmp_path / "sentinel.conf"
        conf.write_text(
            f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
            f"sentinel monitor svc 127.0.0.1 {master_port} 1\n"
            "sentinel down-after-milliseconds svc 1000\nsentinel failover-timeout svc 5000\n"
        )
        procs.append(
            subprocess.Popen(
                [_redis_server(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        watcher = redis.Redis(port=sentinel_port, decode_responses=True)
        wait_until(
            lambda: _answers(sentinel_port) and watcher.sentinel_slaves("svc"), "the Sentinel to see the replica"
        )
        yield {
            "url": f"redis+sentinel://127.0.0.1:{sentinel_port}/svc",
            "sentinel": watcher,
            "ports": (master_port, replica_port),
        }
    finally:
        _stop(procs)


def test_a_gateway_through_sentinel_keeps_serving_across_a_failover_and_writes_to_the_new_master(
    fake_openai, tmp_path, sentinel
):
    (tmp_path / "gw").mkdir()
    gw = GatewayProcess(gateway_config(fake_openai, tmp_path / "gw", sentinel["url"]), tmp_path / "gw").start()
    try:
        assert ask(gw, ROLL_KEY, "before")[0] == 200
        old, new = sentinel["ports"]
        sentinel["sentinel"].execute_command("SENTINEL FAILOVER svc")
        statuses = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            statuses.append(ask(gw, ROLL_KEY, f"during {len(statuses)}")[0])
            if sentinel["sentinel"].sentinel_get_master_addr_by_name("svc")[1] == new and len(statuses) >= 5:
                break
            time.sleep(0.1)
        assert sentinel["sentinel"].sentinel_get_master_addr_by_name("svc")[1] == new, "the Sentinel moved the master"
        assert statuses.count(200) == len(statuses), f"served throughout the switch: {statuses}"

        # Redis replicates asynchronously: a write the old master took before the Sentinel turned it into
        # a replica is lost (Sentinel's documented window), so the change is made once it has.
        demoted = redis.Redis(port=old, decode_responses=True)
        wait_until(lambda: demoted.info("replication")["role"] == "slave", "the old master a replica")

        def rollout_written():
            try:
                admin(gw, "/admin/routes/bot/rollout", {"candidate": "cand", "percent": 0})
                return True
            except urllib.error.HTTPError:
                return False  # the store still on the old master: the change is refused, nothing half-made

        wait_until(rollout_written, "a rollout change accepted after the failover", timeout=10)
        from plugins.rollout.plugin import RouteRollout

        stored = redis.Redis(port=new, decode_responses=True).get("llmgate:state:rollout:bot")
        assert stored is not None and not RouteRollout.from_json(json.loads(stored)).allocation.percents().get("cand")
        assert ask(gw, ROLL_KEY, "after")[0] == 200
    finally:
        gw.stop()
    assert "Traceback" not in gw.log(), gw.log()[-3000:]


# --- the config check ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://cache:6379", "is not a Redis URL"),
        ("redis://", "names no host"),
        ("redis+cluster://", "names no host"),
        ("redis://:secret@cache:6379/cache", "the path must be a database number"),
        ("redis://a:6379,b:6379/0", "lists 2 hosts"),
        ("redis+sentinel://a:26379,b:26379", "names no Sentinel service"),
        ("redis+cluster://a:7000/2", "only database 0"),
        ("redis://cache:port/0", "is not host:port"),
    ],
)
def test_a_redis_url_of_the_wrong_kind_is_refused_naming_the_accepted_forms(url, says):
    from gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as refused:
        parse_config({"state": {"redis_url": url}, "backends": {}, "routes": {}})
    message = str(refused.value)
    assert "state.redis_url" in message and says in message, message
    assert "secret" not in message, "a password is never shown"
    if says != "lists 2 hosts":
        assert "redis+cluster://host:port,host:port" in message and "redis+sentinel://" in message


@pytest.mark.parametrize(
    ("url", "mode"),
    [
        ("redis://cache:6379/0", "single"),
        ("unix:///run/redis.sock", "single"),
        ("rediss+cluster://a:7000,b:7001", "cluster"),
        ("redis+sentinel://:pw@a:26379,b:26379/svc/2", "sentinel"),
    ],
)
def test_the_accepted_forms_choose_the_mode(url, mode):
    from gateway.state.redis_connect import parse_redis_url

    assert parse_redis_url(url).mode == mode
