"""Fault injection against real servers: upstreams that hang, reset, rate-limit, fail or cut a stream;
circuit breakers; a locked traffic log; SIGTERM under faulty load; Redis killed and restarted.

Each test asserts what the caller saw through the official SDK (or the raw SSE), what the gateway
says about itself (/admin/status, /readyz, its log) and what it recorded (the traffic log).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sqlite3
import urllib.error
import urllib.request

import aiohttp
import openai
import pytest

from plugins.traffic_log.plugin import read_records
from tests.fakes.faulty_api import FaultyOpenAI
from tests.support import GatewayProcess, ServerThread, wait_until

ADMIN_TOKEN = "admin-token-for-fault-tests"
FAST_TIMEOUT = {"connect": 1, "first_byte": 1, "total": 3}


@pytest.fixture
def upstreams():
    """Two programmable upstreams: `primary` (faults are set on it) and `spare` (the fallback)."""
    fakes = {name: FaultyOpenAI(name) for name in ("primary", "spare")}
    servers = [ServerThread(fake.app).start() for fake in fakes.values()]
    for fake, server in zip(fakes.values(), servers):
        fake.url = server.url
    yield fakes
    for server in servers:
        server.stop()


def backend(fake: FaultyOpenAI, **extra) -> dict:
    return {
        "kind": "openai",
        "base_url": fake.url + "/v1",
        "model": f"m-{fake.name}",
        "api_key": "none",
        "timeout": FAST_TIMEOUT,
    } | extra


def fault_config(upstreams, tmp_path, *, fallback: bool = True, breaker: dict | None = None, retries: int = 0) -> dict:
    breaker = breaker or {"failures": 3, "open_seconds": 1}
    return {
        "server": {"admin_token": ADMIN_TOKEN},
        "backends": {
            "primary": backend(upstreams["primary"], breaker=breaker),
            "spare": backend(upstreams["spare"], breaker=breaker),
        },
        "routes": {"bot": {"baseline": "primary", "fallback": ["spare"] if fallback else [], "retries": retries}},
        "plugins": {"traffic_log": {"path": str(tmp_path / "traffic.db")}},
    }


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="app-key", max_retries=0, timeout=30)


def ask(url: str, text: str = "hello", **kwargs):
    return client(url).chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": text}], **kwargs
    )


def get_json(url: str, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def breaker_of(url: str, backend_name: str = "primary") -> dict:
    status, body = get_json(url + "/admin/status", ADMIN_TOKEN)
    assert status == 200, body
    return body["breakers"][backend_name]


# --- one faulty upstream: what the caller gets ---------------------------------------------------

FAULTS = {  # mode -> (status the caller gets, error type, SDK exception)
    "hang": (504, "timeout_error", openai.InternalServerError),
    "slow": (504, "timeout_error", openai.InternalServerError),
    "reset": (502, "upstream_error", openai.InternalServerError),
    "503": (502, "upstream_error", openai.InternalServerError),
    "429": (429, "rate_limit_error", openai.RateLimitError),
}


@pytest.mark.parametrize("mode", list(FAULTS))
def test_a_faulty_upstream_gives_the_caller_a_clear_error(mode, upstreams, make_gateway, tmp_path):
    primary = upstreams["primary"]
    primary.mode, primary.delay = mode, 2.5  # "slow": past the 1 s first-byte timeout
    gw = make_gateway(fault_config(upstreams, tmp_path, fallback=False))
    status, kind, exception = FAULTS[mode]
    with pytest.raises(exception) as raised:
        ask(gw.url)
    assert raised.value.status_code == status
    assert raised.value.body["type"] == kind, raised.value.body
    assert primary.received == 1
    if mode == "429":
        assert raised.value.response.headers["retry-after"] == "1", "the provider's Retry-After is passed on"
    records = wait_until(lambda: list(read_records(str(tmp_path / "traffic.db"))), "the logged request")
    assert [(r["status"], r["error_type"]) for r in records] == [(status, kind)]


@pytest.mark.parametrize("mode", list(FAULTS))
def test_a_faulty_upstream_falls_back_along_the_chain(mode, upstreams, make_gateway, tmp_path):
    upstreams["primary"].mode, upstreams["primary"].delay = mode, 2.5
    gw = make_gateway(fault_config(upstreams, tmp_path))
    answer = ask(gw.url)
    assert answer.headers["x-llmgate-variant"] == "spare"
    assert answer.parse().choices[0].message.content == "ok from spare"
    assert upstreams["primary"].received == 1 and upstreams["spare"].received == 1


def test_a_slow_first_byte_within_the_timeout_is_answered(upstreams, make_gateway, tmp_path):
    upstreams["primary"].mode, upstreams["primary"].delay = "slow", 0.3
    gw = make_gateway(fault_config(upstreams, tmp_path))
    answer = ask(gw.url)
    assert answer.headers["x-llmgate-variant"] == "primary"


async def _sse_events(url: str) -> list[str]:
    """Every `data:` payload of one streamed answer, read raw: the SDK would hide how the stream ended."""
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url + "/v1/chat/completions",
            json={"model": "bot", "stream": True, "messages": [{"role": "user", "content": "stream please"}]},
        ) as resp:
            assert resp.status == 200
            body = (await resp.read()).decode()
    return [line[6:] for line in body.split("\n") if line.startswith("data: ")]


def test_a_stream_cut_midway_ends_with_an_error_event_not_done(upstreams, make_gateway, tmp_path):
    primary = upstreams["primary"]
    primary.mode, primary.cut_after = "cut", 2
    gw = make_gateway(fault_config(upstreams, tmp_path))
    events = asyncio.run(_sse_events(gw.url))
    assert "[DONE]" not in events, "a broken stream must not look finished"
    chunks = [json.loads(e) for e in events]
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:-1]] == ["part0 ", "part1 "]
    assert chunks[-1]["error"]["type"] == "upstream_error"
    assert "broke the connection" in chunks[-1]["error"]["message"]
    assert upstreams["spare"].received == 0, "a stream falls back only before its first chunk"

    stream = client(gw.url).chat.completions.create(
        model="bot", stream=True, messages=[{"role": "user", "content": "again"}]
    )
    with pytest.raises(openai.APIError) as raised:  # the SDK raises on the error event
        for _ in stream:
            pass
    assert "broke the connection" in raised.value.message

    records = wait_until(
        lambda: len(r := list(read_records(str(tmp_path / "traffic.db")))) == 2 and r, "both streams logged"
    )
    assert {(r["status"], r["error_type"], r["response"]["choices"][0]["message"]["content"]) for r in records} == {
        (502, "upstream_error", "part0 part1 ")
    }, "the log keeps what the caller got, and the failure"


def test_a_stream_that_fails_before_its_first_chunk_falls_back(upstreams, make_gateway, tmp_path):
    upstreams["primary"].mode = "hang"
    gw = make_gateway(fault_config(upstreams, tmp_path))
    response = ask(gw.url, stream=True)
    assert response.headers["x-llmgate-variant"] == "spare"
    text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text == "part0 part1 part2 part3 "


# --- the circuit breaker ------------------------------------------------------------------------


def test_the_breaker_opens_skips_the_backend_then_probes_and_closes(upstreams, make_gateway, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="llmgate.breaker")
    primary, spare = upstreams["primary"], upstreams["spare"]
    primary.mode = "503"
    gw = make_gateway(fault_config(upstreams, tmp_path, breaker={"failures": 3, "open_seconds": 1}))
    for _ in range(3):
        assert ask(gw.url).headers["x-llmgate-variant"] == "spare"
    assert primary.received == 3
    opened = breaker_of(gw.url)
    assert opened["state"] in ("open", "half_open") and opened["times_opened"] == 1
    assert "503" in opened["last_failure"]
    assert any("breaker_changed backend=primary from=closed to=open" in r.getMessage() for r in caplog.records)

    # Open: the next request goes straight to the fallback, the primary sees nothing.
    if breaker_of(gw.url)["state"] == "open":
        assert ask(gw.url).headers["x-llmgate-variant"] == "spare"
        assert primary.received == 3
        status, ready = get_json(gw.url + "/readyz")
        assert status == 200 and "backend 'primary' circuit" in ready["degraded"]["breakers"]

    # Half-open, the probe fails: open again.
    wait_until(lambda: breaker_of(gw.url)["state"] == "half_open", "the breaker to go half-open")
    assert ask(gw.url).headers["x-llmgate-variant"] == "spare"
    assert primary.received == 4, "exactly one probe reached the primary"
    assert breaker_of(gw.url)["times_opened"] == 2

    # The primary recovers: the next probe succeeds and closes the breaker.
    primary.mode = "ok"
    wait_until(lambda: breaker_of(gw.url)["state"] == "half_open", "the breaker to go half-open again")
    assert ask(gw.url).headers["x-llmgate-variant"] == "primary"
    closed = breaker_of(gw.url)
    assert closed["state"] == "closed" and closed["consecutive_failures"] == 0
    assert "breakers" not in get_json(gw.url + "/readyz")[1]["degraded"]
    moves = [r.getMessage().split(" reason=")[0] for r in caplog.records if "breaker_changed" in r.getMessage()]
    assert moves == [
        "breaker_changed backend=primary from=closed to=open",
        "breaker_changed backend=primary from=open to=half_open",
        "breaker_changed backend=primary from=half_open to=open",
        "breaker_changed backend=primary from=open to=half_open",
        "breaker_changed backend=primary from=half_open to=closed",
    ]
    assert spare.received == 5


def test_every_breaker_open_gives_503_circuit_open_with_retry_after(upstreams, make_gateway, tmp_path):
    upstreams["primary"].mode = "reset"
    gw = make_gateway(fault_config(upstreams, tmp_path, fallback=False, breaker={"failures": 2, "open_seconds": 30}))
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as raised:
            ask(gw.url)
        assert raised.value.status_code == 502
    with pytest.raises(openai.InternalServerError) as raised:
        ask(gw.url)
    assert raised.value.status_code == 503
    assert raised.value.body["code"] == "circuit_open" and raised.value.body["type"] == "server_error"
    assert 1 <= int(raised.value.response.headers["retry-after"]) <= 30
    assert upstreams["primary"].received == 2, "an open breaker keeps requests off the failing upstream"
    records = wait_until(
        lambda: len(r := list(read_records(str(tmp_path / "traffic.db")))) == 3 and r, "three logged requests"
    )
    assert records[-1]["status"] == 503 and records[-1]["attempts"] == [
        {"backend": "primary", "status": 503, "latency_ms": 0.0, "error": "circuit open"}
    ]


def test_a_callers_own_mistake_never_opens_the_breaker(upstreams, make_gateway, tmp_path):
    gw = make_gateway(fault_config(upstreams, tmp_path, breaker={"failures": 1, "open_seconds": 30}))
    for _ in range(3):
        with pytest.raises(openai.BadRequestError):  # rejected by the gateway's validation, never upstream
            client(gw.url).chat.completions.create(model="bot", messages=[{"role": "nobody", "content": "x"}])
    upstreams["primary"].mode = "ok"
    assert ask(gw.url).headers["x-llmgate-variant"] == "primary"
    assert breaker_of(gw.url)["state"] == "closed"


async def _concurrent_asks(url: str, n: int) -> list[str]:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=30) as async_client:
        answers = await asyncio.gather(
            *[
                async_client.chat.completions.with_raw_response.create(
                    model="bot", messages=[{"role": "user", "content": f"probe {i}"}]
                )
                for i in range(n)
            ]
        )
    return [a.headers["x-llmgate-variant"] for a in answers]


def test_half_open_lets_one_probe_through_at_a_time(upstreams, make_gateway, tmp_path):
    primary = upstreams["primary"]
    primary.mode = "503"
    gw = make_gateway(fault_config(upstreams, tmp_path, breaker={"failures": 1, "open_seconds": 1}))
    assert ask(gw.url).headers["x-llmgate-variant"] == "spare"
    primary.mode, primary.delay = "slow", 0.5  # the probe takes a while: the others arrive while it runs
    wait_until(lambda: breaker_of(gw.url)["state"] == "half_open", "the breaker to go half-open")
    variants = asyncio.run(_concurrent_asks(gw.url, 5))
    assert primary.received == 2, "one probe, not five"
    assert sorted(variants) == ["primary", "spare", "spare", "spare", "spare"]
    assert breaker_of(gw.url)["state"] == "closed"


# --- the traffic log when its database refuses writes ------------------------------------------


def test_a_locked_traffic_log_spills_its_records_to_disk_and_writes_them_later(upstreams, make_gateway, tmp_path):
    path = str(tmp_path / "traffic.db")
    cfg = fault_config(upstreams, tmp_path)
    cfg["plugins"]["traffic_log"]["queue_size"] = 8  # a queue this small would shed at once if it stopped draining
    gw = make_gateway(cfg)
    ask(gw.url, "before the lock")
    wait_until(lambda: len(list(read_records(path))) == 1, "the first record")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holding the file: every write is refused
    try:
        ids = [ask(gw.url, f"while locked {i}").headers["x-request-id"] for i in range(4)]
        wait_until(
            lambda: "4 records spilled" in (get_json(gw.url + "/readyz")[1]["degraded"].get("traffic_log") or ""),
            "the first refused records on disk",
        )
        ids += [ask(gw.url, f"while locked {i}").headers["x-request-id"] for i in range(4, 24)]
        problem = wait_until(
            lambda: (
                ("24 records spilled" in (p := get_json(gw.url + "/readyz")[1]["degraded"].get("traffic_log") or ""))
                and p
            ),
            "every refused record on disk, reported in /readyz",
        )
        assert "locked" in problem and "dropped" not in problem, problem
        assert (tmp_path / "traffic.db.spill").is_file()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    records = wait_until(lambda: len(r := list(read_records(path))) == 25 and r, "the spilled records written")
    assert [r["request_id"] for r in records[1:]] == ids, "kept in order, none lost, none twice"
    wait_until(lambda: "traffic_log" not in get_json(gw.url + "/readyz")[1]["degraded"], "/readyz clearing")
    assert not (tmp_path / "traffic.db.spill").exists()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_records_spilled_while_the_log_is_locked_survive_a_stop_and_are_written_by_the_next_start(
    upstreams, tmp_path, how
):
    path = tmp_path / "traffic.db"
    cfg = fault_config(upstreams, tmp_path)
    cfg["server"]["shutdown_timeout"] = 5
    gw = GatewayProcess(cfg, tmp_path).start()
    try:
        first = ask(gw.url, "before the lock").headers["x-request-id"]
        wait_until(lambda: len(list(read_records(str(path)))) == 1, "the first record")
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            ids = [ask(gw.url, f"while locked {i}").headers["x-request-id"] for i in range(5)]
            wait_until(
                lambda: "5 records spilled" in (get_json(gw.url + "/readyz")[1]["degraded"].get("traffic_log") or ""),
                "the records on disk",
            )
            gw.stop(getattr(signal, how))  # SIGTERM: the last replay is refused too; SIGKILL: nothing runs at all
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert [r["request_id"] for r in read_records(str(path))] == [first]
        assert (tmp_path / "traffic.db.spill").is_file()
        gw = GatewayProcess(cfg, tmp_path).start()
        records = wait_until(lambda: len(r := list(read_records(str(path)))) == 6 and r, "the replay at start")
        assert [r["request_id"] for r in records] == [first, *ids], "each record once, in order"
        assert not (tmp_path / "traffic.db.spill").exists()
    finally:
        gw.stop()


# --- real processes: SIGTERM under faulty load, Redis killed and restarted -------------------------


async def _post(session: aiohttp.ClientSession, url: str, route: str, stream: bool, user: str = "u") -> tuple:
    """(request id, status, variant that answered, how the body ended, backends tried) of one request;
    None when no answer came at all."""
    try:
        async with session.post(
            url + "/v1/chat/completions",
            json={"model": route, "stream": stream, "user": user, "messages": [{"role": "user", "content": "hi"}]},
        ) as resp:
            body = (await resp.read()).decode()
            ending = body.rstrip().rsplit("\n", 1)[-1] if stream else None
            return (
                resp.headers.get("x-request-id"),
                resp.status,
                resp.headers.get("x-llmgate-variant"),
                ending,
                resp.headers.get("x-llmgate-tried"),
            )
    except aiohttp.ClientError:
        return None


@pytest.fixture
def many_upstreams():
    modes = {"good": "slow", "hanger": "hang", "limiter": "429", "broken": "503", "resetter": "reset", "cutter": "cut"}
    fakes = {}
    servers = []
    for name, mode in modes.items():
        fake = FaultyOpenAI(name)
        fake.mode, fake.delay, fake.cut_after = mode, 0.5, 1
        servers.append(ServerThread(fake.app).start())
        fake.url = servers[-1].url
        fakes[name] = fake
    yield fakes
    for server in servers:
        server.stop()


def test_sigterm_under_faulty_load_loses_no_logged_request(many_upstreams, tmp_path):
    from tests.support import GatewayProcess

    traffic = tmp_path / "traffic.db"
    config = {
        "server": {"shutdown_timeout": 20},
        "state": {"sqlite_path": str(tmp_path / "state.db")},
        # Breakers off and room to answer on a busy machine: this test is about the drain; only the hang times out.
        "backends": {
            name: backend(
                fake,
                breaker={"enabled": False},
                timeout=FAST_TIMEOUT if name == "hanger" else {"connect": 5, "first_byte": 10, "total": 20},
            )
            for name, fake in many_upstreams.items()
        },
        "routes": {
            "r_hang": {"baseline": "hanger", "fallback": ["good"], "retries": 0},
            "r_429": {"baseline": "limiter", "retries": 0},
            "r_503": {"baseline": "broken", "fallback": ["good"], "retries": 0},
            "r_reset": {"baseline": "resetter", "retries": 0},
            "r_cut": {"baseline": "cutter", "retries": 0},
            "r_ok": {"baseline": "good"},
        },
        "plugins": {"traffic_log": {"path": str(traffic)}},
    }
    gw = GatewayProcess(config, tmp_path).start()
    plan = [(route, stream) for route in config["routes"] for stream in (False, True)] * 3

    async def load():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            tasks = [asyncio.create_task(_post(session, gw.url, route, stream)) for route, stream in plan]
            # SIGTERM once slow answers are in flight upstream (the good one takes 0.5 s to start)
            await asyncio.to_thread(wait_until, lambda: many_upstreams["good"].received >= 10, "load in flight")
            gw.proc.send_signal(15)
            return await asyncio.gather(*tasks)

    try:
        results = asyncio.run(load())
        assert gw.proc.wait(30) == 0
    finally:
        gw.stop()
    answered = {r[0]: r for r in results if r is not None}
    assert len(answered) == len(plan), "requests in flight at SIGTERM are answered, not dropped"
    logged = {r["request_id"]: r for r in read_records(str(traffic))}
    assert set(logged) == set(answered), "every answered request is in the traffic log, exactly once"
    for request_id, (_, status, variant, ending, tried) in answered.items():
        record = logged[request_id]
        if ending is None or status != 200:
            assert record["status"] == status
        route = record["route"]
        # (status, the variant that answered: none for an error, the backends tried in order)
        expected = {
            "r_hang": (200, "good", "hanger,good"),
            "r_429": (429, None, "limiter"),
            "r_503": (200, "good", "broken,good"),
            "r_reset": (502, None, "resetter"),
            "r_cut": (200, "cutter", "cutter"),  # a stream's status went out before the cut
            "r_ok": (200, "good", "good"),
        }[route]
        assert (status, variant, tried) == expected, (route, status, variant, tried)
        if route == "r_cut" and record["stream"]:
            assert ending.startswith('data: {"error"') and record["status"] == 502, "a cut stream ends with an error"
        elif record["stream"] and status == 200:
            assert ending == "data: [DONE]"


def _replica_config(upstreams, workdir, redis_url: str) -> dict:
    return {
        "server": {"admin_token": ADMIN_TOKEN, "shutdown_timeout": 10},
        "state": {"redis_url": redis_url, "sqlite_path": str(workdir / "state.db")},
        "backends": {"base": backend(upstreams["primary"]), "cand": backend(upstreams["spare"])},
        "routes": {"bot": {"baseline": "base", "candidates": {"cand": 20}}},
        "plugins": {"traffic_log": {"path": str(workdir / "traffic.db")}},
    }


def _admin_post(url: str, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _percents(url: str) -> dict:
    return get_json(url + "/admin/status", ADMIN_TOKEN)[1]["rollout"]["routes"]["bot"]["percents"]


USERS = [f"user-{i}" for i in range(40)]


def _variants(url: str) -> dict[str, str]:
    async def run():
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*[_post(session, url, "bot", False, user) for user in USERS])

    return {user: result[2] for user, result in zip(USERS, asyncio.run(run()))}


def _shared_again(url: str) -> bool:
    status, ready = get_json(url + "/readyz")
    return status == 200 and ready["status"] == "ready" and not {"rollout", "state_store"} & set(ready["degraded"])


class Load:
    """Requests sent without pause to the replicas from a thread, each outcome kept."""

    def __init__(self, urls: list[str]):
        import threading

        self.urls, self.results, self._stop = urls, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        async def loop():
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                i = 0
                while not self._stop.is_set():
                    url = self.urls[i % len(self.urls)]
                    self.results.append((url, await _post(session, url, "bot", i % 3 == 0, USERS[i % len(USERS)])))
                    i += 1

        asyncio.run(loop())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(60)


def test_killing_redis_under_load_keeps_serving_then_shares_again(upstreams, tmp_path):
    from tests.support import GatewayProcess, RedisProcess

    redis_server = RedisProcess(tmp_path).start()
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = GatewayProcess(_replica_config(upstreams, tmp_path / "a", redis_server.url), tmp_path / "a").start()
    b = GatewayProcess(_replica_config(upstreams, tmp_path / "b", redis_server.url), tmp_path / "b").start()
    try:
        assert _admin_post(a.url, "/admin/routes/bot/rollout", {"candidate": "cand", "percent": 40})[0] == 200
        wait_until(lambda: _percents(b.url) == {"cand": 40.0}, "the change reaching replica b")
        before = _variants(a.url)
        assert _variants(b.url) == before and set(before.values()) == {"base", "cand"}

        with Load([a.url, b.url]) as load:
            wait_until(lambda: len(load.results) >= 20, "load running")
            redis_server.stop()
            for replica in (a, b):
                ready = wait_until(
                    lambda: (r := get_json(replica.url + "/readyz")) and "state_store" in r[1]["degraded"] and r,
                    "/readyz reporting the outage",
                )
                assert ready[0] == 200 and ready[1]["status"] == "degraded", ready
                assert "last rollout state known" in ready[1]["degraded"]["rollout"]
            during = len(load.results)
            wait_until(lambda: len(load.results) >= during + 30, "requests answered during the outage")
            assert _variants(a.url) == before and _variants(b.url) == before, "percents stay as they were"
            status, refused = _admin_post(a.url, "/admin/routes/bot/rollout", {"candidate": "cand", "percent": 5})
            assert status == 503 and refused["error"]["type"] == "state_store_unavailable"

            redis_server.start()  # same port, empty: as after a restart without persistence
            for replica in (a, b):
                wait_until(lambda: _shared_again(replica.url), "/readyz clearing once redis is back", timeout=45)
            after = len(load.results)
            wait_until(lambda: len(load.results) >= after + 20, "requests answered after the outage")
        assert _percents(a.url) == _percents(b.url) == {"cand": 40.0}, "the replicas gave the empty redis their state"
        assert _admin_post(a.url, "/admin/routes/bot/rollout", {"candidate": "cand", "percent": 10})[0] == 200
        wait_until(lambda: _percents(b.url) == {"cand": 10.0}, "a change on a reaching b again")

        outcomes = [r for _, r in load.results]
        assert all(r is not None for r in outcomes), "no request went unanswered"
        assert {r[1] for r in outcomes} == {200}, "the outage caused no error for callers"
    finally:
        codes = [a.stop(), b.stop()]
        redis_server.stop()
    assert codes == [0, 0]
    for replica, workdir in ((a, tmp_path / "a"), (b, tmp_path / "b")):
        answered = {r[0] for url, r in load.results if url == replica.url}
        logged = {r["request_id"] for r in read_records(str(workdir / "traffic.db"))}
        assert answered <= logged, "every answered request of the load is in its replica's traffic log"


def test_a_gateway_started_while_redis_is_down_serves_then_joins(upstreams, tmp_path):
    from tests.support import GatewayProcess, RedisProcess

    redis_server = RedisProcess(tmp_path).start()
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    config = _replica_config(upstreams, tmp_path / "a", redis_server.url)
    a = GatewayProcess(config, tmp_path / "a").start()
    try:
        assert _admin_post(a.url, "/admin/routes/bot/rollout", {"candidate": "cand", "percent": 35})[0] == 200
        snapshot = tmp_path / "a" / "rollout-snapshot.json"
        wait_until(
            lambda: (
                snapshot.exists()
                and '"cand": [[' in snapshot.read_text()
                and json.loads(snapshot.read_text())["routes"]["bot"]["allocation"]
            ),
            "the local snapshot",
        )
        before = _variants(a.url)
    finally:
        assert a.stop() == 0
        redis_server.stop()

    a = GatewayProcess(config, tmp_path / "a").start()  # redis is down: it must start anyway
    b = None
    try:
        status, ready = get_json(a.url + "/readyz")
        assert status == 200 and ready["status"] == "degraded"
        assert "local snapshot" in ready["degraded"]["rollout"]
        assert _variants(a.url) == before, "the operator's 35% survived a restart during the outage"
        assert _percents(a.url) == {"cand": 35.0}

        redis_server.start()  # empty
        wait_until(lambda: _shared_again(a.url), "the gateway joining redis", timeout=45)
        b = GatewayProcess(_replica_config(upstreams, tmp_path / "b", redis_server.url), tmp_path / "b").start()
        assert _percents(b.url) == {"cand": 35.0}, "the state a served is the shared state now"
        assert _variants(b.url) == before
        assert _admin_post(b.url, "/admin/routes/bot/rollout", {"candidate": "cand", "percent": 15})[0] == 200
        wait_until(lambda: _percents(a.url) == {"cand": 15.0}, "a change on b reaching a")
        assert "Traceback" not in a.log(), a.log()
    finally:
        a.stop()
        if b is not None:
            b.stop()
        redis_server.stop()


def test_a_breaker_keeps_its_state_across_a_reload_that_leaves_its_backend_alone(upstreams, make_gateway, tmp_path):
    from gateway.config import parse_config
    from gateway.gateway import GATEWAY

    upstreams["primary"].mode = "503"
    config = fault_config(upstreams, tmp_path, breaker={"failures": 1, "open_seconds": 30})
    gw = make_gateway(config)
    ask(gw.url)
    assert breaker_of(gw.url)["state"] == "open"
    config["routes"]["other"] = {"baseline": "spare"}
    config["backends"]["spare"]["breaker"] = {"failures": 2, "open_seconds": 30}
    gw.call(gw.app[GATEWAY].reload(parse_config(config, "<reloaded>")))
    assert breaker_of(gw.url)["state"] == "open", "primary is unchanged: still known to be failing"
    assert breaker_of(gw.url, "spare")["failures"] == 2, "spare changed: a fresh breaker with its new settings"
    assert ask(gw.url).headers["x-llmgate-variant"] == "spare" and upstreams["primary"].received == 1
