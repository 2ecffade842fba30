"""USD budgets on two replicas sharing a real redis-server, with the official SDK: a team with a small daily
budget is refused once it would pass it, concurrent requests do not overshoot it beyond what their
estimates missed, alerts fire once each, and the gateway's cost breaker opens and an operator closes it."""

import json
import sqlite3
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from gateway.cli import main as cli_main
from plugins.api_keys.plugin import hash_key
from tests.conftest import backend_config
from tests.support import wait_until

ADMIN = "admin-token-for-budget-tests-0123"
KEY = "sk-lg-budget-team-key-0123456789abcdef"
PRICE = {"input": 100.0, "output": 100.0}  # $0.0001 a token: a short answer costs about $0.0007


def replica(make_gateway, fake, redis_url, tmp_path, name, **budgets):
    return make_gateway(
        {
            "server": {"admin_token": ADMIN},
            "state": {"redis_url": redis_url, "sqlite_path": str(tmp_path / f"{name}.db")},
            "backends": {"up": backend_config("openai", fake)},
            "routes": {"bot": {"baseline": "up"}},
            "prices": {"gpt-test": PRICE},
            "plugins": {
                "api_keys": {"enabled": True, "teams": {"support": {"keys": [hash_key(KEY)]}}},
                "budgets": {"enabled": True, **budgets},
                "traffic_log": {"path": str(tmp_path / f"{name}-traffic.db"), "batch_wait_ms": 0},
            },
        }
    )


def ask(gw, i):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
    try:
        client.chat.completions.create(
            model="bot", max_tokens=8, messages=[{"role": "user", "content": f"budget question {i}"}]
        )
        return 200, None
    except openai.RateLimitError as err:
        return 429, err.body


