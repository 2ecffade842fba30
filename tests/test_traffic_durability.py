"""The traffic log's durability: `acknowledged` holds an answer's last bytes until its record is committed
(fsynced) or spilled, so a gateway killed at any moment has logged every answer a caller saw end;
`batched` (the default) loses at most its last batch.

The BatchWriter's acknowledgements first (one shared, fsynced commit; the spill file when the database
refuses), then the plugin's timeout, then real `llmgate serve` processes SIGKILLed under load.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import time
import urllib.request
from collections import Counter

import aiohttp
import openai

from gateway.storage import sqlite as storage
from gateway.storage.spill import SpillFile
from gateway.storage.sqlite import LOG_BATCH_WAIT_MS, SPILLED, WRITTEN, BatchWriter, SqliteThread
from plugins.traffic_log.plugin import read_records
from tests.conftest import backend_config
from tests.support import GatewayProcess, wait_until

SCHEMA = "CREATE TABLE IF NOT EXISTS t (n INTEGER, text TEXT);"
INSERT = "INSERT INTO t (n, text) VALUES (?, ?)"


async def _writer(tmp_path, **options) -> tuple[SqliteThread, BatchWriter, list[str]]:
    """A running writer into table `t`, and the statements its connection runs."""
    db = SqliteThread(str(tmp_path / "db"), SCHEMA)
    await db.open()
    statements: list[str] = []
    await db.run(lambda conn: conn.set_trace_callback(statements.append))
    writer = BatchWriter(db, INSERT, queue_size=1000, batch_size=500, **options)
    writer.start()
    return db, writer, statements


def test_acknowledged_rows_skip_the_batch_wait_and_share_one_fsynced_commit(tmp_path):
    async def scenario():
        db, writer, statements = await _writer(tmp_path, batch_wait=30.0)
        writer.put_nowait((0, "batched: would wait 30 s for company"))
        started = time.monotonic()
        futures = [writer.put_nowait((n, "acknowledged"), acknowledge=True) for n in range(1, 21)]
        outcomes = await asyncio.wait_for(asyncio.gather(*futures), 5)
        waited = time.monotonic() - started
        commits = statements.count("COMMIT")
        fsynced = statements.count("PRAGMA synchronous=FULL")
        writer.put_nowait((21, "batched again"))
        await writer.flush()
        after = statements.count("PRAGMA synchronous=FULL")
        await writer.close()
        count = await db.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0])
        await db.close()
        return outcomes, len(set(map(id, futures))), waited, commits, fsynced, after, count

    outcomes, distinct, waited, commits, fsynced, after, count = asyncio.run(scenario())
    assert outcomes == [WRITTEN] * 20
    assert distinct == 1 and commits == 1, "twenty waiting rows (and the batched one) share one commit"
    assert waited < 2, f"an acknowledged row does not wait for the batch ({waited:.2f} s)"
    assert fsynced == 1 and after == 1, "the acknowledged batch is fsynced; a batched one keeps synchronous=NORMAL"
    assert count == 22


def test_an_acknowledged_row_the_database_refuses_is_kept_in_the_fsynced_spill_file(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "BUSY_TIMEOUT_MS", 100)
    spill_path = tmp_path / "db.spill"

    async def scenario():
        db, writer, _ = await _writer(tmp_path, batch_wait=0.05, spill=SpillFile(str(spill_path), 2**20))
        blocker = sqlite3.connect(tmp_path / "db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        outcome = await asyncio.wait_for(writer.put_nowait((1, "while locked"), acknowledge=True), 5)
        in_spill = spill_path.read_text().count("while locked")
        blocker.execute("ROLLBACK")
        blocker.close()
        later = await asyncio.wait_for(writer.put_nowait((2, "unlocked"), acknowledge=True), 5)
        await writer.close()
        rows = await db.run(lambda c: c.execute("SELECT n FROM t ORDER BY rowid").fetchall())
        await db.close()
        return outcome, in_spill, later, rows

    outcome, in_spill, later, rows = asyncio.run(scenario())
    assert (outcome, in_spill) == (SPILLED, 1), "durable on disk before the caller goes on"
    assert later in (WRITTEN, SPILLED)
    assert rows == [(1,), (2,)], "replayed once, in order"
    assert not spill_path.exists()


def _post(url: str, path: str, body: dict) -> tuple[int, dict, float]:
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=30) as resp:
        resp.read()
        return resp.status, dict(resp.headers), time.monotonic() - started


def test_an_answer_that_outwaits_its_commit_still_ends_and_its_record_is_written_once(
    make_gateway, fake_openai, tmp_path, monkeypatch
):
    monkeypatch.setattr(storage, "BUSY_TIMEOUT_MS", 1500)  # the locked database is given up on after 1.5 s
    path = tmp_path / "traffic.db"
    gw = make_gateway(
        {
            "backends": {"up": backend_config("openai", fake_openai)},
            "routes": {"bot": {"baseline": "up"}},
            "plugins": {"traffic_log": {"path": str(path), "durability": "acknowledged", "ack_timeout_ms": 200}},
        }
    )
    body = {"model": "bot", "messages": [{"role": "user", "content": "hello"}]}
    status, headers, _ = _post(gw.url, "/v1/chat/completions", body)
    assert status == 200 and [r["request_id"] for r in read_records(str(path))] == [headers["x-request-id"]]
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        status, headers, took = _post(gw.url, "/v1/chat/completions", body)
        assert status == 200 and 0.2 <= took < 1.4, f"the answer ended after the 200 ms wait ({took:.2f} s)"
        with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        assert 'llmgate_traffic_log_unacknowledged_total{reason="timeout"} 1' in metrics
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    late = headers["x-request-id"]
    wait_until(lambda: late in {r["request_id"] for r in read_records(str(path))}, "the late record", timeout=20)
    time.sleep(0.3)  # after_response ran long ago: a second copy would be in by now
    assert Counter(r["request_id"] for r in read_records(str(path)))[late] == 1


# --- real processes killed under load -------------------------------------------------------------

RATE = 100  # requests a second, each its own concurrent caller
SLEEP = "[sleep 0.03]"  # the fake upstream's pause: a few requests are always in flight
BATCHED_BOUND = LOG_BATCH_WAIT_MS / 1000 + 0.5  # a lost batched record was answered this close to the kill


def _durability_config(fake, tmp_path) -> dict:
    """`acknowledged` gateway-wide, `plain` batched by its route's option."""
    return {
        "server": {"shutdown_timeout": 5},
        "state": {"sqlite_path": str(tmp_path / "state.db")},
        "backends": {"up": backend_config("openai", fake)},
        "routes": {"audit": {"baseline": "up"}, "plain": {"baseline": "up"}},
        "plugins": {
            "traffic_log": {
                "path": str(tmp_path / "traffic.db"),
                "durability": "acknowledged",
                "routes": {"plain": {"durability": "batched"}},
            }
        },
    }


