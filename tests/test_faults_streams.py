"""Truncated upstream streams against a real `llmgate serve`, for each backend kind and each caller dialect.

A stream is an answer only when it ends with a finish (OpenAI's finish_reason, Anthropic's message_stop,
Bedrock's messageStop): one whose body ends cleanly before that, or a JSON body cut short where events
were asked for, is an error event in the caller's own dialect, a 502 in the traffic log and metrics, a
failure for the breaker, and a fallback along the chain while nothing was sent to the caller yet.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request

import aiohttp
import pytest

from plugins.traffic_log.plugin import read_records
from tests.conftest import BEDROCK_MODEL
from tests.fakes.faulty_api import FaultyAnthropic, FaultyBedrock, FaultyOpenAI
from tests.support import GatewayProcess, ServerThread, wait_until

ADMIN = "admin-token-for-stream-faults"
TIMEOUT = {"connect": 2, "first_byte": 5, "total": 10}
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKEFAKE",
    "AWS_SECRET_ACCESS_KEY": "fake-aws-secret-key-for-tests-only",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
FAKES = {"openai": FaultyOpenAI, "anthropic": FaultyAnthropic, "bedrock": FaultyBedrock}


def _backend(kind: str, url: str, failures: int) -> dict:
    common = {"timeout": TIMEOUT, "breaker": {"failures": failures, "open_seconds": 30}}
    if kind == "openai":
        return {"kind": "openai", "base_url": url + "/v1", "model": "m", "api_key": "none", **common}
    if kind == "anthropic":
        return {"kind": "anthropic", "base_url": url, "model": "claude-test", "api_key": "sk-ant-test-0000", **common}
    return {"kind": "bedrock", "model": BEDROCK_MODEL, "region": "us-east-1", "endpoint_url": url, **common}


@pytest.fixture(scope="module", params=list(FAKES))
def served(request, tmp_path_factory):
    """(kind, the faulty upstream of that kind, a healthy OpenAI spare, the gateway, its traffic log).

    Route `cut` has the faulty backend alone (its breaker opens after 3 failures); route `early` the same
    upstream as another backend, with the spare as its fallback."""
    kind, workdir = request.param, tmp_path_factory.mktemp(f"streams-{request.param}")
    faulty, spare = FAKES[kind]("faulty"), FaultyOpenAI("spare")
    servers = [ServerThread(fake.app).start() for fake in (faulty, spare)]
    faulty.url, spare.url = servers[0].url, servers[1].url
    traffic = workdir / "traffic.db"
    config = {
        "server": {"admin_token": ADMIN},
        "state": {"sqlite_path": str(workdir / "state.db")},
        "backends": {
            "cut": _backend(kind, faulty.url, 3),
            "early": _backend(kind, faulty.url, 100),
            "spare": _backend("openai", spare.url, 100),
        },
        "routes": {
            "cut": {"baseline": "cut", "retries": 0},
            "early": {"baseline": "early", "fallback": ["spare"], "retries": 0},
        },
        "plugins": {"traffic_log": {"path": str(traffic)}},
    }
    gw = GatewayProcess(config, workdir, env=AWS_ENV).start()
    try:
        yield kind, faulty, spare, gw, str(traffic)
    finally:
        gw.stop()
        for server in servers:
            server.stop()


def _request(dialect: str, route: str) -> tuple[str, dict]:
    if dialect == "chat":
        return "/v1/chat/completions", {"model": route, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    if dialect == "responses":
        return "/v1/responses", {"model": route, "stream": True, "input": "hi"}
    return "/v1/messages", {
        "model": route,
        "stream": True,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}],
    }


def stream(url: str, dialect: str, route: str) -> tuple[int, dict, list[tuple[str | None, str]]]:
    """(status, headers, every (event, data) of the answer), read raw: an SDK would hide how it ended."""

    async def run():
        path, body = _request(dialect, route)
        async with aiohttp.ClientSession() as session:
            async with session.post(url + path, json=body, headers={"Authorization": "Bearer k"}) as resp:
                return resp.status, dict(resp.headers), (await resp.read()).decode()

    status, headers, text = asyncio.run(run())
    events = []
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        event = next((line[7:] for line in lines if line.startswith("event: ")), None)
        data = next((line[6:] for line in lines if line.startswith("data: ")), None)
        if data is not None:
            events.append((event, data))
    return status, headers, events


def ended_with_an_error(dialect: str, events: list[tuple[str | None, str]]) -> str:
    """The error's message, asserting the stream ended with its dialect's error events and no clean end."""
    names = [event for event, _ in events]
    if dialect == "chat":
        assert events[-1][1] != "[DONE]" and "[DONE]" not in [data for _, data in events]
        error = json.loads(events[-1][1])["error"]
        assert error["type"] == "upstream_error", error
        return error["message"]
    if dialect == "responses":
        assert "response.completed" not in names and names[-2:] == ["error", "response.failed"], names
        return json.loads(events[-1][1])["response"]["error"]["message"]
    assert "message_stop" not in names and names[-1] == "error", names
    error = json.loads(events[-1][1])["error"]
    assert error["type"] == "api_error", error
    return error["message"]


def text_of(dialect: str, events: list[tuple[str | None, str]]) -> str:
    """The answer's text, asserting the stream ended cleanly in its dialect."""
    names = [event for event, _ in events]
    if dialect == "chat":
        assert events[-1][1] == "[DONE]"
        chunks = [json.loads(data) for _, data in events[:-1]]
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    if dialect == "responses":
        assert names[-1] == "response.completed", names
        return "".join(json.loads(d)["delta"] for e, d in events if e == "response.output_text.delta")
    assert names[-1] == "message_stop", names
    return "".join(json.loads(d)["delta"].get("text", "") for e, d in events if e == "content_block_delta")


