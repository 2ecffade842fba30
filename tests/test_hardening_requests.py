"""Hardening (issue 28) against a real `llmgate serve`: registrations carry no credential to another host,
request ids no caller predicts or takes, every aborted stream accounted, and what a team may not use
answers as if it did not exist."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import urllib.error
import urllib.request

import aiohttp
import pytest
from aiohttp import web

from gateway.app import new_request_id
from plugins.api_keys.plugin import hash_key
from plugins.traffic_log.plugin import read_records
from tests.conftest import UPSTREAM_KEY, backend_config
from tests.fakes.faulty_api import FaultyOpenAI
from tests.fakes.openai_api import FakeOpenAI
from tests.support import GatewayProcess, ServerThread, serving, wait_until

ADMIN = "admin-token-for-hardening-tests-0123"
KEY_A = "sk-lg-team-a-key-0123456789abcdef0000"
KEY_B = "sk-lg-team-b-key-0123456789abcdef1111"


def call(gw, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of one request to the gateway."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(
        gw.url + path,
        data=data,
        method=method,
        headers={**({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}"), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), dict(err.headers)


def admin(gw, method: str, path: str, body=None) -> tuple[int, dict]:
    status, answer, _ = call(gw, method, path, body, {"Authorization": f"Bearer {ADMIN}"})
    return status, answer


def chat(gw, key: str, route: str, headers: dict | None = None, **extra) -> tuple[int, dict, dict]:
    body = {"model": route, "messages": [{"role": "user", "content": "hello"}], **extra}
    return call(gw, "POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {key}", **(headers or {})})


def records(path) -> list[dict]:
    try:
        return list(read_records(str(path)))
    except sqlite3.Error:
        return []


def daemon(tmp_path, config: dict) -> GatewayProcess:
    config = {
        "server": {"admin_token": ADMIN},
        "state": {"sqlite_path": str(tmp_path / "state.db")},
        **config,
    }
    config["plugins"] = {
        "traffic_log": {"path": str(tmp_path / "traffic.db"), "batch_wait_ms": 0},
        **config.get("plugins", {}),
    }
    return GatewayProcess(config, tmp_path).start()


def two_teams(tmp_path, up, **plugins) -> GatewayProcess:
    """A daemon whose teams a and b each have a route of their own on the fake `up`."""
    teams = {
        "a": {"keys": [hash_key(KEY_A)], "routes": ["a-bot"]},
        "b": {"keys": [hash_key(KEY_B)], "routes": ["b-bot"]},
    }
    return daemon(
        tmp_path,
        {
            "backends": {"up": backend_config("openai", up)},
            "routes": {"a-bot": {"baseline": "up"}, "b-bot": {"baseline": "up"}},
            "plugins": {"api_keys": {"enabled": True, "teams": teams}, **plugins},
        },
    )


# --- finding 3: a registration carries no credential to a host it was not configured for -----------------


def test_a_registration_sends_no_credential_to_another_host_and_expands_no_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("HARDENING_SECRET", "env-value-never-sent-0123")
    with serving(FakeOpenAI(api_key=UPSTREAM_KEY)) as base, serving(FakeOpenAI()) as other:
        gw = daemon(
            tmp_path,
            {
                "backends": {"base": {**backend_config("openai", base), "api_key": UPSTREAM_KEY}},
                "routes": {"bot": {"baseline": "base"}},
            },
        )
        try:
            elsewhere = {"like": "base", "base_url": other.url + "/v1", "model": "exfiltrated"}
            moved = {"name": "moved", "backend": elsewhere, "shadow": ["bot"]}
            status, body = admin(gw, "POST", "/admin/models", moved)
            assert status == 200, body
            same_host = {"like": "base", "model": "ft:same-host"}
            kept = {"name": "kept", "backend": same_host, "shadow": ["bot"]}
            assert admin(gw, "POST", "/admin/models", kept)[0] == 200
            for header in ("${HOME}", "${HARDENING_SECRET}", "Bearer ${HARDENING_SECRET}"):
                refused = {"like": "base", "base_url": other.url + "/v1", "headers": {"X-Leak": header}}
                status, body = admin(gw, "POST", "/admin/models", {"name": "leak", "backend": refused})
                assert status == 400 and "${VAR} is expanded only in the config file" in body["error"]["message"]
            keyed = {"kind": "openai", "base_url": other.url + "/v1", "model": "m", "api_key": "${HARDENING_SECRET}"}
            status, body = admin(gw, "POST", "/admin/models", {"name": "leak", "backend": keyed})
            assert status == 400 and body["error"]["param"] == "backend"

            assert chat(gw, "any", "bot")[0] == 200
            wait_until(lambda: any(r.get("model") == "exfiltrated" for r in other.requests), what="the shadow call")
            wait_until(lambda: any(r.get("model") == "ft:same-host" for r in base.requests), what="the same-host call")
            sent = [h for r, h in zip(other.requests, other.headers) if r.get("model") == "exfiltrated"]
            assert sent and all("Authorization" not in h for h in sent)
            assert not any("env-value-never-sent" in json.dumps(h) for h in other.headers)
            # the same host still gets the key it was configured with (the fake refuses any other)
            same = [h for r, h in zip(base.requests, base.headers) if r.get("model") == "ft:same-host"]
            assert same and all(h["Authorization"] == f"Bearer {UPSTREAM_KEY}" for h in same)

            events = admin(gw, "GET", "/admin/events?kind=register_model")[1]["events"]
            by_name = {e["backend"]: e for e in events}
            assert set(by_name) == {"moved", "kept"}  # the refused ones registered nothing
            assert by_name["moved"]["host"] == other.url and by_name["moved"]["credentials"] is None
            assert by_name["kept"]["host"] == base.url and by_name["kept"]["credentials"] == "copied from 'base'"
        finally:
            gw.stop()


# --- finding 5: ids from the OS's randomness; a caller's id is correlation only; scoped by team ---------


def _untemper(y: int) -> int:
    y ^= y >> 18
    y ^= (y << 15) & 0xEFC60000
    x = y
    for _ in range(5):
        x = y ^ ((x << 7) & 0x9D2C5680)
    x &= 0xFFFFFFFF
    return (x ^ (x >> 11) ^ (x >> 22)) & 0xFFFFFFFF


def predicted_next(ids: list[str]) -> str:
    """The id after 156 of them, were they Mersenne Twister output (getrandbits(128): 4 words, low first)."""
    words = []
    for value in (int(i, 16) for i in ids):
        words += [(value >> (32 * k)) & 0xFFFFFFFF for k in range(4)]
    clone = random.Random()
    clone.setstate((3, tuple(_untemper(w) for w in words[-624:]) + (624,), None))
    return f"{clone.getrandbits(128):032x}"


def test_the_id_sequence_cannot_be_predicted(tmp_path):
    twister = random.Random(7)  # what the ids were: the attack predicts them exactly
    seen = [f"{twister.getrandbits(128):032x}" for _ in range(156)]
    assert predicted_next(seen) == f"{twister.getrandbits(128):032x}"

    random.seed(1)
    first = new_request_id()
    random.seed(1)
    assert new_request_id() != first and len(first) == 32 and int(first, 16) >= 0  # not from `random`

    gw = daemon(tmp_path, {"backends": {}, "routes": {}})
    try:
        ids = [call(gw, "GET", "/healthz")[2]["x-request-id"] for _ in range(157)]
    finally:
        gw.stop()
    assert len(set(ids)) == 157
    assert predicted_next(ids[:156]) != ids[156]


def test_a_callers_id_is_kept_apart_and_no_team_rates_or_reads_anothers_exchange(tmp_path):
    with serving(FakeOpenAI()) as up:
        gw = two_teams(tmp_path, up, feedback={"path": str(tmp_path / "feedback.db")})
        try:
            status, _, headers = chat(gw, KEY_A, "a-bot", {"X-Request-Id": "a-own-correlation-id"})
            assert status == 200 and headers["x-client-request-id"] == "a-own-correlation-id"
            a_id = headers["x-request-id"]
            assert a_id != "a-own-correlation-id"
            # team B sends A's id as its own: it gets an id of its own, A's stays A's
            status, _, headers = chat(gw, KEY_B, "b-bot", {"X-Request-Id": a_id})
            b_id = headers["x-request-id"]
            assert status == 200 and b_id != a_id and headers["x-client-request-id"] == a_id
            rows = wait_until(lambda: len(records(tmp_path / "traffic.db")) == 2 and records(tmp_path / "traffic.db"))
            assert sorted(r["request_id"] for r in rows) == sorted([a_id, b_id])
            clients = {r["tenant"]: r["annotations"]["client_request_id"] for r in rows}
            assert clients == {"a": "a-own-correlation-id", "b": a_id}

            rating = {"request_id": a_id, "rating": "not_helpful"}
            status, body, _ = call(gw, "POST", "/v1/feedback", rating, {"Authorization": f"Bearer {KEY_B}"})
            assert status == 404 and body["error"]["code"] == "request_not_found"
            status, body, _ = call(gw, "POST", "/v1/feedback", rating, {"Authorization": f"Bearer {KEY_A}"})
            assert status == 200 and body["request_id"] == a_id

            assert admin(gw, "GET", f"/admin/traffic/{a_id}?team=a")[1]["exchange"]["tenant"] == "a"
            status, body = admin(gw, "GET", f"/admin/traffic/{a_id}?team=b")
            assert status == 404 and body["error"]["code"] == "exchange_not_found"
        finally:
            gw.stop()


# --- finding 7: an aborted stream is a row (499), its tokens and cost, a metric, no traceback ----------


class SlowStream(FaultyOpenAI):
    """A stream of 40 short chunks, 50 ms apart; it counts the streams the gateway let go of."""

    def __init__(self):
        super().__init__("slow")
        self.cut = 0

    async def _stream(self, request: web.Request, body: dict, cut: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for i in range(40):
                delta = {"role": "assistant", "content": f"tok{i} "}
                chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
                chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": None}]
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                await asyncio.sleep(0.05)
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.cut += 1  # the gateway let go of the stream: so does the upstream, quietly
        return response


STREAMS = {
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "count"}], "stream": True}),
    "responses": ("/v1/responses", {"input": "count", "stream": True}),
    "messages": (
        "/v1/messages",
        {"max_tokens": 200, "messages": [{"role": "user", "content": "count"}], "stream": True},
    ),
}


async def cut_after_two_chunks(url: str, dialect: str) -> None:
    path, body = STREAMS[dialect]
    async with aiohttp.ClientSession() as session:
        resp = await session.post(url + path, json={"model": "bot", **body}, headers={"x-api-key": KEY_A})
        assert resp.status == 200
        seen = b""
        while b"tok1" not in seen:
            seen += await resp.content.readany()
        resp.close()  # the caller goes away mid-stream


def test_an_aborted_stream_is_logged_counted_and_charged(tmp_path):
    slow = SlowStream()
    with ServerThread(slow.app) as up:
        gw = daemon(
            tmp_path,
            {
                "backends": {"up": {"kind": "openai", "base_url": up.url + "/v1", "model": "slow", "api_key": "none"}},
                "routes": {"bot": {"baseline": "up"}},
                "prices": {"up": {"input": 100.0, "output": 100.0}},
                "plugins": {
                    "api_keys": {"enabled": True, "teams": {"a": {"keys": [hash_key(KEY_A)]}}},
                    "budgets": {"enabled": True, "teams": {"a": {"daily_usd": 100}}},
                },
            },
        )
        try:
            dialects = ["chat"] * 8 + ["responses"] * 6 + ["messages"] * 6

            async def all_of_them():
                await asyncio.gather(*(cut_after_two_chunks(gw.url, d) for d in dialects))

            asyncio.run(all_of_them())
            rows = wait_until(lambda: len(records(tmp_path / "traffic.db")) >= 20 and records(tmp_path / "traffic.db"))
            assert len(rows) == 20 and {r["status"] for r in rows} == {499}
            assert all(r["completion_tokens"] > 0 and r["prompt_tokens"] > 0 and r["cost_usd"] > 0 for r in rows)
            assert all(r["error_type"] == "client_closed_request" for r in rows)
            assert sorted(r["annotations"].get("dialect", "chat") for r in rows) == sorted(dialects)
            wait_until(lambda: slow.cut == 20, what="every upstream stream cancelled")

            metrics = urllib.request.urlopen(gw.url + "/metrics", timeout=10).read().decode()
            counted = [
                line for line in metrics.splitlines() if line.startswith("llmgate_requests_total") and "4xx" in line
            ]
            assert counted and sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 20
            wait_until(lambda: admin(gw, "GET", "/admin/status")[1]["budgets"]["spent_usd"], what="the spend")
            spent = admin(gw, "GET", "/admin/status")[1]["budgets"]["spent_usd"]
            assert any(value > 0 for value in spent.values()), spent
        finally:
            gw.stop()
        log = gw.log()
        assert "Traceback" not in log and " ERROR " not in log
        assert log.count(" 499 ") >= 20


# --- finding 8: no route learnt by asking; the admin token only as Bearer; client settings refused ----


def test_a_route_of_another_team_is_as_unknown_as_one_that_does_not_exist(tmp_path):
    with serving(FakeOpenAI()) as up:
        gw = two_teams(tmp_path, up)
        try:
            status, forbidden, _ = chat(gw, KEY_A, "b-bot")
            status_unknown, unknown, _ = chat(gw, KEY_A, "zz-bot")
            assert status == status_unknown == 404
            assert forbidden["error"]["message"] == (
                "The model `b-bot` does not exist or you do not have access to it (routes available to you: a-bot)"
            )
            assert json.dumps(forbidden).replace("b-bot", "X") == json.dumps(unknown).replace("zz-bot", "X")

            message = {"model": "b-bot", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
            status, body, _ = call(gw, "POST", "/v1/messages", message, {"x-api-key": KEY_A})
            assert status == 404 and body["type"] == "error" and body["error"]["type"] == "not_found_error"
            assert "does not exist or you do not have access to it" in body["error"]["message"]
            assert up.requests == []

            assert call(gw, "GET", "/admin/status", headers={"Authorization": ADMIN})[0] == 401
            assert call(gw, "GET", "/admin/status", headers={"Authorization": f"Basic {ADMIN}"})[0] == 401
            assert admin(gw, "GET", "/admin/status")[0] == 200

            for name in ("base_url", "api_base", "api_key"):
                status, body, _ = chat(gw, KEY_A, "a-bot", **{name: "http://attacker.invalid/v1"})
                assert status == 400 and body["error"]["param"] == name, body
                assert body["error"]["code"] == "unsupported_parameter"
            assert up.requests == []
            assert chat(gw, KEY_A, "a-bot", frobnicate=1)[0] == 200  # an unknown parameter still passes on
        finally:
            gw.stop()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