def admin(gw, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        gw.url + path,
        data=data,
        method="POST" if data else "GET",
        headers={"Authorization": f"Bearer {ADMIN}", **({"Content-Type": "application/json"} if data else {})},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def spent(tmp_path) -> float:
    total = 0.0
    for name in ("one", "two"):
        conn = sqlite3.connect(tmp_path / f"{name}-traffic.db")
        total += conn.execute("SELECT coalesce(sum(cost_usd), 0) FROM traffic WHERE status = 200").fetchone()[0]
        conn.close()
    return total


def test_a_team_is_refused_at_its_daily_budget_across_replicas_and_alerts_fire_once(
    fake_openai, make_gateway, redis_url, tmp_path
):
    budgets = {"teams": {"support": {"daily_usd": 0.01, "forecast_daily_usd": 0.005}}}
    one = replica(make_gateway, fake_openai, redis_url, tmp_path, "one", **budgets)
    two = replica(make_gateway, fake_openai, redis_url, tmp_path, "two", **budgets)
    with ThreadPoolExecutor(16) as pool:  # 40 requests at once, half on each replica
        results = list(pool.map(lambda i: ask(one if i % 2 else two, i), range(40)))
    admitted = sum(1 for status, _ in results if status == 200)
    refusals = [body for status, body in results if status == 429]
    assert refusals and admitted >= 5, (admitted, len(refusals))
    assert refusals[0]["code"] == "budget_exceeded" and "team 'support' has spent $" in refusals[0]["message"]
    assert "of its $0.01 daily budget" in refusals[0]["message"]
    total = wait_until(lambda: (t := spent(tmp_path)) and t, "the answered requests' costs logged")
    assert total <= 0.01 + 1e-9, total  # every estimate covered its request: no overshoot at all
    print(f"admitted {admitted} of 40 concurrent requests; spent ${total:.4f} of the $0.01 budget")

    def alerts():
        events = admin(one, "/admin/events?kind=budget_alert&limit=20")["events"]
        return events if len(events) >= 3 else None

    fired = wait_until(alerts, "three alerts (80%, 110%, 120% of the $0.005 forecast)")
    assert sorted(e["share"] for e in fired) == [0.8, 1.1, 1.2] and all(e["scope"] == "team:support" for e in fired)
    for i in range(4):  # more traffic (refused) sends no alert again
        ask(two, 100 + i)
    assert len(admin(one, "/admin/events?kind=budget_alert&limit=20")["events"]) == 3
    status = admin(two, "/admin/budgets")["budgets"]
    assert status[0]["scope"] == "team:support" and status[0]["spent_usd"] == pytest.approx(total, abs=1e-6)


def test_the_cost_breaker_opens_at_the_gateways_cap_and_an_operator_closes_it(
    fake_openai, make_gateway, redis_url, tmp_path, capsys, monkeypatch
):
    gw = replica(make_gateway, fake_openai, redis_url, tmp_path, "one", gateway_daily_usd=0.003)
    results = [ask(gw, i) for i in range(8)]
    refused = [body for status, body in results if status == 429]
    assert refused and refused[0]["code"] == "cost_breaker_open"
    assert "the gateway's daily cost cap of $0.003 is spent" in refused[0]["message"]
    monkeypatch.setenv("LLMGATE_ADMIN_TOKEN", ADMIN)
    assert cli_main(["budgets", "reset", "gateway", "--reason", "approved by finance", "--url", gw.url]) == 0
    assert "gateway d:" in capsys.readouterr().out
    assert ask(gw, 99)[0] == 200  # closed: it serves again
    assert cli_main(["budgets", "status", "--url", gw.url]) == 0
    assert "gateway" in capsys.readouterr().out


def test_budget_settings_that_do_not_add_up_are_refused(fake_openai, tmp_path):
    from gateway.config import ConfigError, parse_config
    from gateway.gateway import Gateway

    cfg = {
        "backends": {"up": backend_config("openai", fake_openai)},
        "routes": {"bot": {"baseline": "up"}},
        "plugins": {"budgets": {"enabled": True, "teams": {"support": {"forecast_daily_usd": 5}}}},
    }
    with pytest.raises(ConfigError, match="forecast_daily_usd needs daily_usd"):
        Gateway(parse_config(cfg))
    cfg["plugins"]["budgets"] = {"enabled": True, "alerts": [80]}
    with pytest.raises(ConfigError, match="alerts are shares"):
        Gateway(parse_config(cfg))


def test_a_spent_budget_falls_back_to_the_cheaper_route_then_refuses(fake_openai, make_gateway, tmp_path):
    mini = {**backend_config("openai", fake_openai), "model": "gpt-mini"}
    gw = make_gateway(
        {
            "backends": {"up": backend_config("openai", fake_openai), "mini": mini},
            "routes": {"bot": {"baseline": "up"}, "bot-mini": {"baseline": "mini"}},
            "prices": {"gpt-test": PRICE, "gpt-mini": {"input": 10.0, "output": 10.0}},
            "plugins": {
                "api_keys": {"enabled": True, "teams": {"support": {"keys": [hash_key(KEY)]}}},
                "budgets": {
                    "enabled": True,
                    "teams": {"support": {"daily_usd": 0.01}},
                    "fallback_routes": {"bot": "bot-mini"},
                },
            },
        }
    )
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
    served = []
    for i in range(60):
        try:
            answer = client.chat.completions.with_raw_response.create(
                model="bot", max_tokens=8, messages=[{"role": "user", "content": f"budget question {i}"}]
            )
        except openai.RateLimitError as err:
            served.append(("refused", err.body["code"]))
            break
        served.append((answer.parse().model, answer.headers.get("x-llmgate-budget-fallback")))
    models = [m for m, _ in served]
    first_fallback = models.index("gpt-mini")
    assert first_fallback > 3 and set(models[:first_fallback]) == {"gpt-test"}  # the dear route while it fits
    assert served[first_fallback][1] == "bot; team:support day budget spent"
    # then only the cheaper one: what was left, less than one dear request's worst case, buys several
    assert set(models[first_fallback:-1]) == {"gpt-mini"} and len(models) - 1 - first_fallback > 3
    assert served[-1] == ("refused", "budget_exceeded")  # until even that one would pass the budget


def test_a_fallback_route_must_exist_and_be_cheaper(fake_openai):
    from gateway.config import ConfigError, parse_config
    from gateway.gateway import Gateway

    cfg = {
        "backends": {"up": backend_config("openai", fake_openai)},
        "routes": {"bot": {"baseline": "up"}, "same": {"baseline": "up"}},
        "prices": {"gpt-test": PRICE},
        "plugins": {"budgets": {"enabled": True, "fallback_routes": {"bot": "botmini"}}},
    }
    with pytest.raises(ConfigError, match=r"fallback_routes.bot: 'botmini' is not a route \(routes: bot, same\)"):
        Gateway(parse_config(cfg))
    cfg["plugins"]["budgets"]["fallback_routes"] = {"bot": "same"}
    with pytest.raises(ConfigError, match="'same' is not cheaper than 'bot'"):
        Gateway(parse_config(cfg))
