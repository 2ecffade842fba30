"""Team quotas: requests per minute across replicas, tokens per day reserved then corrected, /v1/usage,
and Redis outages."""

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import redis

from plugins.api_keys.plugin import hash_key
from plugins.quotas import estimate_tokens
from tests.conftest import backend_config
from tests.support import RedisProcess, wait_until

TEAM_KEY = "sk-lg-quota-team-key-0123456789abcdef"
OTHER_KEY = "sk-lg-other-team-key-0123456789abcdef"


def quota_config(fake, tmp_path, state: dict, name: str = "gw", quotas: dict | None = None, **team) -> dict:
    return {
        "state": state,
        "backends": {"up": backend_config("openai", fake)},
        "routes": {"bot": {"baseline": "up"}},
        "plugins": {
            "api_keys": {
                "enabled": True,
                "teams": {"team": {"keys": [hash_key(TEAM_KEY)], **team}, "other": {"keys": [hash_key(OTHER_KEY)]}},
            },
            "quotas": {"enabled": True, **(quotas or {})},
            "traffic_log": {"path": str(tmp_path / f"traffic-{name}.db")},
        },
    }


def client(gw, key: str = TEAM_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def ask(gw, text: str = "hello", key: str = TEAM_KEY, **params):
    return client(gw, key).chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": text}], **params
    )


# For tests about counting, not outages: the default 250 ms, on a busy test machine, can pass while
# the first requests open their Redis connections, and the replica would count alone.
PATIENT = {"redis_timeout_ms": 5000}


