"""One deadline per request, and a provider's long Retry-After, against a real `llmgate serve`.

`deadline:` on a route (or the gateway-wide `deadline:`) bounds the whole request: every try, retry,
backoff and fallback, a stream to its end, each try given what is left; the caller's 504 comes within
50 ms of it. A 429 whose Retry-After is longer than the gateway would wait moves the request to the
next backend at once, and the backend cools down for the time the provider said.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import aiohttp
import pytest

from plugins.traffic_log.plugin import read_records
from tests.fakes.faulty_api import FaultyOpenAI
from tests.support import GatewayProcess, ServerThread, wait_until

ADMIN = "admin-token-for-deadlines"
NAMES = ("primary", "spare", "limited", "other")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("deadline")
    fakes = {name: FaultyOpenAI(name) for name in NAMES}
    servers = [ServerThread(fake.app).start() for fake in fakes.values()]
    for fake, server in zip(fakes.values(), servers):
        fake.url = server.url

    def backend(name: str) -> dict:
        return {
            "kind": "openai",
            "base_url": fakes[name].url + "/v1",
            "model": f"m-{name}",
            "api_key": "none",
            "timeout": {"connect": 1, "first_byte": 1, "total": 10},
            "breaker": {"enabled": False},
        }

    config = {
        "server": {"admin_token": ADMIN},
        "deadline": 2.0,  # the gateway's, for routes that set none
        "state": {"sqlite_path": str(workdir / "state.db")},
        "backends": {name: backend(name) for name in NAMES},
        "routes": {
            "tight": {"baseline": "primary", "retries": 1, "fallback": ["spare"], "deadline": 1.5},
            "roomy": {"baseline": "primary", "retries": 0, "fallback": ["spare"], "deadline": 3},
            "defaulted": {"baseline": "primary", "retries": 1, "fallback": ["spare"]},
            "limited": {"baseline": "limited", "retries": 2, "fallback": ["other"]},
            "limited_alone": {"baseline": "limited", "retries": 2},
        },
        "plugins": {"traffic_log": {"path": str(workdir / "traffic.db")}},
    }
    gw = GatewayProcess(config, workdir).start()
    try:
        yield fakes, gw, str(workdir / "traffic.db")
    finally:
        gw.stop()
        for server in servers:
            server.stop()


@pytest.fixture
def fakes(served):
    fakes = served[0]
    for fake in fakes.values():
        fake.mode, fake.delay, fake.received = "ok", 0.0, 0
    return fakes


def post(url: str, route: str, stream: bool = False) -> tuple[float, int, dict, str]:
    """(seconds, status, headers, body) of one chat request."""
    body = {"model": route, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    request = urllib.request.Request(
        url + "/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            status, headers, text = resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as err:
        status, headers, text = err.code, dict(err.headers), err.read().decode()
    return time.perf_counter() - started, status, headers, text


def record_of(traffic: str, request_id: str) -> dict:
    return wait_until(
        lambda: next((r for r in read_records(traffic) if r["request_id"] == request_id), None), "the record"
    )


def test_the_route_deadline_bounds_tries_retries_and_fallbacks(served, fakes):
    _, gw, traffic = served
    fakes["primary"].mode = fakes["spare"].mode = "hang"  # each try would wait its 1 s first-byte timeout
    seconds, status, headers, text = post(gw.url, "tight")
    error = json.loads(text)["error"]
    assert (status, error["type"]) == (504, "timeout_error"), text
    assert "deadline of 1.5s" in error["message"], error
    record = record_of(traffic, headers["x-request-id"])
    print(f"deadline 1.5 s: answered after {record['latency_ms']:.0f} ms (caller: {seconds * 1000:.0f} ms)")
    assert 1500 <= record["latency_ms"] < 1550, record["latency_ms"]
    assert seconds < 1.8, seconds
    attempts = [(a["backend"], a["status"]) for a in record["attempts"]]
    assert attempts == [("primary", 504), ("primary", 504)], record["attempts"]
    assert "deadline" in record["attempts"][-1]["error"], "the retry was given what was left, and cut there"
    assert fakes["spare"].received == 0, "no time was left for the fallback"


def test_the_gateway_deadline_applies_to_a_route_without_its_own(served, fakes):
    _, gw, traffic = served
    fakes["primary"].mode = fakes["spare"].mode = "hang"
    _, status, headers, text = post(gw.url, "defaulted")
    assert status == 504 and "deadline of 2s" in json.loads(text)["error"]["message"], text
    record = record_of(traffic, headers["x-request-id"])
    assert 2000 <= record["latency_ms"] < 2050, record["latency_ms"]
    assert record["attempts"][0]["backend"] == "primary" and "deadline" in record["attempts"][-1]["error"]


def test_a_fallback_that_fits_in_the_deadline_answers(served, fakes):
    _, gw, traffic = served
    fakes["primary"].mode = "hang"
    fakes["spare"].mode, fakes["spare"].delay = "slow", 0.3
    seconds, status, headers, _ = post(gw.url, "roomy")
    assert (status, headers["x-llmgate-variant"]) == (200, "spare")
    assert 1.2 < seconds < 2.0, seconds


def test_a_stream_past_the_deadline_ends_with_a_timeout_event(served, fakes):
    _, gw, traffic = served
    fakes["primary"].mode, fakes["primary"].delay = "drip", 0.4  # four chunks: 1.6 s, past 1.5

    async def read():
        async with aiohttp.ClientSession() as session:
            body = {"model": "tight", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(gw.url + "/v1/chat/completions", json=body) as resp:
                return resp.headers["x-request-id"], (await resp.read()).decode()

    request_id, text = asyncio.run(read())
    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["type"] == "timeout_error" and "deadline" in error["message"], error
    record = record_of(traffic, request_id)
    assert record["status"] == 504 and 1500 <= record["latency_ms"] < 1550, record["latency_ms"]


def test_a_retry_after_above_the_cap_moves_on_at_once_and_cools_the_backend_down(served, fakes):
    _, gw, traffic = served
    limited = fakes["limited"]
    limited.mode, limited.retry_after = "429", 30
    seconds, status, headers, _ = post(gw.url, "limited")
    assert (status, headers["x-llmgate-variant"]) == (200, "other")
    assert seconds < 0.5 and limited.received == 1, "no retry inside the provider's window"
    request = urllib.request.Request(gw.url + "/admin/status", headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        breaker = json.loads(resp.read())["breakers"]["limited"]
    assert 28 < breaker["cooling_down_seconds"] <= 30, breaker

    _, status, headers, _ = post(gw.url, "limited")
    assert (status, headers["x-llmgate-tried"]) == (200, "limited,other") and limited.received == 1
    record = record_of(traffic, headers["x-request-id"])
    assert record["attempts"][0]["status"] == 429 and "cooling down" in record["attempts"][0]["error"]

    _, status, headers, text = post(gw.url, "limited_alone")
    assert status == 429 and json.loads(text)["error"]["type"] == "rate_limit_error", text
    assert 28 <= int(headers["Retry-After"]) <= 30 and limited.received == 1
