"""`server.workers: 2` on the embedded defaults (no Redis), as a real `llmgate serve`: both workers
serve one port, a rollout change made through one reaches the other within a second, the traffic
log (one file, written by both) loses nothing, /metrics adds both workers up whichever answers,
SIGHUP reloads every worker in place and SIGTERM drains and stops them all."""

import re
import signal
import sqlite3
import time
import urllib.request

import pytest
import yaml

from gateway.node import WorkerSnapshots
from tests.support import GatewayProcess
from tests.test_rollout import USERS, admin, route_config, variants_for

pytestmark = pytest.mark.slow


def metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:  # a new connection: either worker
        return resp.read().decode()


def test_two_workers_share_rollout_log_metrics_and_signals(fake_openai, tmp_path):
    config = route_config(fake_openai, tmp_path, candidates={"cand-a": 10})
    config["server"]["workers"] = 2
    config["plugins"] = {
        "traffic_log": {"path": str(tmp_path / "traffic.db")},
        "rollout": {"resync_interval": 3600},  # only the change notice can carry a change
    }
    gw = GatewayProcess(config, tmp_path).start()
    try:
        # /healthz answered by one worker: wait until the other serves too (each writes its figures once it
        # serves), or every connection of the first burst may go to the first
        folders = list(tmp_path.glob("workers-*"))
        assert len(folders) == 1
        deadline = time.monotonic() + 15
        while len(list(folders[0].glob("*.prom"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        users = USERS[:400]
        before = variants_for(gw.url, users)
        assert 20 <= list(before.values()).count("cand-a") <= 70

        # both workers answered, neither a token share: 32 keep-alive connections opened at once spread
        # over the workers' own sockets (on one shared socket, one worker took all 32)
        time.sleep(1.5)  # each worker writes its figures every few tenths of a second
        counts = {p.stem: metric(p.read_text(), "llmgate_requests_total") for p in folders[0].glob("*.prom")}
        assert len(counts) == 2 and sum(counts.values()) == len(users), counts
        assert all(n >= 0.15 * len(users) for n in counts.values()), counts
        for _ in range(6):  # whichever worker answers the scrape, it reports both
            assert metric(scrape(gw.url), "llmgate_requests_total") == len(users)

        # a change through one worker reaches the other within a second
        admin(gw.url, "POST", "/admin/routes/bot/rollout", {"candidate": "cand-a", "percent": 50})
        time.sleep(1.0)
        after = variants_for(gw.url, users)
        assert 150 <= list(after.values()).count("cand-a") <= 250
        assert all(after[u] == "cand-a" for u, v in before.items() if v == "cand-a"), (
            "a raise only moves baseline users"
        )

        # the traffic log, one file written by both workers, has every exchange
        def logged():
            with sqlite3.connect(tmp_path / "traffic.db") as conn:
                return conn.execute("SELECT count(*), count(DISTINCT request_id) FROM traffic").fetchone()

        deadline = time.monotonic() + 10
        while logged()[0] < 2 * len(users) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert logged() == (2 * len(users), 2 * len(users))

        # SIGHUP: every worker reloads in place (a new route is served by both)
        config["routes"]["bot2"] = {"baseline": "base"}
        gw.config_path.write_text(yaml.safe_dump(config))
        gw.proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        assert set(variants_for(gw.url, users[:64]).values()) <= {"base", "cand-a"}
        assert gw.log().count("config reloaded") == 2
        for _ in range(8):
            with urllib.request.urlopen(gw.url + "/v1/models", timeout=10) as resp:
                assert b'"bot2"' in resp.read()
    finally:
        code = gw.stop()  # SIGTERM to the arbiter: each worker drains, then all stop
    log = gw.log()
    assert code == 0
    assert log.count("stopping: draining in-flight requests") == 2 and log.count("llmgate: stopped") == 2
    assert log.count("llmgate serving on") == 1  # the banner once, not once a worker
    assert not list(tmp_path.glob("workers-*")), "the figures' folder goes with the arbiter"


def test_the_merge_sums_counters_and_labels_gauges_by_worker(tmp_path):
    one = WorkerSnapshots(tmp_path, pid=1)  # pid 1 lives; a dead pid's gauges are left out
    one.write(
        b'# HELP x_total X.\n# TYPE x_total counter\nx_total{route="a"} 2.0\n'
        b"# HELP q Q.\n# TYPE q gauge\nq 5.0\n"
        b'# HELP h H.\n# TYPE h histogram\nh_bucket{le="1.0"} 1.0\nh_bucket{le="+Inf"} 2.0\nh_count 2.0\nh_sum 1.5\n'
    )
    dead = WorkerSnapshots(tmp_path, pid=2**22 + 12345)
    dead.write(b'# HELP x_total X.\n# TYPE x_total counter\nx_total{route="a"} 3.0\n# TYPE q gauge\nq 7.0\n')
    mine = WorkerSnapshots(tmp_path)
    merged = mine.merged(
        b'# HELP x_total X.\n# TYPE x_total counter\nx_total{route="a"} 4.0\n# TYPE q gauge\nq 1.0\n'
        b'# TYPE h histogram\nh_bucket{le="1.0"} 3.0\nh_bucket{le="+Inf"} 3.0\nh_count 3.0\nh_sum 0.5\n'
    ).decode()
    assert 'x_total{route="a"} 9' in merged  # a replaced worker's counts stay in the sum
    assert 'q{worker="1"} 5' in merged and f'q{{worker="{mine.pid}"}} 1' in merged and "q 7" not in merged
    assert f'worker="{dead.pid}"' not in merged
    lines = [line for line in merged.splitlines() if line.startswith("h_")]
    assert lines == ['h_bucket{le="1.0"} 4', 'h_bucket{le="+Inf"} 5', "h_count 5", "h_sum 2"]


@pytest.mark.parametrize("limit", ["requests_per_minute", "daily_usd"])
def test_quotas_and_budgets_hold_in_total_across_workers_without_redis(fake_openai, tmp_path, limit):
    from concurrent.futures import ThreadPoolExecutor

    import openai

    from plugins.api_keys.plugin import hash_key
    from tests.conftest import backend_config

    key = "sk-lg-workers-team-key-0123456789abcdef"
    config = {
        "server": {"workers": 2},
        "state": {"sqlite_path": str(tmp_path / "state.db")},
        "backends": {"up": backend_config("openai", fake_openai)},
        "routes": {"bot": {"baseline": "up"}, "other": {"baseline": "up"}},
        "prices": {"gpt-test": {"input": 100.0, "output": 100.0}},
        "plugins": {
            "api_keys": {"enabled": True, "teams": {"a": {"keys": [hash_key(key)], "requests_per_minute": 10}}},
            "quotas": {"enabled": limit == "requests_per_minute"},
            "budgets": {"enabled": limit == "daily_usd", "teams": {"a": {"daily_usd": 0.01}}},
            "traffic_log": {"path": str(tmp_path / "traffic.db"), "batch_wait_ms": 0},
        },
    }
    gw = GatewayProcess(config, tmp_path).start()

    def ask(i):
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)  # a connection each
        try:
            client.chat.completions.create(
                model="bot", max_tokens=8, messages=[{"role": "user", "content": f"question {i}"}]
            )
            return 200
        except openai.RateLimitError as err:
            return err.body["code"]

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(ask, range(60)))
    finally:
        gw.stop()
    admitted = results.count(200)
    if limit == "requests_per_minute":  # each worker admits 5: never 2 x 10 in the minute
        assert 5 <= admitted <= 10 and "requests_per_minute_exceeded" in results, results
    else:  # one counter in the state file: the day's $0.01 in total (about 14 answers), not per worker
        with sqlite3.connect(tmp_path / "traffic.db") as conn:
            spent = conn.execute("SELECT coalesce(sum(cost_usd), 0) FROM traffic WHERE status = 200").fetchone()[0]
        assert 0.005 <= spent <= 0.01 and "budget_exceeded" in results, (spent, results)
