"""The start-up banner: which routes can answer, whether the admin surfaces are on, what to do with no keys;
/readyz naming the same routes in the same words, and the first mistakes' answers pointing the same way."""

import json
import urllib.error
import urllib.request

from gateway.banner import banner, unanswerable
from gateway.config import parse_config
from gateway.gateway import Gateway

BACKENDS = {
    "claude": {"kind": "anthropic", "model": "c", "api_key": "${BANNER_TEST_ANTHROPIC_KEY}"},
    "local": {"kind": "openai", "model": "l", "api_key": "none", "base_url": "http://127.0.0.1:9/v1"},
}


def _banner(config: dict, monkeypatch, admin: str | None = None) -> list[str]:
    monkeypatch.delenv("BANNER_TEST_ANTHROPIC_KEY", raising=False)
    if admin is None:
        monkeypatch.delenv("LLMGATE_ADMIN_TOKEN", raising=False)
    else:
        monkeypatch.setenv("LLMGATE_ADMIN_TOKEN", admin)
    return banner(Gateway(parse_config(config, "test.yaml")), "http://127.0.0.1:8080", "uvloop")


def test_each_route_says_what_answers_it_and_what_is_missing(monkeypatch):
    lines = _banner(
        {
            "backends": BACKENDS,
            "routes": {"mixed": {"baseline": "claude", "fallback": ["local"]}, "blocked": {"baseline": "claude"}},
        },
        monkeypatch,
    )
    assert lines[0] == "llmgate serving on http://127.0.0.1:8080 (config test.yaml, event loop uvloop)"
    assert "  route mixed: answers via local (claude needs BANNER_TEST_ANTHROPIC_KEY)" in lines
    assert "  route blocked: cannot answer: claude needs BANNER_TEST_ANTHROPIC_KEY" in lines
    assert not any("make demo" in line for line in lines)  # one route can answer: no newcomer's hint
    assert any(line.startswith("  admin API and console: off (set LLMGATE_ADMIN_TOKEN") for line in lines)


def test_with_no_route_able_to_answer_it_names_the_variables_and_the_demo(monkeypatch):
    lines = _banner({"backends": BACKENDS, "routes": {"r": {"baseline": "claude"}}}, monkeypatch, admin="t0ken-x")
    assert lines[-1].startswith("  no route can answer yet: set BANNER_TEST_ANTHROPIC_KEY and restart.")
    assert "make demo" in lines[-1]
    on = [line for line in lines if "admin API" in line]
    assert on == [
        "  admin API and console: on (http://127.0.0.1:8080/admin/status, http://127.0.0.1:8080/console; "
        "Authorization: Bearer <admin token>)"
    ]
    assert not any("t0ken-x" in line for line in lines)  # the token itself is never printed


def _get(url: str, token: str | None = None, body: dict | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_readiness_names_the_routes_that_cannot_answer_as_the_banner_does(monkeypatch, make_gateway):
    monkeypatch.delenv("BANNER_TEST_ANTHROPIC_KEY", raising=False)
    mixed = {"backends": BACKENDS, "routes": {"mixed": {"baseline": "claude", "fallback": ["local"]}}}
    assert unanswerable(Gateway(parse_config(mixed))) is None
    gw = make_gateway({"backends": BACKENDS, "routes": {**mixed["routes"], "blocked": {"baseline": "claude"}}})
    status, ready = _get(gw.url + "/readyz")
    assert status == 200 and ready["status"] == "ready"  # one route answers: serving, one route named
    blocked = "route blocked: cannot answer: claude needs BANNER_TEST_ANTHROPIC_KEY"
    assert ready["degraded"]["routes"] == f"(1 of 2 routes) {blocked}"


def test_readiness_with_no_route_able_to_answer_is_degraded_and_says_why(monkeypatch, make_gateway):
    monkeypatch.delenv("BANNER_TEST_ANTHROPIC_KEY", raising=False)
    gw = make_gateway({"backends": BACKENDS, "routes": {"r": {"baseline": "claude"}, "s": {"baseline": "claude"}}})
    status, ready = _get(gw.url + "/readyz")
    assert status == 200 and ready["status"] == "degraded"
    assert ready["degraded"]["routes"].startswith("no route can answer (set the variables and restart; 2 of 2 routes) ")
    assert "route s: cannot answer: claude needs BANNER_TEST_ANTHROPIC_KEY" in ready["degraded"]["routes"]
    assert _get(gw.url + "/healthz") == (200, {"status": "ok"})  # alive all the same


def test_a_wrong_admin_token_says_where_the_token_comes_from_and_the_tour_route_points_to_the_demo(
    monkeypatch, make_gateway
):
    monkeypatch.setenv("LLMGATE_ADMIN_TOKEN", "the-real-admin-token")
    gw = make_gateway({"backends": BACKENDS, "routes": {"mixed": {"baseline": "local"}}})
    status, body = _get(gw.url + "/admin/status", token="a-wrong-guess-1234")
    message = body["error"]["message"]
    assert status == 401 and body["error"]["code"] == "invalid_admin_token"
    assert "server.admin_token" in message and "LLMGATE_ADMIN_TOKEN" in message and "make demo" in message
    assert "a-wrong-guess-1234" not in message and "the-real-admin-token" not in message
    chat = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    status, body = _get(gw.url + "/v1/chat/completions", body=chat)
    assert status == 404 and "routes: mixed" in body["error"]["message"]
    assert "'demo' is the route `make demo` serves" in body["error"]["message"]


def test_admin_actions_with_no_admin_token_configured_say_how_to_turn_them_on(monkeypatch, make_gateway):
    monkeypatch.delenv("LLMGATE_ADMIN_TOKEN", raising=False)
    gw = make_gateway({"backends": BACKENDS, "routes": {"mixed": {"baseline": "local"}}})
    status, body = _get(gw.url + "/admin/status", token="anything")
    message = body["error"]["message"]
    assert status == 401 and body["error"]["code"] == "admin_disabled"
    assert "LLMGATE_ADMIN_TOKEN" in message and "server.admin_token" in message and "make demo" in message
