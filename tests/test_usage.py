"""Usage: spend and tokens per team, key, route and variant for a day or a range (GET /v1/usage and
`llmgate usage`), with the official SDKs as the clients. Counted from the traffic log (the embedded
state) it agrees with the log row for row; counted from the requests on two replicas sharing one
redis-server, both report the same totals; a team sees only its own; each bad parameter is a 400
naming it; a SIGKILL keeps usage and the budgets' spend; spend per team and route is in /metrics."""

import hashlib
import json
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

import anthropic
import openai
import pytest

from gateway.cli import main as cli_main
from plugins.api_keys.plugin import hash_key
from tests.conftest import backend_config
from tests.support import GatewayProcess, wait_until

ADMIN = "admin-token-for-usage-tests-0123"
SUPPORT_KEY = "sk-lg-usage-support-key-0123456789abcdef"
SUPPORT_KEY_NAME = "sha256:" + hashlib.sha256(SUPPORT_KEY.encode()).hexdigest()[:12]
PRICES = {
    "gpt-test": {"input": 100.0, "output": 100.0},
    "gpt-cand": {"input": 10.0, "output": 10.0},
    "claude-test": {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75},
}
FIGURES = ("requests", "prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd")


def today(days: int = 0) -> str:
    return (datetime.now(timezone.utc) + timedelta(days=days)).date().isoformat()


def gateway_config(fake_openai, tmp_path, name="gw", **usage) -> dict:
    return {
        "server": {"admin_token": ADMIN},
        "state": {"sqlite_path": str(tmp_path / f"{name}-state.db")},
        "backends": {
            "up": backend_config("openai", fake_openai),
            "cand": {**backend_config("openai", fake_openai), "model": "gpt-cand"},
        },
        "routes": {"bot": {"baseline": "up", "candidates": {"cand": 50}}},
        "prices": PRICES,
        "plugins": {
            "api_keys": {"enabled": True, "teams": {"support": {"keys": [hash_key(SUPPORT_KEY)]}}},
            "usage": {"enabled": True, **usage},
            "traffic_log": {"path": str(tmp_path / f"{name}-traffic.db"), "batch_wait_ms": 0},
        },
    }


