"""Auto-rollback and staged schedules: window maths, the rules against noise, three replicas on a real Redis.

Every wait is for a condition with a generous deadline; no test asserts how long something took.
"""

import asyncio
import itertools
import json
import random
import re
import threading
import time
import urllib.error
import urllib.request

import pytest
import redis as redis_sync
from aiohttp import web

from gateway.allocation import bucket_of
from gateway.gateway import GATEWAY
from gateway.state import open_state_store
from plugins.auto_rollback.analysis import FAILED, INCONCLUSIVE, SUCCESSFUL, Policy, analyse
from plugins.auto_rollback.windows import (
    Figures,
    Windows,
    count_above,
    latency_bucket,
    mean_below_p,
    quantile,
    rate_above_p,
    two_proportion_p,
)
from tests.conftest import UPSTREAM_KEY
from tests.fakes.openai_api import FakeOpenAI
from tests.support import ServerThread, wait_until

TOKEN = "admin-token-for-tests"


# --- fakes and helpers --------------------------------------------------------------------------


class FlakyOpenAI(FakeOpenAI):
    """Answers 500 to a fixed share of requests (3 of every 10 by default), in a fixed pattern."""

    def __init__(self, failing=(1, 4, 7), period=10):
        super().__init__(api_key=UPSTREAM_KEY)
        self.failing, self.period, self.count = set(failing), period, 0

    def received(self, request, record):
        scripted = super().received(request, record)
        if scripted is not None:
            return scripted
        self.count += 1
        return self._error(500, "injected failure") if self.count % self.period in self.failing else None


class NoisyOpenAI(FakeOpenAI):
    """Healthy, with a random delay of 2 to 50 ms before each answer."""

    def __init__(self, seed):
        super().__init__(api_key=UPSTREAM_KEY)
        self.random = random.Random(seed)

    async def chat(self, request):
        await asyncio.sleep(self.random.uniform(0.002, 0.05))
        return await super().chat(request)


@pytest.fixture
def upstreams():
    """Start fakes as (baseline, candidate) servers; stopped at the end of the test."""
    started = []

    def start(baseline, candidate):
        for fake in (baseline, candidate):
            server = ServerThread(fake.app).start()
            fake.url = server.url
            started.append(server)
        return baseline, candidate

    yield start
    for server in started:
        server.stop()


class WebhookReceiver:
    def __init__(self):
        self.received = []

    def app(self):
        async def hook(request):
            self.received.append(await request.json())
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/hook", hook)
        return app


def config(baseline, candidate, percent=30.0, redis_url=None, webhook=None, candidate_breaker=None, **auto_rollback):
    def backend(fake, model, breaker=None):
        return {
            "kind": "openai",
            "base_url": fake.url + "/v1",
            "model": model,
            "api_key": UPSTREAM_KEY,
            **({"breaker": breaker} if breaker else {}),
        }

    settings = {
        "window_seconds": 30,
        "interval_seconds": 0.1,
        "flush_seconds": 0.05,
        "min_samples": 20,
        "failure_limit": 2,
        **auto_rollback,
    }
    cfg = {
        "server": {"admin_token": TOKEN},
        "backends": {"base": backend(baseline, "m-base"), "cand": backend(candidate, "m-cand", candidate_breaker)},
        "routes": {"bot": {"baseline": "base", "candidates": {"cand": percent}}},
        "plugins": {"auto_rollback": settings, "rollout": {"webhooks": [webhook] if webhook else []}},
    }
    if redis_url:
        cfg["state"] = {"redis_url": redis_url}
    return cfg


