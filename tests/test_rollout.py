"""Percentage rollout with real traffic: sticky users, canaries, the kill switch, operators' commands,
state across restarts and across replicas sharing Redis."""

import asyncio
import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from tests.conftest import UPSTREAM_KEY
from tests.support import GatewayProcess, free_port
from tests.test_routing import get_json

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-admin-token-0123456789"


def route_config(fake, tmp_path, candidates=None, **extra) -> dict:
    def backend(model):
        return {
            "kind": "openai",
            "base_url": fake.url + "/v1",
            "model": model,
            "api_key": UPSTREAM_KEY,
        }

    return {
        "server": {"admin_token": TOKEN},
        "state": {"sqlite_path": str(tmp_path / "state.db")},
        "backends": {"base": backend("m-base"), "cand-a": backend("m-a"), "cand-b": backend("m-b")},
        "routes": {
            "bot": {
                "baseline": "base",
                "candidates": candidates if candidates is not None else {"cand-a": 10, "cand-b": 20},
            }
        },
        **extra,
    }


def variants_for(url: str, users: list[str], concurrency: int = 32) -> dict[str, str]:
    """Which variant answered each user, through the gateway with the official async SDK."""

    async def run():
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="app-key", max_retries=0)
        gate = asyncio.Semaphore(concurrency)

        async def one(user):
            async with gate:
                raw = await client.chat.completions.with_raw_response.create(
                    model="bot", messages=[{"role": "user", "content": "hi"}], user=user
                )
                return user, raw.headers["x-llmgate-variant"]

        async with client:
            return dict(await asyncio.gather(*(one(u) for u in users)))

    return asyncio.run(run())


def admin(url: str, method: str, path: str, body: dict | None = None, token: str = TOKEN):
    request = urllib.request.Request(
        url + path,
        method=method,
        data=json.dumps(body).encode() if body else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", "X-LLMgate-Actor": "tester"},
    )
    try:
        with urllib.request.urlopen(request) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def cli(url: str, *args, token: str = TOKEN):
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--url", url],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "LLMGATE_ADMIN_TOKEN": token},
        timeout=60,
    )


def within(count: int, n: int, percent: float, sigmas: float = 4.5) -> bool:
    p = percent / 100
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


USERS = [f"user-{i}" for i in range(2000)]