def usage(gw, key: str = TEAM_KEY) -> dict:
    request = urllib.request.Request(gw.url + "/v1/usage", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_requests_per_minute_hold_across_two_replicas(fake_openai, make_gateway, tmp_path, redis_url):
    state = {"redis_url": redis_url}
    replicas = [
        make_gateway(quota_config(fake_openai, tmp_path, state, name=f"gw{i}", quotas=PATIENT, requests_per_minute=5))
        for i in range(2)
    ]

    clients = [client(gw) for gw in replicas]

    def one(i):
        try:
            return clients[i % 2].chat.completions.with_raw_response.create(
                model="bot", messages=[{"role": "user", "content": f"request {i}"}]
            )
        except openai.RateLimitError as err:
            return err

    with ThreadPoolExecutor(12) as pool:  # at once, half to each replica
        results = list(pool.map(one, range(12)))
    admitted = [r for r in results if not isinstance(r, openai.RateLimitError)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(admitted) == 5 and len(refused) == 7
    assert len(fake_openai.requests) == 5
    for err in refused:
        assert err.status_code == 429 and err.body["type"] == "rate_limit_error"
        assert err.body["code"] == "requests_per_minute_exceeded"
        assert 1 <= int(err.response.headers["Retry-After"]) <= 60
        assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert {r.headers["x-ratelimit-limit-requests"] for r in admitted} == {"5"}
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in admitted) == [0, 1, 2, 3, 4]
    # Both replicas read the same count, and another team is not held back by this one's.
    assert usage(replicas[0])["requests"]["used"] == usage(replicas[1])["requests"]["used"] == 5
    assert ask(replicas[1], key=OTHER_KEY).parse().choices[0].message.content == "echo: hello"


@pytest.mark.parametrize("engine", ["sqlite", "redis"])
def test_tokens_are_reserved_then_corrected_to_real_usage(engine, fake_openai, make_gateway, tmp_path, request):
    state = (
        {"redis_url": request.getfixturevalue("redis_url")}
        if engine == "redis"
        else {"sqlite_path": str(tmp_path / "state.db")}
    )
    gw = make_gateway(
        quota_config(fake_openai, tmp_path, state, quotas=PATIENT, requests_per_minute=100, tokens_per_day=10_000)
    )
    body = {"messages": [{"role": "user", "content": "[sleep 1] how many tokens does this take"}], "max_tokens": 50}
    estimate = estimate_tokens(body, 1024)
    assert estimate == 50 + 10  # 40 characters / 4

    answer = {}
    worker = threading.Thread(target=lambda: answer.update(r=ask(gw, body["messages"][0]["content"], max_tokens=50)))
    worker.start()
    # While the answer is on its way, the estimate is held against the team's budget.
    held = wait_until(lambda: (u := usage(gw))["tokens"]["used"] == estimate and u, "the estimate is reserved")
    assert held["engine"] == ("redis" if engine == "redis" else "local")
    assert held["requests"]["used"] == 1 and held["requests"]["limit"] == 100
    worker.join(30)
    real = answer["r"].parse().usage.total_tokens
    assert real != estimate
    assert answer["r"].headers["x-ratelimit-remaining-tokens"] == str(10_000 - estimate)
    # Once the answer is out, the reservation becomes what the provider reported.
    settled = wait_until(lambda: (u := usage(gw))["tokens"]["used"] == real and u, "corrected to real usage")
    now = time.time()
    assert settled["team"] == "team" and settled["tokens"]["limit"] == 10_000
    assert settled["tokens"]["day"] == time.strftime("%Y-%m-%d", time.gmtime(now))
    assert now < settled["tokens"]["resets_at"] <= now + 86_400
    assert 0 < settled["requests"]["resets_in_seconds"] <= 60
    # A failed exchange costs no tokens.
    with pytest.raises(openai.InternalServerError):
        ask(gw, "[status 500]", max_tokens=50)
    wait_until(lambda: usage(gw)["requests"]["used"] == 2, "the failed request counted as a request")
    wait_until(lambda: usage(gw)["tokens"]["used"] == real, "the failed request's reservation returned")


def test_a_token_budget_refuses_what_would_pass_it(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(
        quota_config(fake_openai, tmp_path, {"sqlite_path": str(tmp_path / "state.db")}, tokens_per_day=100)
    )
    with pytest.raises(openai.BadRequestError) as too_big:  # could never fit: not worth retrying
        ask(gw, max_tokens=500)
    assert too_big.value.body["code"] == "request_exceeds_daily_tokens"

    first = {}
    worker = threading.Thread(target=lambda: first.update(r=ask(gw, "[sleep 1] first", max_tokens=60)))
    worker.start()
    wait_until(lambda: usage(gw)["tokens"]["used"] == 64, "the first request's estimate is reserved")
    with pytest.raises(openai.RateLimitError) as refused:  # 15 / 4 + 60 = 64 reserved, + 6 / 4 + 60 > 100
        ask(gw, "second", max_tokens=60)
    assert refused.value.body["code"] == "tokens_per_day_exceeded"
    assert 1 <= int(refused.value.response.headers["Retry-After"]) <= 86_400
    worker.join(30)
    real = first["r"].parse().usage.total_tokens
    wait_until(lambda: usage(gw)["tokens"]["used"] == real, "the first request corrected")
    assert ask(gw, "second", max_tokens=60).parse().choices[0].message.content == "echo: second"
    assert len(fake_openai.requests) == 2


def test_usage_needs_a_known_key(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(quota_config(fake_openai, tmp_path, {"sqlite_path": str(tmp_path / "state.db")}))
    with pytest.raises(urllib.error.HTTPError) as refused:
        usage(gw, key="sk-lg-unknown-key-00000000000000")
    assert refused.value.code == 401
    assert json.loads(refused.value.read())["error"]["type"] == "authentication_error"
    mine = usage(gw, key=OTHER_KEY)
    assert mine["team"] == "other" and mine["requests"]["limit"] is None and mine["tokens"]["used"] == 0


def test_a_redis_outage_falls_back_to_local_limits_then_shares_again(fake_openai, make_gateway, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="llmgate.quotas")
    server = RedisProcess(tmp_path).start()
    try:
        gw = make_gateway(
            quota_config(
                fake_openai,
                tmp_path,
                {"redis_url": server.url},
                quotas={"replicas": 2, "probe_interval": 0.2},
                requests_per_minute=4,
            )
        )
        direct = redis.Redis(port=server.port, decode_responses=True)
        assert ask(gw).parse().choices[0].message.content == "echo: hello"
        assert direct.zcard("llmgate:quota:requests:team") == 1  # counted in Redis

        server.stop()
        # Each replica now allows its share, 4 / 2 = 2 requests, counted by itself.
        outage = [ask(gw, "during the outage"), ask(gw, "during the outage")]
        with pytest.raises(openai.RateLimitError) as refused:
            ask(gw, "one too many")
        assert refused.value.response.headers["x-ratelimit-limit-requests"] == "2"
        during = usage(gw)
        assert during["engine"] == "local" and during["degraded"] is True
        assert during["requests"] == {**during["requests"], "used": 2, "limit": 2}
        with urllib.request.urlopen(gw.url + "/readyz", timeout=10) as ready:  # degraded, still serving
            assert "each replica enforces 1/2" in json.loads(ready.read())["degraded"]["quotas"]
        lost = [r for r in caplog.records if "redis unreachable" in r.getMessage()]
        assert len(lost) == 1  # said once, not once per request
        assert ask(gw, "still refused", key=OTHER_KEY).status_code == 200  # other teams keep their own counts

        outage_tokens = sum(r.parse().usage.total_tokens for r in outage)
        wait_until(lambda: usage(gw)["tokens"]["used"] == outage_tokens, "outage reservations corrected locally")
        server.start()  # an empty Redis on the same port
        back = wait_until(lambda: (u := usage(gw))["engine"] == "redis" and u, "counting is shared again")
        assert back["degraded"] is False
        assert any("redis answers again" in r.getMessage() for r in caplog.records)
        # The tokens used during the outage were added to the shared count.
        assert int(direct.get(f"llmgate:quota:tokens:team:{back['tokens']['day']}")) == outage_tokens
        assert ask(gw, "after the outage").status_code == 200
        assert direct.zcard("llmgate:quota:requests:team") == 1
    finally:
        server.stop()


async def test_the_redis_script_admits_exactly_the_limit_under_concurrency(redis_url):
    """Many reservations at once from two connections (two replicas' clients): check-and-reserve is atomic."""
    import asyncio

    import redis.asyncio as aioredis

    from plugins.quotas.counters import Limits, RedisCounters

    clients = [aioredis.Redis.from_url(redis_url, decode_responses=True) for _ in range(2)]
    try:
        counters = [RedisCounters(c) for c in clients]
        limits = Limits(requests_per_minute=20, tokens_per_day=None)
        decisions = await asyncio.gather(
            *[counters[i % 2].reserve("t", limits, 7, f"m{i}", time.time()) for i in range(60)]
        )
        assert sum(d.admitted for d in decisions) == 20
        assert {d.refused_by for d in decisions if not d.admitted} == {"requests"}
        assert (await counters[0].usage("t", time.time())).tokens == 20 * 7
    finally:
        for c in clients:
            await c.aclose()


def test_local_counters_slide_the_minute_and_start_each_day_again():
    from plugins.quotas.counters import DAY_SECONDS, Limits, LocalCounters

    counters = LocalCounters()
    limits = Limits(requests_per_minute=2, tokens_per_day=100)
    start = 10 * DAY_SECONDS + 1000.0
    assert counters.reserve("t", limits, 10, "a", start).admitted
    assert counters.reserve("t", limits, 10, "b", start + 30).admitted
    full = counters.reserve("t", limits, 10, "c", start + 59)
    assert not full.admitted and full.refused_by == "requests" and full.requests_reset == pytest.approx(1.0)
    assert counters.reserve("t", limits, 10, "d", start + 60.5).admitted  # the first left the window
    counters.adjust("t", full.day, 70 - 30)
    over = counters.reserve("t", limits, 31, "e", start + 200)
    assert not over.admitted and over.refused_by == "tokens" and over.tokens == 70
    tomorrow = counters.reserve("t", limits, 31, "f", 11 * DAY_SECONDS + 1)
    assert tomorrow.admitted and tomorrow.tokens == 31
