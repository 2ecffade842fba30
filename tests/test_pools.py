"""Pools: one variant served by several deployments, balanced by weight, in-flight load or latency,
with affinity by user, each member ejected for growing intervals while it fails and taken back when
it recovers. The chooser is driven directly for the large counts, the gateway for the rest."""

import functools
import json
import random
import sqlite3
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from gateway.backends import BuiltinBackends
from gateway.breaker import CLOSED, OPEN
from gateway.config import ConfigError, parse_config
from gateway.gateway import GATEWAY, build_backends
from gateway.pools import Pool
from plugins.traffic_log.plugin import read_records
from tests.support import wait_until

KINDS = BuiltinBackends({}).register_backend_kinds()
ADMIN = "admin-token-for-pool-tests"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def backend(url="http://127.0.0.1:9/v1") -> dict:
    return {"kind": "openai", "base_url": url, "model": "llama", "api_key": "none"}


def pool_of(weights: dict[str, float], seed: int = 25, clock=None, **settings) -> Pool:
    """A pool built as the gateway builds it (its members' backends are never called here)."""
    config = parse_config(
        {
            "backends": {name: backend() for name in weights},
            "pools": {"gpus": {"members": [{"backend": n, "weight": w} for n, w in weights.items()], **settings}},
            "routes": {"bot": {"baseline": "gpus"}},
        }
    )
    pool = build_backends(config, KINDS)["gpus"]
    pool.rng = random.Random(seed)
    if clock is not None:
        pool._clock = clock
        for member in pool.members:
            member._clock = member.breaker._clock = clock
    return pool


def picks(pool: Pool, n: int, key=None) -> Counter:
    return Counter(pool.pick(key).name for _ in range(n))


def test_3000_requests_spread_within_ten_percent_of_the_weights():
    counts = picks(pool_of({"a": 1, "b": 2, "c": 3}), 3000)
    expected = {"a": 500, "b": 1000, "c": 1500}
    for name, share in expected.items():
        assert abs(counts[name] - share) <= share * 0.10, (counts, expected)
    print(f"\nweighted 1:2:3, 3000 picks: {dict(sorted(counts.items()))} (expected {expected})")


def test_least_in_flight_goes_to_the_least_loaded_member_for_its_weight():
    pool = pool_of({"a": 1, "b": 2, "c": 1}, balance="least_in_flight")
    a, b, c = pool.members
    a.in_flight, b.in_flight, c.in_flight = 1, 1, 3  # per weight: 1, 0.5, 3
    assert picks(pool, 50) == {"b": 50}
    b.in_flight = 2  # a and b tie at 1 per weight: drawn by weight between them
    assert set(picks(pool, 200)) == {"a", "b"}
    a.in_flight = b.in_flight = c.in_flight = 0  # idle: by weight
    counts = picks(pool, 4000)
    assert abs(counts["b"] - 2000) < 200 and abs(counts["a"] - 1000) < 150


def test_a_member_ten_times_slower_gets_under_a_tenth_of_a_latency_aware_pools_picks():
    clock = Clock()
    pool = pool_of({"a": 1, "b": 1, "slow": 1}, balance="latency", clock=clock)
    for member, ms in zip(pool.members, (20, 22, 200), strict=True):
        member.observe(ms)
    counts = Counter()
    for _ in range(3000):
        chosen = pool.pick()
        counts[chosen.name] += 1
        chosen.observe({"slow": 200}.get(chosen.name, 21))
        clock.now += 0.005  # 200 requests a second
    assert counts["slow"] < 300, counts
    assert counts["a"] > 1000 and counts["b"] > 1000
    print(f"\nlatency-aware, one member 10x slower, 3000 picks: {dict(sorted(counts.items()))}")


def test_a_stale_latency_estimate_fades_so_a_once_slow_member_is_tried_again():
    clock = Clock()
    pool = pool_of({"a": 1, "b": 1}, balance="latency", clock=clock, latency_half_life=10)
    a, b = pool.members
    a.observe(20)
    b.observe(200)
    assert picks(pool, 20) == {"a": 20}
    clock.now += 40  # b's estimate is 200 / 16 = 12.5 ms, a's 1.25: still a
    assert b.expected_ms(clock.now) == pytest.approx(12.5)
    a.observe(20)  # a keeps being measured, b is not: b is tried again
    assert pool.pick().name == "b"


def test_a_member_never_measured_gets_one_request_at_a_time():
    pool = pool_of({"a": 1, "new": 1}, balance="latency")
    a, new = pool.members
    a.observe(20)
    assert pool.pick().name == "new"
    new.in_flight = 1  # its first answer has not come yet
    assert picks(pool, 30) == {"a": 30}