def test_shares_match_percents_and_a_raise_only_moves_baseline_users(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(route_config(fake_openai, tmp_path))
    before = variants_for(gw.url, USERS)
    counts = {v: list(before.values()).count(v) for v in ("base", "cand-a", "cand-b")}
    assert within(counts["cand-a"], 2000, 10) and within(counts["cand-b"], 2000, 20), counts
    assert variants_for(gw.url, USERS[:300]) == {u: before[u] for u in USERS[:300]}, "the same user, the same variant"

    status, event = admin(gw.url, "POST", "/admin/routes/bot/rollout", {"candidate": "cand-a", "percent": 25})
    assert status == 200 and event["before"] == {"cand-a": 10.0, "cand-b": 20.0}
    assert event["after"] == {"cand-a": 25.0, "cand-b": 20.0} and event["actor"].startswith("tester")
    after = variants_for(gw.url, USERS)
    moved = {(before[u], after[u]) for u in USERS if before[u] != after[u]}
    assert moved == {("base", "cand-a")}, "raising a percent only moves users from the baseline to that candidate"
    assert within(list(after.values()).count("cand-a"), 2000, 25)
    assert list(after.values()).count("cand-b") == counts["cand-b"]


def test_canary_users_kill_switch_and_rollback(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(
        route_config(
            fake_openai,
            tmp_path,
            candidates={"cand-a": 0, "cand-b": 0},
            plugins={"rollout": {"canary": {"bot": {"cand-a": ["vip-1"]}}}},
        )
    )
    assert variants_for(gw.url, ["vip-1", "someone"]) == {"vip-1": "cand-a", "someone": "base"}
    assert admin(gw.url, "POST", "/admin/routes/bot/canary", {"candidate": "cand-b", "users": ["vip-2"]})[0] == 200
    assert variants_for(gw.url, ["vip-2"]) == {"vip-2": "cand-b"}

    admin(gw.url, "POST", "/admin/routes/bot/rollout", {"candidate": "cand-a", "percent": 100})
    assert set(variants_for(gw.url, USERS[:50]).values()) == {"cand-a"}
    status, event = admin(gw.url, "POST", "/admin/routes/bot/kill", {"on": True, "reason": "incident 42"})
    assert status == 200 and event["kind"] == "kill"
    assert set(variants_for(gw.url, USERS[:50] + ["vip-1", "vip-2"]).values()) == {"base"}
    admin(gw.url, "POST", "/admin/routes/bot/kill", {"on": False})
    assert set(variants_for(gw.url, USERS[:50]).values()) == {"cand-a"}

    done = cli(gw.url, "rollback", "bot", "--reason", "answers too long")
    assert done.returncode == 0, done.stderr
    assert "rollback" in done.stdout and "answers too long" in done.stdout
    assert set(variants_for(gw.url, USERS[:50] + ["vip-1", "vip-2"]).values()) == {"base"}, (
        "a rolled-back candidate gets nobody, canaries included"
    )
    status = json.loads(cli(gw.url, "status", "--json").stdout)
    assert status["rollout"]["routes"]["bot"]["rolled_back"]["cand-a"]["reason"] == "answers too long"
    assert status["rollout"]["routes"]["bot"]["percents"] == {}

    assert cli(gw.url, "rollout", "bot", "cand-b", "30").returncode == 0, "an operator re-enables a candidate"
    assert "cand-b" not in json.loads(cli(gw.url, "status", "--json").stdout)["rollout"]["routes"]["bot"]["rolled_back"]
    assert cli(gw.url, "promote", "bot", "cand-b", "--reason", "won the eval").returncode == 0
    assert set(variants_for(gw.url, USERS[:50]).values()) == {"cand-b"}

    events = cli(gw.url, "events", "bot", "--json")
    kinds = [e["kind"] for e in json.loads(events.stdout)]
    assert kinds == ["promote", "rollout", "rollback", "unkill", "kill", "rollout", "canary"]
    text = cli(gw.url, "status")
    assert text.returncode == 0 and "bot: baseline base" in text.stdout and "100.00%" in text.stdout


def test_operator_mistakes_get_clear_errors(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(route_config(fake_openai, tmp_path))
    assert (
        admin(gw.url, "POST", "/admin/routes/bot/rollout", {"candidate": "cand-a", "percent": 5}, token="wrong")[0]
        == 401
    )
    status, body = admin(gw.url, "POST", "/admin/routes/bot/rollout", {"candidate": "nope", "percent": 5})
    assert status == 400 and "'nope' is not a candidate of route 'bot'" in body["error"]["message"]
    status, body = admin(gw.url, "POST", "/admin/routes/bot/rollout", {"candidate": "cand-a", "percent": 95})
    assert status == 400 and "other candidates hold 20%" in body["error"]["message"]
    status, body = admin(gw.url, "POST", "/admin/routes/nope/rollout", {"candidate": "cand-a", "percent": 5})
    assert status == 404
    status, body = admin(gw.url, "POST", "/admin/routes/bot/rollback", {})
    assert status == 400 and body["error"]["param"] == "reason"
    unauthorized = cli(gw.url, "status", token="")
    assert (
        unauthorized.returncode == 1 and "401" in unauthorized.stderr and "LLMGATE_ADMIN_TOKEN" in unauthorized.stderr
    )
    unreachable = cli(f"http://127.0.0.1:{free_port()}", "status")
    assert unreachable.returncode == 1 and "cannot reach the gateway" in unreachable.stderr


def test_a_rollout_change_survives_a_restart_and_config_edits_apply(fake_openai, tmp_path):
    config = route_config(fake_openai, tmp_path)
    gw = GatewayProcess(config, tmp_path).start()
    try:
        assert cli(gw.url, "rollout", "bot", "cand-a", "40", "--reason", "looks good").returncode == 0
    finally:
        gw.stop()
    gw.start()
    try:
        percents = json.loads(cli(gw.url, "status", "--json").stdout)["rollout"]["routes"]["bot"]["percents"]
        assert percents == {"cand-a": 40.0, "cand-b": 20.0}, "the operator's change outlives the restart"
        config["routes"]["bot"]["candidates"] = {"cand-a": 10, "cand-b": 5}
        gw.write_config(config)
        gw.proc.send_signal(__import__("signal").SIGHUP)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            percents = json.loads(cli(gw.url, "status", "--json").stdout)["rollout"]["routes"]["bot"]["percents"]
            if percents == {"cand-a": 40.0, "cand-b": 5.0}:
                break
            time.sleep(0.1)
        assert percents == {"cand-a": 40.0, "cand-b": 5.0}, "only the percent edited in the config changes"
        events = json.loads(cli(gw.url, "events", "bot", "--json").stdout)
        assert events[0]["actor"] == "config" and events[0]["after"] == {"cand-a": 40.0, "cand-b": 5.0}
    finally:
        gw.stop()


def test_replicas_sharing_redis_apply_a_change_made_on_any_of_them(fake_openai, make_gateway, tmp_path, redis_url):
    config = route_config(
        fake_openai, tmp_path, state={"redis_url": redis_url}, plugins={"rollout": {"resync_interval": 3600}}
    )  # so only the change notice can do it
    replicas = [make_gateway(config) for _ in range(3)]
    users = USERS[:200]
    first = variants_for(replicas[0].url, users)
    assert all(variants_for(r.url, users) == first for r in replicas[1:]), "every replica assigns users alike"
    admin(replicas[1].url, "POST", "/admin/routes/bot/rollout", {"candidate": "cand-b", "percent": 0})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all("cand-b" not in variants_for(r.url, users).values() for r in replicas):
            break
        time.sleep(0.05)
    for replica in replicas:
        seen = variants_for(replica.url, users)
        assert "cand-b" not in seen.values()
        assert {u for u, v in seen.items() if v == "cand-a"} == {u for u, v in first.items() if v == "cand-a"}


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server this test may stop and start again on the same port."""
    import shutil

    port = free_port()
    args = [
        shutil.which("redis-server"),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp_path),
    ]

    class Server:
        url = f"redis://127.0.0.1:{port}/0"

        def start(self):
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            import redis

            for _ in range(200):
                try:
                    redis.Redis(port=port).ping()
                    return
                except redis.ConnectionError:
                    time.sleep(0.02)

        def stop(self):
            self.proc.terminate()
            self.proc.wait(10)

    server = Server()
    server.start()
    yield server
    if server.proc.poll() is None:
        server.stop()


def test_a_replica_that_loses_redis_keeps_serving_the_last_state(fake_openai, make_gateway, tmp_path, own_redis):
    gw = make_gateway(route_config(fake_openai, tmp_path, state={"redis_url": own_redis.url}))
    admin(gw.url, "POST", "/admin/routes/bot/rollout", {"candidate": "cand-a", "percent": 50})
    before = variants_for(gw.url, USERS[:200])
    own_redis.stop()
    deadline = time.monotonic() + 15
    ready = {}
    while time.monotonic() < deadline:
        _, ready = get_json(gw.url + "/readyz")
        if ready.get("degraded", {}).get("rollout"):
            break
        time.sleep(0.1)
    assert "serving with the last rollout state known" in ready["degraded"]["rollout"]
    assert variants_for(gw.url, USERS[:200]) == before, "requests keep their variants while Redis is away"
    status, body = admin(gw.url, "POST", "/admin/routes/bot/rollout", {"candidate": "cand-a", "percent": 10})
    assert status == 503 and body["error"]["type"] == "state_store_unavailable", "no change without the shared store"
    assert "nothing was changed" in body["error"]["message"]
    own_redis.start()  # empty: a new Redis, as after a failover without persistence
    while time.monotonic() < deadline + 15:
        _, ready = get_json(gw.url + "/readyz")
        if not ready.get("degraded"):
            break
        time.sleep(0.1)
    assert not ready.get("degraded"), "the replica says it is healthy again once Redis is back"
