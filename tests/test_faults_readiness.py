"""/readyz against real `llmgate serve` processes: it answers from what the gateway holds, whatever Redis
does (two replicas on one redis-server paused with CLIENT PAUSE), and it says when a reload was refused.
A full disk keeps its own reason (SQLite's "database or disk is full"), not the failed ROLLBACK's after it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from gateway.storage.sqlite import transaction
from tests.fakes.faulty_api import FaultyOpenAI
from tests.support import GatewayProcess, RedisProcess, ServerThread, wait_until


@pytest.fixture
def upstream():
    fake = FaultyOpenAI("base")
    server = ServerThread(fake.app).start()
    fake.url = server.url
    yield fake
    server.stop()


def config(fake: FaultyOpenAI, workdir, redis_url: str | None = None) -> dict:
    state = {"sqlite_path": str(workdir / "state.db")} | ({"redis_url": redis_url} if redis_url else {})
    return {
        "state": state,
        "backends": {"base": {"kind": "openai", "base_url": fake.url + "/v1", "model": "m", "api_key": "none"}},
        "routes": {"bot": {"baseline": "base"}},
        "plugins": {"traffic_log": {"path": str(workdir / "traffic.db")}},
    }


def readyz(url: str) -> tuple[float, int, dict]:
    """(seconds it took, status, body) of one GET /readyz."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=10) as resp:
            status, body = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        status, body = err.code, json.loads(err.read())
    return time.perf_counter() - started, status, body


def test_readyz_answers_at_once_and_says_degraded_while_redis_is_paused(upstream, tmp_path):
    redis_server = RedisProcess(tmp_path).start()
    replicas = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            replicas.append(
                GatewayProcess(config(upstream, tmp_path / name, redis_server.url), tmp_path / name).start()
            )
        for replica in replicas:
            wait_until(lambda: readyz(replica.url)[2]["status"] == "ready", "both replicas ready")
        paused = subprocess.run(
            ["redis-cli", "-p", str(redis_server.port), "CLIENT", "PAUSE", "5000"], capture_output=True, text=True
        )
        assert paused.stdout.strip() == "OK", paused
        until, took, seen = time.monotonic() + 4.0, [], {}
        while time.monotonic() < until:
            for replica in replicas:
                seconds, status, body = readyz(replica.url)
                took.append(seconds)
                assert status == 200, body  # never out of the load balancer for a slow Redis
                if body["status"] == "degraded":
                    seen[replica.url] = body["degraded"]["state_store"]
            time.sleep(0.05)
        took.sort()
        print(
            f"/readyz during CLIENT PAUSE: {len(took)} answers, p50 {took[len(took) // 2] * 1000:.1f} ms, "
            f"p95 {took[int(len(took) * 0.95)] * 1000:.1f} ms, max {took[-1] * 1000:.1f} ms"
        )
        assert took[int(len(took) * 0.95)] < 0.05 and took[-1] < 0.5, took
        assert set(seen) == {r.url for r in replicas}, "both replicas said degraded while redis was paused"
        assert all("redis" in why for why in seen.values()), seen
        for replica in replicas:
            wait_until(lambda: readyz(replica.url)[2]["status"] == "ready", "ready again once the pause is over")
    finally:
        for replica in replicas:
            replica.stop()
        redis_server.stop()


def test_readyz_says_the_last_reload_was_refused_until_one_succeeds(upstream, tmp_path):
    good = config(upstream, tmp_path)
    gw = GatewayProcess(good, tmp_path).start()
    try:
        assert "config_reload" not in readyz(gw.url)[2]["degraded"]
        gw.write_config({**good, "routes": {"bot": {"baseline": "nosuch"}}})
        gw.proc.send_signal(signal.SIGHUP)
        said = wait_until(lambda: readyz(gw.url)[2]["degraded"].get("config_reload"), "the refusal in /readyz")
        assert "refused" in said and "routes.bot.baseline: unknown backend 'nosuch'" in said, said
        _, status, body = readyz(gw.url)
        assert status == 200 and body["status"] == "ready", "still serving the previous config"
        gw.write_config(good)
        gw.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "config_reload" not in readyz(gw.url)[2]["degraded"], "the refusal cleared")
    finally:
        gw.stop()


def test_a_full_database_keeps_its_own_reason(tmp_path):
    """SQLite rolls a transaction back by itself when the disk is full; the helper's ROLLBACK must not then
    replace "database or disk is full" with "cannot rollback - no transaction is active"."""
    conn = sqlite3.connect(tmp_path / "full.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA max_page_count=20")  # a disk that fills at 20 pages
    with pytest.raises(sqlite3.OperationalError) as raised:
        for _ in range(10):
            transaction(conn, lambda c: c.executemany("INSERT INTO t VALUES (?)", [("x" * 2000,)] * 20))
    assert str(raised.value) == "database or disk is full"
    assert not conn.in_transaction


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs (a disk that fills) takes root")
def test_readyz_keeps_saying_the_disk_is_full_while_it_is(upstream, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("no tmpfs mount here")
    gw = None
    try:
        cfg = config(upstream, tmp_path)
        cfg["plugins"]["traffic_log"] = {"path": str(disk / "traffic.db"), "spill_path": str(tmp_path / "spill")}
        gw = GatewayProcess(cfg, tmp_path).start()
        filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # fill what is left
            while os.write(filler, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(filler)
        body = {"model": "bot", "messages": [{"role": "user", "content": "x" * 20_000}]}
        started = time.monotonic()
        reasons = []
        while time.monotonic() - started < 14:  # past the replays' growing pauses (0.1 s doubling to 5 s)
            request = urllib.request.Request(
                gw.url + "/v1/chat/completions",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            urllib.request.urlopen(request, timeout=10).read()
            if reason := readyz(gw.url)[2]["degraded"].get("traffic_log"):
                reasons.append(reason)
            time.sleep(0.5)
        assert reasons, "the full disk was reported"
        assert all("full" in reason for reason in reasons[-5:]), reasons[-5:]
        assert not any("cannot rollback" in reason for reason in reasons), reasons
    finally:
        if gw is not None:
            gw.stop()
        subprocess.run(["umount", "-l", str(disk)])


def test_a_store_away_again_during_a_resync_is_a_warning_not_an_error_traceback(caplog):
    """Redis restarting empty: each replica's registry re-reads it on the resync notice, and a store still
    waking up then raises StoreUnavailable; that is a state to report in a line, not a bug's traceback."""
    from gateway.errors import StoreUnavailable
    from gateway.state.sqlite import SqliteStateStore

    store = SqliteStateStore.__new__(SqliteStateStore)
    store._listeners = []

    async def registry(message):
        raise StoreUnavailable("the state store (redis) is unreachable, nothing was changed: ConnectionError")

    store.subscribe(registry)
    caplog.set_level(logging.WARNING, logger="llmgate.state")
    asyncio.run(store._notify({"kind": "resync"}))
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "unreachable" in record.getMessage()