def call(url: str, path: str, token: str = ADMIN, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}", **({"Content-Type": "application/json"} if data else {})}
    request = urllib.request.Request(url + path, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def usage(url: str, query: str = "", token: str = ADMIN) -> dict:
    status, body = call(url, "/v1/usage" + (f"?{query}" if query else ""), token)
    assert status == 200, body
    return body


def new_key(url: str, team: str, name: str) -> tuple[str, str]:
    """A key made at run time: (the key, its id)."""
    status, made = call(url, "/admin/keys", body={"team": team, "name": name})
    assert status == 200, made
    return made["key"], made["id"]


def chat(url: str, key: str, n: int, route: str = "bot", stream: bool = False, user: str = "u") -> list:
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    usages = []
    for i in range(n):
        messages = [{"role": "user", "content": f"usage question {i} from {user}"}]
        if stream:
            chunks = client.chat.completions.create(
                model=route, messages=messages, user=f"{user}{i}", stream=True, stream_options={"include_usage": True}
            )
            usages += [c.usage for c in chunks if c.usage is not None]
        else:
            usages.append(client.chat.completions.create(model=route, messages=messages, user=f"{user}{i}").usage)
    return usages


def logged(path) -> dict:
    """The traffic log's rows summed per (team, route, variant): what usage must agree with."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT coalesce(tenant, ''), route, coalesce(variant, served_by, ''), count(*), sum(prompt_tokens), "
            "sum(completion_tokens), sum(cost_usd) FROM traffic GROUP BY 1, 2, 3"
        ).fetchall()
    finally:
        conn.close()
    return {(t, r, v): (n, p or 0, c or 0, round(cost or 0, 9)) for t, r, v, n, p, c, cost in rows}


def by_team_route_variant(report: dict) -> dict:
    out = {}
    for row in report["rows"]:
        key = (row["team"] or "", row["route"], row["variant"] or "")
        n, p, c, cost = out.get(key, (0, 0, 0, 0.0))
        out[key] = (
            n + row["requests"],
            p + row["prompt_tokens"],
            c + row["completion_tokens"],
            round(cost + row["cost_usd"], 9),
        )
    return out


def old_row(path, day_offset: int, cost: float) -> None:
    """An exchange logged `day_offset` days ago, written straight into the log (a range needs past days)."""
    ts = time.time() + day_offset * 86400
    conn = sqlite3.connect(path, timeout=10)
    with conn:
        conn.execute(
            "INSERT INTO traffic (request_id, ts, route, variant, status, stream, prompt_tokens, completion_tokens, "
            "cost_usd, tenant, annotations) VALUES (?, ?, 'bot', 'up', 200, 0, 10, 5, ?, 'support', ?)",
            (f"old-{day_offset}", ts, cost, json.dumps({"usage": {"key": SUPPORT_KEY_NAME}})),
        )
    conn.close()


def test_usage_per_team_key_route_and_variant_agrees_with_the_traffic_log(
    fake_openai, fake_anthropic, make_gateway, tmp_path, capsys, monkeypatch
):
    config = gateway_config(fake_openai, tmp_path)
    config["backends"]["claude"] = backend_config("anthropic", fake_anthropic)
    config["routes"]["faq"] = {"baseline": "claude"}
    gw = make_gateway(config)
    sales_key, sales_id = new_key(gw.url, "sales", "ci")
    fake_anthropic.cache_read_tokens, fake_anthropic.cache_write_tokens = 6, 4
    support = chat(gw.url, SUPPORT_KEY, 6) + chat(gw.url, SUPPORT_KEY, 2, stream=True, user="s")
    sales = chat(gw.url, sales_key, 4, user="v")
    claude = anthropic.Anthropic(base_url=gw.url, api_key=SUPPORT_KEY, max_retries=0)
    for i in range(3):  # the Messages API on the same key: its cache reads and writes are counted as such
        claude.messages.create(
            model="faq",
            max_tokens=32,
            messages=[{"role": "user", "content": f"faq {i}: what does the refund policy of the shop say"}],
        )

    traffic = tmp_path / "gw-traffic.db"
    report = wait_until(
        lambda: (r := usage(gw.url))["total"]["requests"] == 15 and r, "the 15 exchanges counted from the log"
    )
    assert by_team_route_variant(report) == logged(traffic), "usage and the traffic log agree"
    assert report["from"] == report["to"] == today() and report["group_by"] == ["team", "key", "route", "variant"]
    rows = report["rows"]
    assert {r["team"] for r in rows} == {"support", "sales"} and {r["variant"] for r in rows} <= {
        "up",
        "cand",
        "claude",
    }
    assert {r["key"] for r in rows if r["team"] == "support"} == {SUPPORT_KEY_NAME}  # a config key: its hash's start
    assert {(r["key"], r["key_name"]) for r in rows if r["team"] == "sales"} == {(sales_id, "ci")}
    assert SUPPORT_KEY not in json.dumps(report) and sales_key not in json.dumps(report)
    tokens = sum(u.prompt_tokens + u.completion_tokens for u in support + sales)
    bot = [r for r in rows if r["route"] == "bot"]
    assert sum(r["prompt_tokens"] + r["completion_tokens"] for r in bot) == tokens  # what the SDK was told
    faq = [r for r in rows if r["route"] == "faq"]
    assert sum(r["requests"] for r in faq) == 3 and faq[0]["team"] == "support"
    assert sum(r["cache_read_tokens"] for r in faq) == 18 and sum(r["cache_write_tokens"] for r in faq) == 12
    assert report["total"]["cost_usd"] == pytest.approx(sum(v[3] for v in logged(traffic).values()), abs=1e-9)

    # a range: two past days written into the log, counted by the day of their exchange
    old_row(traffic, -1, 0.5)
    old_row(traffic, -3, 0.25)
    days = wait_until(
        lambda: (r := usage(gw.url, f"from={today(-3)}&to={today()}&group_by=day"))["total"]["requests"] == 17 and r,
        "the past days counted",
    )
    assert [(r["day"], r["requests"]) for r in days["rows"]] == [(today(-3), 1), (today(-1), 1), (today(), 15)]
    recent = usage(gw.url, f"from={today(-2)}&to={today()}&group_by=team,route")
    assert recent["total"]["requests"] == 16 and recent["total"]["cost_usd"] == pytest.approx(
        report["total"]["cost_usd"] + 0.5
    )
    assert usage(gw.url, f"date={today(-3)}&group_by=")["rows"] == [dict(zip(FIGURES, (1, 10, 5, 0, 0, 0.25)))]
    assert usage(gw.url, f"from={today(-30)}&to={today(-10)}")["rows"] == []

    # spend per team and route in /metrics
    with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as resp:
        exposition = resp.read().decode()
    spend = [line for line in exposition.splitlines() if line.startswith("llmgate_spend_usd_total{")]
    assert any('route="bot"' in line and 'team="support"' in line for line in spend), spend
    assert any('route="faq"' in line and 'team="support"' in line for line in spend), spend
    measured = sum(float(line.rsplit(" ", 1)[1]) for line in spend)
    assert measured == pytest.approx(report["total"]["cost_usd"], rel=1e-6)
    assert 'llmgate_team_tokens_total{kind="prompt",route="bot",team="sales"}' in exposition

    # the command line prints the same as a table
    monkeypatch.setenv("LLMGATE_ADMIN_TOKEN", ADMIN)
    assert cli_main(["usage", "--url", gw.url, "--from", today(-3), "--to", today(), "--group-by", "team,route"]) == 0
    out = capsys.readouterr().out
    assert f"usage {today(-3)} to {today()} (UTC days), every team" in out
    lines = out.splitlines()
    assert lines[1].split() == [
        "team",
        "route",
        "requests",
        "prompt",
        "completion",
        "cache",
        "read",
        "cache",
        "write",
        "USD",
    ]
    assert any(line.split()[:3] == ["sales", "bot", "4"] for line in lines)
    assert lines[-1].split()[:2] == ["total", "17"]
    assert cli_main(["usage", "--url", gw.url, "--date", "yesterday"]) == 1
    assert "400 'date' must be a UTC day written YYYY-MM-DD" in capsys.readouterr().err


def test_two_replicas_sharing_redis_report_the_same_totals(fake_openai, make_gateway, redis_url, tmp_path):
    replicas = []
    for name in ("one", "two"):
        config = gateway_config(fake_openai, tmp_path, name, flush_seconds=0.2)
        config["state"]["redis_url"] = redis_url
        replicas.append(make_gateway(config))
    one, two = replicas
    sales_key, _ = new_key(one.url, "sales", "ci")
    wait_until(lambda: call(two.url, "/v1/usage", sales_key)[0] == 200, "the new key known on both replicas")
    chat(one.url, SUPPORT_KEY, 3)
    chat(two.url, SUPPORT_KEY, 2, user="t")
    chat(two.url, sales_key, 4, user="v")
    chat(one.url, sales_key, 1, user="w")

    def both():
        reports = [usage(gw.url, "group_by=team,route") for gw in replicas]
        return reports if reports[0]["total"]["requests"] == reports[1]["total"]["requests"] == 10 else None

    first, second = wait_until(both, "each replica's counts on the other")
    assert first["rows"] == second["rows"]
    assert [(r["team"], r["requests"]) for r in first["rows"]] == [("sales", 5), ("support", 5)]
    logs = {**logged(tmp_path / "one-traffic.db")}
    for key, value in logged(tmp_path / "two-traffic.db").items():
        n, p, c, cost = logs.get(key, (0, 0, 0, 0.0))
        logs[key] = (n + value[0], p + value[1], c + value[2], cost + value[3])
    assert first["total"]["cost_usd"] == pytest.approx(sum(v[3] for v in logs.values()), abs=1e-9)
    assert first["total"]["prompt_tokens"] == sum(v[1] for v in logs.values())
    status = call(one.url, "/admin/status")[1]["usage"]
    assert status["store"] == "redis" and status["counted_from"] == "requests" and status["problem"] is None


def test_a_team_sees_only_its_own_usage(fake_openai, make_gateway, tmp_path):
    config = gateway_config(fake_openai, tmp_path)
    config["plugins"]["api_keys"]["teams"]["support"]["requests_per_minute"] = 100
    config["plugins"]["quotas"] = {"enabled": True}
    gw = make_gateway(config)
    sales_key, _ = new_key(gw.url, "sales", "ci")
    chat(gw.url, SUPPORT_KEY, 2)
    chat(gw.url, sales_key, 3, user="v")
    wait_until(lambda: usage(gw.url)["total"]["requests"] == 5, "both teams counted")

    mine = usage(gw.url, token=SUPPORT_KEY)
    assert mine["team"] == "support" and {r["team"] for r in mine["rows"]} == {"support"}
    assert mine["total"]["requests"] == 2
    # the quotas plugin's figures stay in a team's answer, as before the usage plugin
    assert mine["requests"]["limit"] == 100 and mine["requests"]["used"] == 2 and mine["tokens"]["day"] == today()
    assert usage(gw.url, "team=support", token=SUPPORT_KEY)["total"]["requests"] == 2
    theirs = usage(gw.url, token=sales_key)
    assert {r["team"] for r in theirs["rows"]} == {"sales"} and theirs["requests"]["limit"] is None

    status, refused = call(gw.url, "/v1/usage?team=sales", SUPPORT_KEY)
    assert status == 403 and refused["error"]["type"] == "permission_error" and refused["error"]["param"] == "team"
    assert "'support' may read its own usage only" in refused["error"]["message"]
    admin = usage(gw.url, "team=sales")
    assert admin["team"] == "sales" and admin["total"]["requests"] == 3
    assert {r["team"] for r in admin["rows"]} == {"sales"} and "tokens" not in admin and "requests" not in admin
    assert {r["team"] for r in usage(gw.url)["rows"]} == {"support", "sales"}
    for token in ("", "sk-lg-not-a-key-000000000000000000"):
        status, body = call(gw.url, "/v1/usage", token)
        assert status == 401 and body["error"]["type"] == "authentication_error"


BAD = [
    ("date=2026-13-01", "date", "is not a calendar date"),
    ("date=12/03/2026", "date", "must be a UTC day written YYYY-MM-DD"),
    ("from=2026-12-05&to=2026-12-01", "to", "is before 'from'"),
    ("from=2025-01-01&to=2026-12-31", "from", "ask for at most 366 at a time"),
    ("group_by=team,user", "group_by", "no grouping 'user'"),
    ("group_by=rout", "group_by", "did you mean 'route'?"),
    ("date=2026-12-01&from=2026-12-01", "date", "not both"),
    ("to=2026-12-01", "from", "a range needs its first day"),
    ("dat=2026-12-01", "dat", "did you mean 'date'?"),
]


@pytest.mark.parametrize("query,param,says", BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
def test_bad_parameters_are_400s_naming_them(fake_openai, make_gateway, tmp_path, query, param, says):
    gw = make_gateway(gateway_config(fake_openai, tmp_path))
    for token in (ADMIN, SUPPORT_KEY):
        status, body = call(gw.url, f"/v1/usage?{query}", token)
        assert status == 400 and body["error"]["type"] == "invalid_request_error", body
        assert body["error"]["param"] == param and says in body["error"]["message"], body


@pytest.mark.slow
@pytest.mark.parametrize("counted_from", ["traffic_log", "requests"])
def test_a_sigkill_keeps_usage_and_budget_spend(fake_openai, tmp_path, counted_from):
    config = gateway_config(fake_openai, tmp_path)
    config["plugins"]["budgets"] = {"enabled": True, "teams": {"support": {"daily_usd": 5, "monthly_usd": 50}}}
    if counted_from == "requests":
        config["plugins"]["traffic_log"]["enabled"] = False
    gw = GatewayProcess(config, tmp_path).start()
    try:
        chat(gw.url, SUPPORT_KEY, 5)
        before = wait_until(lambda: (r := usage(gw.url))["total"]["requests"] == 5 and r, "five exchanges counted")
        assert call(gw.url, "/admin/status")[1]["usage"]["counted_from"] == counted_from
        spent = call(gw.url, "/admin/budgets")[1]["budgets"]
        assert [b["spent_usd"] for b in spent] == pytest.approx([before["total"]["cost_usd"]] * 2, abs=1e-6)
        assert gw.stop(signal.SIGKILL) == -signal.SIGKILL
        gw.start()
        after = usage(gw.url)
        assert after["rows"] == before["rows"], "the same usage after the restart"
        budgets = call(gw.url, "/admin/budgets")[1]["budgets"]
        assert [(b["period"][0], b["spent_usd"]) for b in budgets] == [
            ("d", pytest.approx(before["total"]["cost_usd"], abs=1e-6)),
            ("m", pytest.approx(before["total"]["cost_usd"], abs=1e-6)),
        ], "the budgets start from what was spent, not from zero"
        chat(gw.url, SUPPORT_KEY, 1, user="again")
        wait_until(lambda: usage(gw.url)["total"]["requests"] == 6, "counting goes on")
    finally:
        gw.stop()


def test_the_quotas_plugin_keeps_v1_usage_without_the_usage_plugin(fake_openai, make_gateway, tmp_path):
    config = gateway_config(fake_openai, tmp_path)
    config["plugins"]["usage"] = {"enabled": False}
    config["plugins"]["quotas"] = {"enabled": True}
    gw = make_gateway(config)
    chat(gw.url, SUPPORT_KEY, 1)
    answer = usage(gw.url, token=SUPPORT_KEY)
    assert answer["object"] == "usage" and answer["team"] == "support" and "rows" not in answer
    assert call(gw.url, "/v1/usage", ADMIN)[0] == 401  # as before: the endpoint is the team's own


def test_what_the_log_held_before_usage_was_on_is_counted_at_its_first_start(fake_openai, make_gateway, tmp_path):
    config = gateway_config(fake_openai, tmp_path)
    config["plugins"]["usage"]["enabled"] = False
    before = make_gateway(config)
    chat(before.url, SUPPORT_KEY, 3)
    wait_until(lambda: sum(v[0] for v in logged(tmp_path / "gw-traffic.db").values()) == 3, "three exchanges logged")
    before.stop()
    config["plugins"]["usage"]["enabled"] = True
    gw = make_gateway(config)
    report = usage(gw.url, "group_by=team,key")  # counted at start-up, before the first query
    assert report["rows"] == [{"team": "support", "key": None, "key_name": None, **report["total"]}]
    assert report["total"]["requests"] == 3  # logged without the key's name: the plugin was not there to note it


def test_the_spend_series_team_label_is_bounded(monkeypatch):
    from plugins import metrics

    monkeypatch.setattr(metrics, "MAX_TEAMS", 2)
    figures = metrics.Metrics(metrics.Settings())
    teams = ["support", "sales", "support", "third", None, "fourth"]
    assert [figures._team_series(t, "bot").key for t in teams] == [
        ("support", "bot"),
        ("sales", "bot"),
        ("support", "bot"),
        ("other", "bot"),  # past MAX_TEAMS teams: one series for the rest, however many a plugin names
        ("", "bot"),  # no team (no api_keys): never counted against the bound
        ("other", "bot"),
    ]