def get(url: str, token: str | None = None) -> str:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return resp.read().decode()


DIALECTS = ("chat", "responses", "messages")


def test_a_stream_cut_short_after_it_started_is_an_error_in_each_dialect_and_a_breaker_failure(served):
    kind, faulty, spare, gw, traffic = served
    faulty.mode, faulty.cut_after = "truncate", 2
    for dialect in DIALECTS:
        status, headers, events = stream(gw.url, dialect, "cut")
        assert status == 200 and headers["x-llmgate-variant"] == "cut", (dialect, status)
        message = ended_with_an_error(dialect, events)
        assert "backend 'cut'" in message and "before" in message, message
    records = wait_until(
        lambda: len(r := [x for x in read_records(traffic) if x["route"] == "cut"]) == 3 and r, "three records"
    )
    for record in records:
        assert (record["status"], record["error_type"]) == (502, "upstream_error"), record
        assert record["response"]["choices"][0]["message"]["content"] == "part0 part1 "
        assert [(a["backend"], a["status"]) for a in record["attempts"]] == [("cut", 502)], record["attempts"]
    metrics = get(gw.url + "/metrics")
    failed = [
        line for line in metrics.splitlines() if line.startswith("llmgate_requests_total{") and 'route="cut"' in line
    ]
    assert failed and all('status_class="5xx"' in line for line in failed), failed
    assert sum(float(line.rsplit(" ", 1)[1]) for line in failed) == 3
    breaker = json.loads(get(gw.url + "/admin/status", ADMIN))["breakers"]["cut"]
    assert breaker["state"] == "open" and breaker["times_opened"] == 1, breaker
    received = faulty.received
    status, _, events = stream(gw.url, "chat", "cut")
    assert status == 503 and faulty.received == received, "three cut streams opened the breaker"


@pytest.mark.parametrize("mode", ["truncate_early", "truncated_json"])
def test_a_stream_that_ends_before_saying_anything_falls_back(served, mode):
    kind, faulty, spare, gw, traffic = served
    faulty.mode = mode
    for dialect in DIALECTS:
        before = (faulty.received, spare.received)
        status, headers, events = stream(gw.url, dialect, "early")
        assert status == 200, (dialect, status, events)
        assert (headers["x-llmgate-variant"], headers["x-llmgate-tried"]) == ("spare", "early,spare"), dialect
        assert text_of(dialect, events) == "part0 part1 part2 part3 ", dialect
        assert (faulty.received, spare.received) == (before[0] + 1, before[1] + 1)
    records = wait_until(
        lambda: len(r := [x for x in read_records(traffic) if x["route"] == "early"]) >= 3 and r, "the records"
    )
    for record in records[-3:]:
        assert record["status"] == 200 and record["served_by"] == "spare"
        assert [(a["backend"], a["status"]) for a in record["attempts"]] == [("early", 502), ("spare", 200)]


def test_a_whole_json_answer_to_a_stream_request_is_relayed_as_a_stream(served):
    kind, faulty, spare, gw, traffic = served
    if kind != "openai":
        pytest.skip("only an OpenAI-compatible server answers a stream request whole")
    faulty.mode = "ok_json"
    status, headers, events = stream(gw.url, "chat", "early")
    assert (status, headers["x-llmgate-variant"]) == (200, "early")
    assert text_of("chat", events) == "ok from faulty"