async def _chat_sdk(client: openai.AsyncOpenAI, route: str, n: int) -> tuple[str | None, bool]:
    """A chat completion through the official SDK: (x-request-id, whether the whole answer came)."""
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=route, messages=[{"role": "user", "content": f"question {n} {SLEEP}"}]
        )
        return raw.headers.get("x-request-id"), bool(raw.parse().choices)
    except openai.APIError:
        return None, False


async def _stream(session: aiohttp.ClientSession, url: str, route: str, n: int, messages: bool) -> tuple:
    """A stream read raw: complete only once its last event ([DONE], message_stop) arrived."""
    path, body, end = "/v1/chat/completions", {"stream": True}, b"data: [DONE]"
    if messages:
        path, body, end = "/v1/messages", {"stream": True, "max_tokens": 64}, b"event: message_stop"
    body.update(model=route, messages=[{"role": "user", "content": f"question {n} {SLEEP}"}])
    try:
        async with session.post(url + path, json=body) as resp:
            data = await resp.read()
            return resp.headers.get("x-request-id"), resp.status == 200 and end in data
    except (aiohttp.ClientError, OSError):
        return None, False


async def _load_then_kill(gw: GatewayProcess, after: float) -> tuple[list[tuple], float]:
    """Send RATE requests a second (chat via the SDK, chat and messages streams raw) until SIGKILL at
    `after` seconds; (route, request id, complete, when it completed) of each, and when the kill came."""
    done: list[tuple] = []
    kinds = [("audit", "sdk"), ("audit", "stream"), ("audit", "messages"), ("plain", "sdk"), ("plain", "stream")]

    async def one(n: int, route: str, kind: str, session, client) -> None:
        if kind == "sdk":
            rid, complete = await _chat_sdk(client, route, n)
        else:
            rid, complete = await _stream(session, gw.url, route, n, messages=kind == "messages")
        done.append((route, rid, complete, time.monotonic()))

    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="app-key", max_retries=0, timeout=20)
        tasks, start, n = [], time.monotonic(), 0
        kill_at = start + after
        while (now := time.monotonic()) < kill_at:
            route, kind = kinds[n % len(kinds)]
            tasks.append(asyncio.create_task(one(n, route, kind, session, client)))
            n += 1
            await asyncio.sleep(max(0.0, start + n / RATE - now))
        gw.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await asyncio.gather(*tasks)
        await client.close()
    return done, killed


def test_three_sigkills_under_load_lose_no_acknowledged_answer_and_batched_loses_at_most_its_last_batch(
    fake_openai, tmp_path
):
    path = tmp_path / "traffic.db"
    config = _durability_config(fake_openai, tmp_path)
    chance = random.Random()
    answered: dict[str, list[str]] = {"audit": [], "plain": []}
    late_losses = []
    for round_ in range(3):
        gw = GatewayProcess(config, tmp_path).start()
        after = chance.uniform(1.0, 2.5)
        try:
            done, killed = asyncio.run(_load_then_kill(gw, after))
            assert gw.proc.wait(10) == -signal.SIGKILL
        finally:
            gw.stop()
        logged = Counter(r["request_id"] for r in read_records(str(path)))
        complete = [(route, rid, at) for route, rid, ok, at in done if ok]
        assert len(complete) >= 50, f"round {round_}: only {len(complete)} answers before the kill at {after:.2f} s"
        for route, rid, _ in complete:
            answered[route].append(rid)
        missing = [rid for rid in answered["audit"] if rid not in logged]
        assert not missing, f"round {round_} (kill at {after:.2f} s): acknowledged answers not in the log: {missing}"
        for route, rid, at in complete:
            if route == "plain" and rid not in logged:
                late_losses.append(killed - at)
        assert all(lost <= BATCHED_BOUND for lost in late_losses), (
            f"a batched record lost was answered {max(late_losses):.3f} s before the kill"
        )
        assert max(logged.values()) == 1, "each record once, through every restart"
    assert len(answered["audit"]) >= 90