def test_affinity_keeps_each_user_on_one_member_and_an_ejection_moves_only_its_users():
    clock = Clock()
    pool = pool_of({"a": 1, "b": 1, "c": 2}, affinity="user", clock=clock, ejection={"failures": 1})
    users = [f"user:u{i}" for i in range(2000)]
    home = {u: pool.pick(u).name for u in users}
    assert all(pool.pick(u).name == home[u] for u in users[:200])  # sticky
    shares = Counter(home.values())
    assert abs(shares["c"] - 1000) < 100 and abs(shares["a"] - 500) < 75  # by weight
    # A request with no user of its own is balanced by weight.
    assert set(picks(pool, 300, key=None)) == {"a", "b", "c"}

    c = pool.member("c")
    assert c.breaker.allow()
    c.breaker.failed("503")
    moved = {u: pool.pick(u).name for u in users}
    assert all(moved[u] == home[u] for u in users if home[u] != "c")  # the others' users stay
    assert {moved[u] for u in users if home[u] == "c"} == {"a", "b"}
    clock.now += 31
    assert c.breaker.allow()
    c.breaker.succeeded()
    assert {u: pool.pick(u).name for u in users} == home  # its users come back


def test_ejections_grow_while_a_member_keeps_failing_and_are_forgiven_once_it_serves():
    clock = Clock()
    pool = pool_of({"a": 1, "b": 1}, clock=clock, ejection={"failures": 2, "open_seconds": 1, "max_open_seconds": 3})
    b = pool.member("b").breaker

    def fail():
        assert b.allow()
        b.failed("503")

    fail(), fail()
    assert b.state == OPEN and b.open_for == 1
    assert picks(pool, 20) == {"a": 20}  # ejected
    clock.now += 1
    fail()  # the probe fails: ejected again, for longer
    assert b.open_for == 2 and pool.pick().name == "a"
    clock.now += 2
    fail()
    assert b.open_for == 3  # capped
    clock.now += 3
    fail()
    assert b.open_for == 3
    clock.now += 3
    assert b.allow()
    b.succeeded()  # recovered: back in the pool
    assert b.state == CLOSED and set(picks(pool, 50)) == {"a", "b"}
    clock.now += 2.5  # two openings forgiven for two seconds served
    fail(), fail()
    assert b.open_for == 2


def test_a_pool_with_no_healthy_member_picks_none():
    pool = pool_of({"a": 1, "b": 1}, ejection={"failures": 1})
    for member in pool.members:
        assert member.breaker.allow()
        member.breaker.failed("503")
    assert pool.pick() is None


def test_a_pools_context_window_is_its_members_smallest():
    raw = {
        "backends": {"a": {**backend(), "context_window": 8000}, "b": {**backend(), "context_window": 4000}},
        "pools": {"gpus": {"members": ["a", "b"]}, "open": {"members": [{"backend": "a"}]}},
        "routes": {"bot": {"baseline": "gpus"}},
    }
    backends = build_backends(parse_config(raw), KINDS)
    assert backends["gpus"].settings.context_window == 4000 and backends["open"].settings.context_window == 8000


def test_a_reload_that_leaves_a_pool_alone_keeps_its_members_state():
    raw = {
        "backends": {"a": backend(), "b": backend()},
        "pools": {"gpus": {"members": ["a", "b"]}},
        "routes": {"bot": {"baseline": "gpus"}},
    }
    first = build_backends(parse_config(raw), KINDS)
    again = build_backends(parse_config(raw), KINDS, reuse=first)
    assert again["gpus"] is first["gpus"]
    raw["pools"]["gpus"]["balance"] = "latency"
    assert build_backends(parse_config(raw), KINDS, reuse=first)["gpus"] is not first["gpus"]


# --- through the gateway ------------------------------------------------------------------------


@pytest.fixture
def members(openai_fakes):
    return {name: openai_fakes() for name in ("a", "b", "c")}


def gateway_config(members, weights=None, spare=None, **pool) -> dict:
    weights = weights or {name: 1 for name in members}
    config = {
        "server": {"admin_token": ADMIN},
        "backends": {name: backend(fake.url + "/v1") for name, fake in members.items()},
        "pools": {"gpus": {"members": [{"backend": n, "weight": w} for n, w in weights.items()], **pool}},
        "routes": {"bot": {"baseline": "gpus"}},
    }
    if spare is not None:
        config["backends"]["spare"] = backend(spare.url + "/v1")
        config["routes"]["bot"]["fallback"] = ["spare"]
    return config


@functools.cache
def client(gw):
    """One client a gateway, its connections kept alive: a request costs the gateway's time, not a handshake's."""
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="app-key", max_retries=0)


def ask(gw, text="hi", **kw):
    return client(gw).chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": text}], **kw
    )


def the_pool(gw) -> Pool:
    return gw.app[GATEWAY].backends["gpus"]


def received(members) -> dict[str, int]:
    return {name: len(fake.requests) for name, fake in members.items()}


