"""`llmgate traffic show` and `llmgate traffic tail` against a real gateway, the exchanges sent with the
official SDK: one exchange by its x-request-id (with its shadow comparison, the judge's score and the
user's rating), the admin token, a clear 404, and live traffic followed from a cursor."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import openai
import pytest

from gateway.cli import main
from gateway.cli.client import AdminClient
from gateway.gateway import GATEWAY
from plugins.traffic_log.commands import exchange_line, follow
from tests.conftest import UPSTREAM_KEY
from tests.support import wait_until

TOKEN = "traffic-show-admin-token-0123"


@pytest.fixture
def gw(fake_openai, make_gateway, tmp_path):
    def backend(model):
        return {
            "kind": "openai",
            "base_url": fake_openai.url + "/v1",
            "model": model,
            "api_key": UPSTREAM_KEY,
        }

    return make_gateway(
        {
            "server": {"admin_token": TOKEN},
            "backends": {"base": backend("m-base"), "sh": backend("m-shadow")},
            "routes": {"bot": {"baseline": "base", "shadow": ["sh"]}, "other": {"baseline": "base"}},
            "prices": {"base": {"input": 3.0, "output": 15.0}, "sh": {"input": 0.5, "output": 1.5}},
            "plugins": {
                "shadow": {"path": str(tmp_path / "shadow.db")},
                "feedback": {"path": str(tmp_path / "feedback.db")},
            },
        }
    )


@pytest.fixture
def admin_env(monkeypatch):
    monkeypatch.setenv("LLMGATE_ADMIN_TOKEN", TOKEN)


def chat(url: str, route: str = "bot", text: str = "hello there") -> str:
    """One exchange through the SDK; its x-request-id."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="app-key", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model=route, messages=[{"role": "user", "content": text}])
    raw.parse()
    return raw.headers["x-request-id"]


def admin_get(url: str, path: str, token: str = TOKEN) -> tuple[int, dict]:
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def logged(url: str, request_id: str) -> dict | None:
    status, body = admin_get(url, f"/admin/traffic/{request_id}")
    return body if status == 200 else None


def test_show_names_what_answered_how_it_went_and_what_others_stored(gw, admin_env, capsys):
    request_id = chat(gw.url)
    found = wait_until(
        lambda: (b := logged(gw.url, request_id)) and b["shadow_comparisons"] and b,
        "the exchange and its shadow comparison",
    )
    assert found["exchange"]["route"] == "bot" and found["matches"] == 1
    shadow = gw.app[GATEWAY].pm.get_plugin("shadow")
    assert gw.call(shadow.set_judge_score(request_id, "sh", 0.75))
    rating = urllib.request.Request(
        gw.url + "/v1/feedback",
        method="POST",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"request_id": request_id, "rating": "helpful"}).encode(),
    )
    urllib.request.urlopen(rating).read()

    assert main(["traffic", "show", request_id, "--url", gw.url]) == 0
    out = capsys.readouterr().out
    assert f"exchange {request_id}" in out
    for line in ("route      bot", "variant    base", "dialect    chat", "status     200", "cache      -"):
        assert line in out, (line, out)
    record = found["exchange"]
    assert f"tokens     {record['prompt_tokens']} prompt + {record['completion_tokens']} completion" in out
    assert f"cost       ${record['cost_usd']:.6f}" in out and record["cost_usd"] > 0
    assert "attempts   base 200 in" in out
    assert "shadow     sh: 200 in" in out and "judge score 0.75" in out
    assert "feedback   helpful (score 1)" in out
    assert '"content": "hello there"' in out  # the request body as stored
    assert out.index("request:") < out.index("response:")

    assert main(["traffic", "show", request_id, "--url", gw.url, "--json"]) == 0
    raw = json.loads(capsys.readouterr().out)
    exchange = raw["exchange"]
    assert exchange["request_id"] == request_id and exchange["variant"] == "base" and exchange["status"] == 200
    assert exchange["request"]["messages"] == [{"role": "user", "content": "hello there"}]
    assert exchange["response"]["choices"][0]["message"]["role"] == "assistant"
    assert exchange["prompt_tokens"] and exchange["completion_tokens"] and exchange["attempts"][0]["backend"] == "base"
    assert [(s["shadow_backend"], s["judge_score"]) for s in raw["shadow_comparisons"]] == [("sh", 0.75)]
    assert raw["feedback"]["rating"] == "helpful"