def ask(gw, user):
    body = json.dumps({"model": "bot", "messages": [{"role": "user", "content": "hi"}], "user": user}).encode()
    request = urllib.request.Request(
        gw.url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.headers.get("x-llmgate-variant")
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("x-llmgate-variant")


def admin(gw, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        gw.url + path,
        data=data,
        method="GET" if body is None else "POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def status(gw):
    return admin(gw, "/admin/status")[1]


def events(gw, **match):
    query = "&".join(f"{k}={v}" for k, v in {"limit": 1000, **match}.items())
    return admin(gw, "/admin/events?" + query)[1]["events"]


def plugin(gw, name="auto_rollback"):
    return gw.app[GATEWAY].pm.get_plugin(name)


def user_for(gw, variant, route="bot"):
    """A user the gateway sends to `variant` now (None: the baseline); None when no user is."""
    allocation = plugin(gw, "rollout").routes[route].allocation
    for _ in range(2000):
        user = f"u{random.getrandbits(40)}"
        if allocation.variant_for(bucket_of(route, f"user:{user}")) == variant:
            return user
    return None


class Traffic:
    """Requests from background threads until the block ends; `pick()` gives each one's (gateway, user)."""

    def __init__(self, pick, workers=4):
        self.pick, self.workers = pick, workers
        self.sent, self.statuses = 0, []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _run(self):
        while not self._stop.is_set():
            gw, user = self.pick()
            if user is None:  # no such user now (no baseline users at 100%): keep the load as it was
                time.sleep(0.005)
                continue
            self.statuses.append(ask(gw, user)[0])
            self.sent += 1

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(15)


def both_variants(gw):
    """Alternate users on the candidate and on the baseline, so both get samples whatever the percent."""
    turn = itertools.cycle(["cand", None])
    return lambda: (gw, user_for(gw, next(turn)))


# --- window maths ---------------------------------------------------------------------------------


def test_p95_from_a_histogram_is_within_a_bucket_of_the_exact_one():
    rng = random.Random(7)
    samples = [rng.lognormvariate(5, 0.6) for _ in range(5000)]
    histogram = {}
    for ms in samples:
        histogram[latency_bucket(ms)] = histogram.get(latency_bucket(ms), 0) + 1
    exact = sorted(samples)[int(0.95 * len(samples))]
    assert abs(quantile(histogram, 0.95) - exact) / exact < 0.1
    assert abs(count_above(histogram, exact) - 0.05 * len(samples)) < 0.01 * len(samples)
    assert quantile({}, 0.95) is None


def test_p95_merged_across_replicas_equals_the_p95_of_all_their_traffic():
    rng = random.Random(3)
    fast, slow = [rng.uniform(5, 50) for _ in range(960)], [rng.uniform(100, 400) for _ in range(40)]
    replicas = [Windows(), Windows()]
    for windows, samples in zip(replicas, (fast, slow)):
        for ms in samples:
            windows.record_attempt("bot", "cand", 200, ms, now=1000.0)
    one = Windows()
    for ms in fast + slow:
        one.record_attempt("bot", "cand", 200, ms, now=1000.0)
    merged = Figures.merged(w._buckets[("bot", "cand")][1000] for w in replicas)
    whole = Figures.merged(one._buckets[("bot", "cand")].values())
    assert merged.latency == whole.latency and merged.latency_n == 1000
    exact = sorted(fast + slow)[949]
    assert abs(merged.p95_ms - exact) / exact < 0.1
    mean_of_p95s = (
        quantile(Figures.merged([replicas[0]._buckets[("bot", "cand")][1000]]).latency, 0.95)
        + quantile(Figures.merged([replicas[1]._buckets[("bot", "cand")][1000]]).latency, 0.95)
    ) / 2
    assert abs(mean_of_p95s - exact) / exact > 0.5, "averaging per-replica p95s would be far off"


async def test_counts_errors_cost_and_scores_per_second():
    windows = Windows()
    for status in (200, 200, 400, 408, 429, 500, 503, 504):
        windows.record_attempt("bot", "cand", status, 10.0, now=100.2)
    windows.record_cost("bot", "cand", 0.002, now=100.5)
    windows.record_cost("bot", "cand", 0.004, now=101.0)
    windows.record_score("bot", "cand", "judge_win_rate", 1.0, now=101.0)
    windows.record_score("bot", "cand", "judge_win_rate", 0.0, now=101.0)
    windows.record_attempt("bot", "cand", 500, 10.0, now=50.0)  # outside the span read below
    figures = await windows.read("bot", "cand", 100.0, 101.9)
    assert (figures.requests, figures.errors) == (8, 5), "5xx, 429 and 408 are the backend's; a 400 is not"
    assert figures.error_rate == 5 / 8 and figures.latency_n == 2, "only answered calls are timed"
    assert figures.cost_per_request == pytest.approx(0.003)
    assert figures.score("judge_win_rate") == (0.5, 0.5, 2)
    assert (await windows.read("bot", "cand", 101.5, 101.9)).cost_n == 1
    windows.retention_seconds = 10
    windows.prune(now=105.0)
    assert (await windows.read("bot", "cand", 0, 200)).requests == 8


def test_significance_tests():
    assert two_proportion_p(30, 100, 0, 100) < 1e-6
    assert two_proportion_p(2, 100, 0, 100) > 0.05, "two stray errors are not evidence"
    assert two_proportion_p(5, 100, 5, 100) == pytest.approx(0.5)
    assert two_proportion_p(0, 100, 0, 100) == 1.0 and two_proportion_p(1, 0, 0, 10) == 1.0
    assert rate_above_p(30, 100, 0.01) < 1e-6 and rate_above_p(1, 100, 0.01) > 0.4
    assert rate_above_p(0, 100, 0.0) == 1.0 and rate_above_p(1, 100, 0.0) == 0.0
    assert mean_below_p(0.1, 0.05, 30, 0.4) < 1e-6 and mean_below_p(0.39, 0.5, 30, 0.4) > 0.4
    assert mean_below_p(0.2, 0.0, 30, 0.4) == 0.0 and mean_below_p(0.5, 0.0, 30, 0.4) == 1.0


def figures(requests, errors, latencies=(), cost=None, scores=None):
    f = Figures(requests=requests, errors=errors)
    for ms in latencies:
        f.latency[latency_bucket(ms)] = f.latency.get(latency_bucket(ms), 0) + 1
    if cost is not None:
        f.cost_sum, f.cost_n = cost * requests, requests
    for name, values in (scores or {}).items():
        f.scores[name] = [sum(values), sum(v * v for v in values), len(values)]
    return f


def test_analysis_outcomes():
    rng = random.Random(11)
    policy = Policy(min_samples=50)
    noisy = lambda n: [rng.uniform(2, 50) for _ in range(n)]  # noqa: E731
    healthy = analyse(figures(400, 2, noisy(398)), figures(400, 0, noisy(400)), policy)
    assert healthy.outcome == SUCCESSFUL, healthy.reason()
    failing = analyse(figures(200, 60, noisy(140)), figures(400, 1, noisy(399)), policy)
    assert failing.outcome == FAILED and [c.rule for c in failing.failed] == ["error_rate"]
    assert failing.figures()["candidate"]["error_rate"] == 0.3
    slow = analyse(figures(200, 0, [ms * 2.5 for ms in noisy(200)]), figures(200, 0, noisy(200)), policy)
    assert [c.rule for c in slow.failed] == ["p95_latency"]
    costly = analyse(figures(100, 0, noisy(100), cost=0.013), figures(100, 0, noisy(100), cost=0.01), policy)
    assert [c.rule for c in costly.failed] == ["cost_per_request"]
    judged = analyse(figures(0, 0, scores={"judge_win_rate": [0.1, 0.2] * 30}), figures(0, 0), policy)
    assert judged.outcome == FAILED and judged.failed[0].rule == "score:judge_win_rate"
    fine = analyse(figures(0, 0, scores={"judge_win_rate": [0.4, 0.6] * 30}), figures(0, 0), policy)
    assert fine.outcome == INCONCLUSIVE


def test_missing_data_is_inconclusive_and_never_fails():
    policy = Policy(min_samples=50)
    assert analyse(Figures(), Figures(), policy).outcome == INCONCLUSIVE
    few = analyse(figures(10, 10, []), figures(500, 0, [20] * 500), policy)
    assert few.outcome == INCONCLUSIVE and not few.failed
    no_baseline = analyse(figures(100, 0, [20] * 100), Figures(), policy)
    assert no_baseline.outcome == SUCCESSFUL
    assert {c.rule: c.failed for c in no_baseline.checks}["p95_latency"] is None
    alone_failing = analyse(figures(100, 30, [20] * 70), Figures(), policy)
    assert alone_failing.outcome == FAILED, "with no baseline the absolute limit still applies"


# --- the lease ------------------------------------------------------------------------------------


async def test_a_lease_has_one_holder_until_it_lapses(state_settings):
    first, second = open_state_store(state_settings), open_state_store(state_settings)
    await first.open()
    await second.open()
    try:
        assert await first.acquire_lease("judge", "a", 0.3)
        assert not await second.acquire_lease("judge", "b", 0.3)
        assert await first.acquire_lease("judge", "a", 0.3), "the holder renews"
        assert await second.acquire_lease("other", "b", 0.3), "leases are by name"
        await asyncio.sleep(0.4)
        assert await second.acquire_lease("judge", "b", 5)
        assert not await first.acquire_lease("judge", "a", 5), "a lapsed holder does not take it back"
    finally:
        await first.close()
        await second.close()


def test_one_replica_leads_and_another_takes_over_when_it_stops(upstreams, make_gateway, redis_url):
    baseline, candidate = upstreams(FakeOpenAI(api_key=UPSTREAM_KEY), FakeOpenAI(api_key=UPSTREAM_KEY))
    gws = [make_gateway(config(baseline, candidate, redis_url=redis_url, interval_seconds=0.2)) for _ in range(3)]
    holder = redis_sync.Redis.from_url(redis_url, decode_responses=True)

    def sole_leader(replicas):
        leaders = [gw for gw in replicas if status(gw)["auto_rollback"]["leader"]]
        return leaders[0] if len(leaders) == 1 else None

    leader = wait_until(lambda: sole_leader(gws), what="exactly one leader")
    assert holder.get("llmgate:lease:auto_rollback") == plugin(leader).holder
    leader.stop()
    rest = [gw for gw in gws if gw is not leader]
    successor = wait_until(lambda: sole_leader(rest), what="another replica taking over")
    wait_until(
        lambda: holder.get("llmgate:lease:auto_rollback") == plugin(successor).holder,
        what="the lease naming the new leader",
    )


# --- windows across replicas ----------------------------------------------------------------------


async def test_replicas_flush_their_counts_to_redis_and_any_reads_them_all(redis_url):
    import redis.asyncio as aioredis

    clients = [aioredis.Redis.from_url(redis_url, decode_responses=True) for _ in range(3)]
    try:
        a, b, reader = (Windows(redis=c) for c in clients)
        now = time.time()
        for i in range(10):
            a.record_attempt("bot", "cand", 500 if i < 3 else 200, 20.0, now=now)
            b.record_attempt("bot", "cand", 200, 200.0, now=now)
        b.record_score("bot", "cand", "judge_win_rate", 0.25, now=now)
        assert (await reader.read("bot", "cand", now - 1, now + 1)).requests == 0, "nothing is sent before a flush"
        await a.flush()
        await b.flush()
        merged = await reader.read("bot", "cand", now - 1, now + 1)
        assert (merged.requests, merged.errors, merged.latency_n) == (20, 3, 17)
        assert merged.p95_ms > 150 and merged.score("judge_win_rate")[0] == 0.25
        assert ("bot", "cand") in await reader.variants()
    finally:
        for c in clients:
            await c.aclose()
    lost = Windows(redis=aioredis.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.5))
    lost.record_attempt("bot", "cand", 200, 5.0)
    with pytest.raises(ConnectionError):
        await lost.flush()
    assert lost._buckets, "counts that could not be sent are kept for the next flush"
    await lost.redis.aclose()


def test_attempts_are_counted_so_a_fallback_does_not_hide_a_failing_candidate(upstreams, make_gateway):
    baseline, candidate = upstreams(FakeOpenAI(api_key=UPSTREAM_KEY), FakeOpenAI(api_key=UPSTREAM_KEY))
    cfg = config(baseline, candidate, percent=100, interval_seconds=0.05)
    cfg["plugins"] = {"answerer": {"module": "tests.plugins_for_tests:Answerer"}, **cfg["plugins"]}
    gw = make_gateway(cfg)
    candidate.fail_next(500, 503)  # the candidate fails twice (one retry), then the baseline answers
    assert ask(gw, "ann") == (200, "base")
    body = json.dumps({"model": "bot", "messages": [{"role": "user", "content": "cached?"}]}).encode()
    urllib.request.urlopen(
        urllib.request.Request(gw.url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    ).read()
    routes = wait_until(
        lambda: (r := status(gw)["auto_rollback"]["routes"].get("bot", {})) and len(r) == 3 and r,
        what="figures for three variants",
    )
    assert routes["cand"]["requests"] == 2 and routes["cand"]["errors"] == 2
    assert routes["base"]["requests"] == 1 and routes["base"]["errors"] == 0
    assert routes["answerer"]["requests"] == 1, "a plugin's answer is counted under its own name"


# --- auto-rollback end to end ---------------------------------------------------------------------


def test_a_candidate_failing_30_percent_is_rolled_back_on_all_three_replicas(upstreams, make_gateway, redis_url):
    baseline, candidate = upstreams(FakeOpenAI(api_key=UPSTREAM_KEY), FlakyOpenAI())
    receiver = WebhookReceiver()
    with ServerThread(receiver.app) as hooks:
        # Breaker off: an open breaker records each skipped call as a candidate error, which would push
        # the figures above the upstream's own 30% (a retry's failure can make five in a row on a replica).
        cfg = config(
            baseline,
            candidate,
            percent=30,
            redis_url=redis_url,
            webhook=hooks.url + "/hook",
            candidate_breaker={"enabled": False},
        )
        gws = [make_gateway(cfg) for _ in range(3)]
        spread = itertools.count()
        with Traffic(lambda: (gws[next(spread) % 3], f"user-{random.getrandbits(40)}")):
            wait_until(lambda: events(gws[0], kind="rollback"), what="an automatic rollback")

        def out_everywhere():
            for gw in gws:
                rollout = status(gw)["rollout"]["routes"]["bot"]
                if rollout["percents"].get("cand", 0) != 0 or "cand" not in rollout["rolled_back"]:
                    return False
            return True

        wait_until(out_everywhere, what="every replica showing the candidate at 0% and rolled back")
        seen = len(candidate.requests)
        for i in range(60):
            assert ask(gws[i % 3], f"after-{i}") == (200, "base")
        assert len(candidate.requests) == seen, "no replica sends the candidate traffic any more"

        rollbacks = events(gws[1], kind="rollback")
        assert len(rollbacks) == 1
        event = rollbacks[0]
        assert event["actor"] == "auto_rollback" and event["candidate"] == "cand" and event["rule"] == "error_rate"
        assert event["ts"] and event["after"] == {}
        cand, base = event["figures"]["candidate"], event["figures"]["baseline"]
        assert cand["requests"] >= 20 and 0.2 <= cand["error_rate"] <= 0.4 and base["error_rate"] == 0
        assert event["figures"]["until"] - event["figures"]["since"] <= 30, "judged within the configured window"
        wait_until(lambda: receiver.received, what="the webhook")
        assert receiver.received[0]["event"]["id"] == event["id"]
        assert receiver.received[0]["event"]["rule"] == "error_rate"
        time.sleep(0.5)  # several more evaluations: the candidate stays out and nothing fires again
        assert len(events(gws[2], kind="rollback")) == 1
        assert status(gws[2])["rollout"]["routes"]["bot"]["percents"] == {}


def test_a_healthy_candidate_with_noisy_latency_is_not_rolled_back(upstreams, make_gateway):
    baseline, candidate = upstreams(NoisyOpenAI(seed=1), NoisyOpenAI(seed=2))
    gw = make_gateway(config(baseline, candidate, percent=50, min_samples=40))
    candidate.fail_next(500)  # one stray error
    with Traffic(both_variants(gw), workers=6):

        def judged_often():
            verdict = status(gw)["auto_rollback"]["evaluations"].get("bot", {}).get("cand", {})
            figures = status(gw)["auto_rollback"]["routes"].get("bot", {}).get("cand", {})
            return verdict.get("count", 0) >= 30 and figures.get("requests", 0) >= 150 and verdict

        verdict = wait_until(judged_often, what="many evaluations with plenty of samples")
    assert events(gw, kind="rollback") == []
    assert status(gw)["rollout"]["routes"]["bot"]["percents"] == {"cand": 50.0}
    assert verdict["outcome"] == SUCCESSFUL, verdict
    assert FAILED not in verdict["outcomes"], verdict
    assert status(gw)["auto_rollback"]["routes"]["bot"]["cand"]["errors"] >= 1


def test_too_few_samples_are_inconclusive_and_never_fire(upstreams, make_gateway):
    baseline, candidate = upstreams(FakeOpenAI(api_key=UPSTREAM_KEY), FlakyOpenAI(failing=(0,), period=1))
    gw = make_gateway(config(baseline, candidate, percent=50, failure_limit=1))
    for _ in range(4):
        ask(gw, user_for(gw, "cand"))  # every candidate call fails, but 8 calls are fewer than 20
    verdict = wait_until(
        lambda: (
            (v := status(gw)["auto_rollback"]["evaluations"].get("bot", {}).get("cand", {})).get("count", 0) >= 10 and v
        ),
        what="ten evaluations",
    )
    assert verdict["outcome"] == INCONCLUSIVE and verdict["checks"]["error_rate"]["failed"] is None
    assert events(gw, kind="rollback") == []
    assert status(gw)["auto_rollback"]["routes"]["bot"]["cand"]["error_rate"] == 1.0


def test_judge_scores_below_the_floor_roll_the_candidate_back(upstreams, make_gateway):
    baseline, candidate = upstreams(FakeOpenAI(api_key=UPSTREAM_KEY), FakeOpenAI(api_key=UPSTREAM_KEY))
    gw = make_gateway(
        config(
            baseline,
            candidate,
            percent=20,
            rules={"scores": {"judge_win_rate": {"floor": 0.45}, "thumbs_up": {"floor": 0.5}}},
        )
    )
    hooks = gw.app[GATEWAY].hooks

    async def report():
        for i in range(30):
            for variant, name, value in (
                ("cand", "judge_win_rate", 0.1 + 0.1 * (i % 2)),
                ("cand", "thumbs_up", 1.0),
                ("base", "judge_win_rate", 0.5),
            ):
                await hooks.call("record_score", route="bot", variant=variant, name=name, value=value)

    gw.call(report())
    event = wait_until(lambda: events(gw, kind="rollback"), what="a rollback on the judge score")[0]
    assert event["rule"] == "score:judge_win_rate" and event["figures"]["failed"] == ["score:judge_win_rate"]
    assert event["figures"]["candidate"]["judge_win_rate"] == 0.15
    assert event["figures"]["checks"]["score:thumbs_up"]["failed"] is False
    assert status(gw)["rollout"]["routes"]["bot"]["rolled_back"]["cand"]["rule"] == "score:judge_win_rate"


# --- schedules ------------------------------------------------------------------------------------


def schedule_of(gw):
    return status(gw)["auto_rollback"]["schedules"].get("bot")


def test_a_healthy_schedule_advances_through_its_steps_and_is_done(upstreams, make_gateway, monkeypatch, capsys):
    from gateway.cli import main

    baseline, candidate = upstreams(FakeOpenAI(api_key=UPSTREAM_KEY), FakeOpenAI(api_key=UPSTREAM_KEY))
    # Both variants are the same fake: this is about the steps, and a loaded CI machine's latency
    # noise over 10-call steps is not what it tests (the latency rule has its own tests).
    gw = make_gateway(
        config(baseline, candidate, percent=0, min_samples=10, rules={"p95_latency": None, "cost_per_request": None})
    )
    monkeypatch.setenv("LLMGATE_ADMIN_TOKEN", TOKEN)
    assert main(["schedule", "start", "bot", "cand", "--steps", "5,25,50,100", "--hold", "0.5", "--url", gw.url]) == 0
    assert "schedule" in capsys.readouterr().out
    assert status(gw)["rollout"]["routes"]["bot"]["percents"] == {"cand": 5.0}
    with Traffic(both_variants(gw)):
        done = wait_until(lambda: (s := schedule_of(gw))["status"] != "running" and s, what="the schedule ending")
    assert done["status"] == "done", done
    assert done["step"] == 3 and done["last_analysis"]["outcome"] == SUCCESSFUL
    assert status(gw)["rollout"]["routes"]["bot"]["percents"] == {"cand": 100.0}
    by_schedule = [e["percent"] for e in reversed(events(gw, kind="rollout")) if e["actor"] == "schedule"]
    assert by_schedule == [25.0, 50.0, 100.0]
    steps = [e for e in reversed(events(gw, kind="schedule"))]
    assert [e["after"]["percent"] for e in steps] == [5.0, 25.0, 50.0, 100.0, 100.0]
    assert all("passed its analysis" in e["reason"] for e in steps[1:])
    assert main(["status", "--url", gw.url]) == 0
    assert "schedule cand: step 4/4 (5 -> 25 -> 50 -> 100), hold 0.5s, done" in capsys.readouterr().out


def test_a_failing_schedule_aborts_to_the_baseline_and_stays_out(upstreams, make_gateway):
    baseline, candidate = upstreams(FakeOpenAI(api_key=UPSTREAM_KEY), FlakyOpenAI())
    # a failure limit no evaluation reaches: the step's own analysis must abort it
    gw = make_gateway(config(baseline, candidate, percent=0, min_samples=10, failure_limit=10_000))
    code, _ = admin(
        gw, "/admin/routes/bot/schedule", {"candidate": "cand", "steps": [5, 25, 50, 100], "hold_seconds": 0.5}
    )
    assert code == 200
    with Traffic(both_variants(gw)):
        ended = wait_until(lambda: (s := schedule_of(gw))["status"] != "running" and s, what="the schedule ending")
    assert ended["status"] == "aborted" and ended["step"] == 0, "it never advanced"
    assert ended["last_analysis"]["outcome"] == FAILED
    rollback = events(gw, kind="rollback")
    assert len(rollback) == 1 and rollback[0]["actor"] == "schedule" and rollback[0]["rule"] == "error_rate"
    assert status(gw)["rollout"]["routes"]["bot"]["percents"] == {}
    seen = len(candidate.requests)
    for i in range(30):
        assert ask(gw, f"later-{i}") == (200, "base")
    time.sleep(0.5)  # more ticks: an aborted schedule stays aborted
    assert len(candidate.requests) == seen and schedule_of(gw)["status"] == "aborted"
    code, body = admin(gw, "/admin/routes/bot/schedule/resume", {})
    assert code == 409 and "aborted" in body["error"]["message"]


def test_an_inconclusive_step_pauses_and_advances_after_resume_with_traffic(upstreams, make_gateway):
    baseline, candidate = upstreams(FakeOpenAI(api_key=UPSTREAM_KEY), FakeOpenAI(api_key=UPSTREAM_KEY))
    gw = make_gateway(
        config(
            baseline,
            candidate,
            percent=0,
            min_samples=10,  # same fake: as in the healthy test
            rules={"p95_latency": None, "cost_per_request": None},
        )
    )
    code, _ = admin(gw, "/admin/routes/bot/schedule", {"candidate": "cand", "steps": [10, 50], "hold_seconds": 0.3})
    assert code == 200
    code, body = admin(gw, "/admin/routes/bot/schedule", {"candidate": "cand", "steps": [10], "hold_seconds": 1})
    assert code == 409 and body["error"]["code"] == "schedule_exists"
    for _ in range(3):
        ask(gw, user_for(gw, "cand"))  # too little traffic for the analysis
    paused = wait_until(lambda: (s := schedule_of(gw))["status"] == "paused" and s, what="a pause")
    assert paused["reason"].startswith("inconclusive at step 1/2") and paused["step"] == 0
    time.sleep(0.5)  # more ticks: a paused schedule does not advance by itself
    assert schedule_of(gw)["step"] == 0
    assert status(gw)["rollout"]["routes"]["bot"]["percents"] == {"cand": 10.0}

    code, event = admin(gw, "/admin/routes/bot/schedule/resume", {"reason": "traffic is back"})
    assert code == 200 and event["after"]["status"] == "running" and event["reason"] == "traffic is back"
    with Traffic(both_variants(gw)):
        wait_until(lambda: schedule_of(gw)["step"] == 1, what="the next step")
    assert status(gw)["rollout"]["routes"]["bot"]["percents"] == {"cand": 50.0}
    passed = [e for e in events(gw, kind="schedule") if e["after"]["step"] == 2]
    assert len(passed) == 1 and passed[0]["reason"] == "step 1/2 (10%) passed its analysis"


def test_operators_pause_resume_and_abort_and_requests_are_checked(upstreams, make_gateway):
    baseline, candidate = upstreams(FakeOpenAI(api_key=UPSTREAM_KEY), FakeOpenAI(api_key=UPSTREAM_KEY))
    gw = make_gateway(config(baseline, candidate, percent=0))
    code, _ = admin(gw, "/admin/routes/bot/schedule", {"candidate": "cand", "steps": [5, 50], "hold_seconds": 600})
    assert code == 200
    code, event = admin(gw, "/admin/routes/bot/schedule/pause", {"reason": "looking at something"})
    assert code == 200 and event["after"] == {"status": "paused", "step": 1, "percent": 5.0}
    assert event["before"]["status"] == "running" and event["reason"] == "looking at something"
    assert admin(gw, "/admin/routes/bot/schedule/pause", {})[0] == 409
    code, event = admin(gw, "/admin/routes/bot/schedule/resume", {})
    assert code == 200 and event["after"]["status"] == "running"
    code, event = admin(gw, "/admin/routes/bot/schedule/abort", {"reason": "changed our minds"})
    assert code == 200 and event["after"]["status"] == "aborted"
    rollout = status(gw)["rollout"]["routes"]["bot"]
    assert rollout["percents"] == {} and rollout["rolled_back"]["cand"]["reason"] == "changed our minds"
    assert [e["kind"] for e in events(gw)][:2] == ["schedule", "rollback"]
    assert admin(gw, "/admin/routes/bot/schedule/abort", {})[0] == 409
    for body, param in (
        ({"candidate": "nope", "steps": [5]}, "candidate"),
        ({"candidate": "cand", "steps": [50, 25]}, "steps"),
        ({"candidate": "cand", "steps": [5, 150]}, "steps"),
        ({"candidate": "cand", "steps": [5], "hold_seconds": -1}, "hold_seconds"),
    ):
        code, answer = admin(gw, "/admin/routes/bot/schedule", body)
        assert code == 400 and answer["error"]["param"] == param
    assert admin(gw, "/admin/routes/nope/schedule", {"candidate": "cand", "steps": [5]})[0] == 404
    assert admin(gw, "/admin/routes/nope/schedule/pause", {})[0] == 404
    assert admin(gw, "/admin/routes/bot/schedule/jump", {})[0] == 404
    request = urllib.request.Request(gw.url + "/admin/routes/bot/schedule", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request)
    assert err.value.code == 401


# --- adaptive schedules: promotion by evidence ------------------------------------------------------


def inject(gw, variant, calls, errors=0, latency_ms=800.0):
    """Window counts as if `calls` answers came in the next second (a step counts its whole seconds only),
    on the gateway's loop, as its own recording is."""
    windows = gw.app[GATEWAY].pm.get_plugin("auto_rollback").windows
    second = time.time() + 1

    async def record():
        for i in range(calls):
            windows.record_attempt("bot", variant, 500 if i < errors else 200, latency_ms, now=second)

    gw.call(record())


def test_an_adaptive_schedule_advances_as_soon_as_the_evidence_allows_and_shows_its_intervals(
    upstreams, make_gateway, capsys, monkeypatch
):
    from gateway.cli import main

    baseline, candidate = upstreams(FakeOpenAI(api_key=UPSTREAM_KEY), FakeOpenAI(api_key=UPSTREAM_KEY))
    gw = make_gateway(config(baseline, candidate, percent=0, min_samples=20))
    inject(gw, "base", 400)  # the baseline's p95 before the schedule: the latency guardrail's limit
    time.sleep(1.1)
    code, started = admin(
        gw, "/admin/routes/bot/schedule", {"candidate": "cand", "steps": [5, 50, 100], "mode": "adaptive"}
    )
    assert code == 200, started
    schedule = schedule_of(gw)
    assert schedule["mode"] == "adaptive" and schedule["latency_limit_ms"] == pytest.approx(800, rel=0.1)
    time.sleep(0.3)  # evaluations without evidence: it waits (no hold: nothing else to wait for)
    assert schedule_of(gw)["step"] == 0 and status(gw)["auto_rollback"]["decisions"]["bot"]["action"] == "continue"
    for step in (1, 2):
        inject(gw, "base", 3000)
        inject(gw, "cand", 3000)
        wait_until(lambda step=step: schedule_of(gw)["step"] == step, what=f"step {step + 1}")
    inject(gw, "base", 6000)
    inject(gw, "cand", 6000)
    done = wait_until(lambda: (s := schedule_of(gw))["status"] == "done" and s, what="the rollout to complete")
    last = done["last_analysis"]
    assert last["action"] == "advance" and last["primary"]["status"] == "clear"
    low, high = last["primary"]["interval"]
    assert low <= 0 <= high and high - low < 0.05  # equal arms: the difference's interval holds 0, and is narrow
    assert last["samples"]["primary"] == [12000, 12000]  # every step counts (not the traffic before it began)
    assert len(last["guardrails"]) == 1 and next(iter(last["guardrails"])).startswith("slower than")
    assert status(gw)["rollout"]["routes"]["bot"]["percents"] == {"cand": 100.0}
    reasons = [e["reason"] for e in reversed(events(gw, kind="schedule"))]
    assert reasons[1].startswith("step 1/3 (5%): shown fit for 50%")
    monkeypatch.setenv("LLMGATE_ADMIN_TOKEN", TOKEN)
    assert main(["status", "--url", gw.url]) == 0
    out = capsys.readouterr().out
    assert "adaptive, at most 21600s, done" in out and "evidence: advance: non-inferior" in out
    assert re.search(r"error_rate=0\.0 \[0-0\.\d+\]", out), out


def test_an_adaptive_schedule_rolls_a_harmful_candidate_back_at_once(upstreams, make_gateway):
    baseline, candidate = upstreams(FakeOpenAI(api_key=UPSTREAM_KEY), FakeOpenAI(api_key=UPSTREAM_KEY))
    # the sliding-window rules cannot act here: the schedule's own evidence must
    gw = make_gateway(config(baseline, candidate, percent=0, min_samples=20, failure_limit=10_000))
    code, _ = admin(
        gw,
        "/admin/routes/bot/schedule",
        {"candidate": "cand", "steps": [5, 100], "mode": "adaptive", "evidence": {"min_samples": 50}},
    )
    assert code == 200
    inject(gw, "base", 2000, errors=10)
    inject(gw, "cand", 2000, errors=400)  # 20% errors against 0.5%
    ended = wait_until(lambda: (s := schedule_of(gw))["status"] == "aborted" and s, what="the rollback")
    assert ended["step"] == 0 and ended["last_analysis"]["action"] == "rollback"
    assert "the evidence shows harm: primary" in ended["reason"]
    rollback = events(gw, kind="rollback")
    assert len(rollback) == 1 and rollback[0]["actor"] == "schedule" and rollback[0]["rule"] == "evidence"
    assert status(gw)["rollout"]["routes"]["bot"]["percents"] == {}


def test_adaptive_schedule_requests_are_checked(upstreams, make_gateway):
    baseline, candidate = upstreams(FakeOpenAI(api_key=UPSTREAM_KEY), FakeOpenAI(api_key=UPSTREAM_KEY))
    gw = make_gateway(config(baseline, candidate, percent=0))
    code, body = admin(gw, "/admin/routes/bot/schedule", {"candidate": "cand", "steps": [5], "mode": "sometimes"})
    assert code == 400 and body["error"]["param"] == "mode"
    code, body = admin(
        gw,
        "/admin/routes/bot/schedule",
        {"candidate": "cand", "steps": [5], "mode": "adaptive", "evidence": {"margin": 2}},
    )
    assert code == 400 and body["error"]["param"] == "evidence" and "margin" in body["error"]["message"]