def test_requests_through_the_gateway_follow_the_weights_and_record_the_member(members, make_gateway, tmp_path):
    config = gateway_config(members, weights={"a": 1, "b": 2, "c": 3})
    config["prices"] = {"a": {"input": 1e6, "output": 0}, "gpus": {"input": 2e6, "output": 0}}  # $1 / $2 a token
    gw = make_gateway(config)
    the_pool(gw).rng.seed(7)
    for _ in range(300):
        raw = ask(gw)
        assert raw.headers["x-llmgate-variant"] == "gpus"
        assert raw.headers["x-llmgate-tried"].startswith("gpus/")
    counts = received(members)
    expected = {"a": 50, "b": 100, "c": 150}
    for name, share in expected.items():
        assert abs(counts[name] - share) <= share * 0.2, (counts, expected)
    print(f"\nweighted 1:2:3 through the gateway, 300 requests: {counts} (expected {expected})")

    rows = wait_until(lambda: found if len(found := list(read_records(tmp_path / "traffic.db"))) >= 300 else None)
    served = Counter(r["annotations"]["pool_member"] for r in rows)
    assert served == counts
    # Priced by the member's own name where it has a price, else by the pool's.
    assert {(r["annotations"]["pool_member"] == "a", r["cost_usd"] / r["prompt_tokens"]) for r in rows} == {
        (True, 1.0),
        (False, 2.0),
    }
    row = rows[-1]
    assert row["variant"] == row["served_by"] == "gpus"
    assert row["attempts"][0]["backend"] == "gpus" and row["attempts"][0]["member"] == row["annotations"]["pool_member"]


def test_a_failing_member_is_ejected_within_20_requests_and_taken_back_after_it_recovers(members, make_gateway):
    gw = make_gateway(gateway_config(members, ejection={"failures": 3, "open_seconds": 1, "max_open_seconds": 4}))
    pool = the_pool(gw)
    pool.rng.seed(3)
    members["c"].fail_next(*[503] * 10_000)  # c fails every call

    sent = 0
    while pool.member("c").breaker.state != OPEN:
        assert ask(gw).parse().choices[0].message.content == "echo: hi"  # retried on another member
        sent += 1
        assert sent <= 20, "c still takes traffic after 20 requests"
    before = len(members["c"].requests)
    for _ in range(30):  # well inside the first ejection (1 s)
        ask(gw)
    assert len(members["c"].requests) == before, "an ejected member got traffic"
    print(f"\nrequests until the failing member was ejected: {sent} (its failures: {before})")

    # It keeps failing its probes for 2.5 s: each ejection is longer than the last.
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        ask(gw)
        time.sleep(0.02)
    breaker = pool.member("c").breaker
    assert breaker.times_opened >= 2 and breaker.open_for > 1

    members["c"].failures.clear()  # recovered
    recovered, back_at = time.monotonic(), None
    calls = len(members["c"].requests)
    while time.monotonic() - recovered < 30:
        ask(gw)
        if len(members["c"].requests) > calls and breaker.state == CLOSED:
            back_at = time.monotonic()
            break
        time.sleep(0.02)
    assert back_at is not None, "the recovered member was not taken back within 30 s"
    print(f"recovered member taken back after {back_at - recovered:.2f} s (ejected for {breaker.open_for:g} s)")
    start = len(members["c"].requests)
    for _ in range(60):
        ask(gw)
    assert len(members["c"].requests) - start >= 10  # its share again


def test_a_pool_with_no_healthy_member_fails_over_along_the_chain(members, make_gateway, openai_fakes):
    spare = openai_fakes()
    gw = make_gateway(gateway_config(members, spare=spare, ejection={"failures": 1, "open_seconds": 60}))
    for fake in members.values():
        fake.fail_next(*[503] * 100)
    for _ in range(10):
        raw = ask(gw)
        if raw.headers["x-llmgate-tried"] == "gpus,spare":
            break
    assert raw.headers["x-llmgate-variant"] == "spare"
    assert raw.headers["x-llmgate-tried"] == "gpus,spare"  # passed over: every member is ejected
    assert sum(received(members).values()) == 3  # one failure each, then no more

    status = json.loads(urllib.request.urlopen(gw.url + "/readyz").read())
    assert "backend 'gpus/a' circuit open" in status["degraded"]["breakers"]
    request = urllib.request.Request(gw.url + "/admin/status", headers={"Authorization": f"Bearer {ADMIN}"})
    breakers = json.loads(urllib.request.urlopen(request).read())["breakers"]
    assert breakers["gpus/c"]["state"] == "open" and breakers["spare"]["state"] == "closed"