def test_an_unknown_id_is_a_clear_404(gw, admin_env, capsys):
    assert main(["traffic", "show", "no-such-request", "--url", gw.url]) == 1
    err = capsys.readouterr().err
    assert "404 no exchange with id 'no-such-request' in the traffic log" in err


def test_the_admin_token_is_required(gw, monkeypatch, capsys):
    request_id = chat(gw.url)
    monkeypatch.delenv("LLMGATE_ADMIN_TOKEN", raising=False)
    assert main(["traffic", "show", request_id, "--url", gw.url]) == 1
    err = capsys.readouterr().err
    assert "401" in err and "LLMGATE_ADMIN_TOKEN" in err
    assert admin_get(gw.url, "/admin/traffic", token="wrong")[0] == 401
    assert admin_get(gw.url, f"/admin/traffic/{request_id}", token="wrong")[0] == 401


def test_tail_prints_the_latest_then_each_new_exchange_of_its_route(gw):
    first = [chat(gw.url, text=f"before {i}") for i in range(2)]
    wait_until(lambda: all(logged(gw.url, i) for i in first), "the first exchanges logged")
    seen: list[dict] = []
    tail = threading.Thread(
        target=follow,
        daemon=True,
        kwargs=dict(client=AdminClient(gw.url, TOKEN), route="bot", lines=2, count=5, interval=0.05, emit=seen.append),
    )
    tail.start()
    wait_until(lambda: len(seen) == 2, "the latest two exchanges")
    chat(gw.url, route="other")  # another route's: not followed
    later = [chat(gw.url, text=f"after {i}") for i in range(3)]
    tail.join(30)
    assert not tail.is_alive()
    assert [e["request_id"] for e in seen] == first + later
    assert {e["route"] for e in seen} == {"bot"} and all(e["status"] == 200 and e["variant"] == "base" for e in seen)
    line = exchange_line(seen[-1])
    assert later[-1] in line and "bot" in line and "base" in line and " 200 " in line and " ms" in line
    assert f"{seen[-1]['prompt_tokens']}+{seen[-1]['completion_tokens']} tok" in line and "$" in line


def test_tail_command_prints_lines_and_json_lines(gw, admin_env, capsys):
    ids = [chat(gw.url, text=f"q {i}") for i in range(2)]
    wait_until(lambda: all(logged(gw.url, i) for i in ids), "the exchanges logged")
    assert main(["traffic", "tail", "--url", gw.url, "--lines", "2", "--count", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and ids[0] in lines[0] and ids[1] in lines[1]
    assert main(["traffic", "tail", "--url", gw.url, "--lines", "1", "--count", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["request_id"] == ids[1]


def test_the_cursor_pages_through_without_gaps_or_repeats(gw):
    ids = [chat(gw.url, text=f"page {i}") for i in range(3)]
    wait_until(lambda: all(logged(gw.url, i) for i in ids), "the exchanges logged")
    status, start = admin_get(gw.url, "/admin/traffic?limit=0")
    assert status == 200 and start["exchanges"] == []
    _, everything = admin_get(gw.url, "/admin/traffic?limit=10")
    assert [e["request_id"] for e in everything["exchanges"]] == ids and everything["cursor"] == start["cursor"]
    cursor, paged = everything["exchanges"][0]["id"] - 1, []
    for _ in range(4):
        _, page = admin_get(gw.url, f"/admin/traffic?after={cursor}&limit=1")
        paged += [e["request_id"] for e in page["exchanges"]]
        cursor = page["cursor"]
    assert paged == ids and cursor == start["cursor"]
    assert admin_get(gw.url, "/admin/traffic?limit=many")[0] == 400
    assert admin_get(gw.url, "/admin/traffic?after=0&limit=0")[0] == 400


def test_a_gateway_without_the_traffic_log_says_so(fake_openai, make_gateway, admin_env, capsys):
    backend = {"kind": "openai", "base_url": fake_openai.url + "/v1", "model": "m", "api_key": UPSTREAM_KEY}
    gw = make_gateway(
        {
            "server": {"admin_token": TOKEN},
            "backends": {"b": backend},
            "routes": {"r": {"baseline": "b"}},
            "plugins": {"traffic_log": {"enabled": False}},
        }
    )
    assert main(["traffic", "show", "abc", "--url", gw.url]) == 1
    assert "is the traffic_log plugin enabled on that gateway?" in capsys.readouterr().err