def test_a_member_ten_times_slower_gets_under_ten_percent_of_the_traffic(members, make_gateway):
    members["a"].delay = members["b"].delay = 0.02
    members["c"].delay = 0.2
    gw = make_gateway(gateway_config(members, balance="latency"))
    with ThreadPoolExecutor(8) as workers:
        list(workers.map(lambda _: ask(gw), range(240)))
    counts = received(members)
    assert counts["c"] < 24, counts
    latencies = {m.name: round(m.latency_ms or 0) for m in the_pool(gw).members}
    assert all(m.in_flight == 0 for m in the_pool(gw).members)
    print(f"\nlatency-aware through the gateway, 240 requests, 8 at a time: {counts} (EWMA ms {latencies})")


def test_a_stream_holds_its_member_until_it_ends(members, make_gateway):
    gw = make_gateway(gateway_config(members, balance="least_in_flight"))
    stream = client(gw).chat.completions.create(
        model="bot", messages=[{"role": "user", "content": "one two three"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "echo: one two three"
    wait_until(lambda: all(m.in_flight == 0 for m in the_pool(gw).members), "the stream's member to be released")


def test_rollout_and_shadow_see_the_pool_as_the_variant(members, make_gateway, openai_fakes, tmp_path):
    base = openai_fakes()
    config = gateway_config(members)
    config["backends"]["base"] = backend(base.url + "/v1")
    config["routes"]["bot"] = {"baseline": "base", "candidates": {"gpus": 100}, "shadow": ["gpus"]}
    config["routes"]["mirror"] = {"baseline": "base", "shadow": ["gpus"]}
    config["plugins"] = {"shadow": {"path": str(tmp_path / "shadow.db")}}
    gw = make_gateway(config)
    assert ask(gw).headers["x-llmgate-variant"] == "gpus"  # the candidate serves every user
    raw = client(gw).chat.completions.with_raw_response.create(
        model="mirror", messages=[{"role": "user", "content": "mirrored"}]
    )
    assert raw.headers["x-llmgate-variant"] == "base"
    wait_until(lambda: sum(received(members).values()) == 2, "the shadow call to reach a member")

    def comparisons():
        conn = sqlite3.connect(tmp_path / "shadow.db")
        try:
            return conn.execute(
                "SELECT route, primary_backend, shadow_backend, shadow_status FROM comparisons"
            ).fetchall()
        finally:
            conn.close()

    assert wait_until(comparisons, "the comparison") == [("mirror", "base", "gpus", 200)]


BAD_POOLS = [
    ({"gpus": {"members": []}}, "pools.gpus.members: a pool needs at least one member"),
    ({"gpus": {}}, "pools.gpus.members: a pool needs at least one member"),
    ({"gpus": {"members": [{"backend": "a", "weight": 0}]}}, "pools.gpus.members.0.weight: weight must be a positive"),
    ({"gpus": {"members": [{"backend": "a", "weight": "heavy"}]}}, "got 'heavy'"),
    ({"gpus": {"members": [{"backend": "a", "weight": -2}]}}, "weight must be a positive number, got -2"),
    ({"gpus": {"members": ["a", "a"]}}, "pools.gpus.members: 'a' listed more than once"),
    (
        {"gpus": {"members": ["aa"]}},
        "pools.gpus.members[0].backend: unknown backend 'aa' (did you mean 'a'? defined: a, b)",
    ),
    ({"a": {"members": ["b"]}}, "pools.a: 'a' is a backend's name too"),
    ({"gpus": {"members": ["a"]}, "more": {"members": ["gpus"]}}, "'gpus' is a pool: a member is a backend"),
    ({"gpus": {"members": ["a"], "balance": "random"}}, "pools.gpus.balance: Input should be 'weighted'"),
    (
        {"gpus": {"members": [{"backend": "a", "wieght": 2}]}},
        "pools.gpus.members.0.wieght: unknown key (did you mean 'weight'?",
    ),
]


@pytest.mark.parametrize(("pools", "problem"), BAD_POOLS)
def test_config_check_refuses_a_bad_pool_with_a_clear_error(pools, problem):
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {"backends": {"a": backend(), "b": backend()}, "pools": pools, "routes": {"bot": {"baseline": "b"}}}
        )
    assert any(p.startswith(problem) or problem in p for p in caught.value.problems), caught.value.problems


def test_a_route_may_name_a_pool_wherever_it_names_a_backend():
    raw = {
        "backends": {"a": backend(), "b": backend()},
        "pools": {"gpus": {"members": ["a", "b"]}},
        "routes": {
            "bot": {"baseline": "a", "candidates": {"gpus": 10}, "shadow": ["gpus"], "context_fallback": ["gpus"]}
        },
    }
    assert parse_config(raw).settings.pools["gpus"].members[1].weight == 1
    raw["routes"]["bot"]["fallback"] = ["gpu"]
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert caught.value.problems == [
        "routes.bot.fallback[0]: unknown backend 'gpu' (did you mean 'gpus'? defined: a, b, gpus)"
    ]
