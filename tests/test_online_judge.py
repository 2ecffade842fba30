"""Online judging and user feedback: real gateways, fake upstreams, a fake judge model.

No assertion depends on timing: a "slow" judge is held at a gate the test opens, so answers that
arrived while it was held cannot have waited for it; every other wait is for a condition.
"""

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
from aiohttp import web

from gateway.context import sampled
from gateway.gateway import GATEWAY
from tests.fakes.judge_api import QUALITY_MARK, FakeJudge
from tests.fakes.openai_api import FakeOpenAI
from tests.support import ServerThread, gateway_thread
from tests.test_auto_rollback import TOKEN, admin, events, status, user_for, wait_until
from tests.test_routing import get_json

QUESTION = "How do I reset my password?"


class MarkedOpenAI(FakeOpenAI):
    """A fake upstream whose whole (non-streamed) answers carry the judge's quality mark."""

    async def chat(self, request):
        response = await super().chat(request)
        if not isinstance(response, web.Response) or response.status != 200:
            return response
        data = json.loads(response.body)
        for choice in data["choices"]:
            choice["message"]["content"] += f" {QUALITY_MARK}"
        return web.json_response(data)


class GatedJudge(FakeJudge):
    """A judge model that holds each request at `gate` (open unless a test closes it)."""

    def __init__(self, mode="oracle"):
        super().__init__(mode)
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = 0

    async def chat(self, request):
        self.waiting += 1
        await asyncio.get_running_loop().run_in_executor(None, self.gate.wait)
        self.waiting -= 1
        return await super().chat(request)


@pytest.fixture
def serve():
    """Start fake servers; each gets its `url`; all stop at the end of the test."""
    started = []

    def start(*fakes):
        for fake in fakes:
            server = ServerThread(fake.app).start()
            fake.url = server.url
            started.append(server)
        return fakes

    yield start
    for fake in started:
        fake.stop()


def backend(fake, model):
    return {"kind": "openai", "base_url": fake.url + "/v1", "model": model, "api_key": "none"}


def config(
    tmp_path, baseline, candidate=None, shadow=None, judge=None, percent=100.0, judge_settings=None, **auto_rollback
):
    backends = {"base": backend(baseline, "m-base")}
    route = {"baseline": "base"}
    if candidate is not None:
        backends["cand"] = backend(candidate, "m-cand")
        route["candidates"] = {"cand": percent}
    if shadow is not None:
        backends["cheap"] = backend(shadow, "m-cheap")
        route["shadow"] = ["cheap"]
    plugins = {
        "feedback": {"path": str(tmp_path / "feedback.db")},
        "shadow": {"path": str(tmp_path / "shadow.db")},
        "auto_rollback": {"window_seconds": 60, "interval_seconds": 0.1, **auto_rollback},
    }
    if judge is not None:
        backends["judge"] = backend(judge, "judge-model")
        plugins["judge"] = {"enabled": True, "backend": "judge", "sample_rate": 1.0, **(judge_settings or {})}
    return {"server": {"admin_token": TOKEN}, "backends": backends, "routes": {"bot": route}, "plugins": plugins}


def ask(gw, content=QUESTION, user="someone", request_id=None, route="bot"):
    """(status, variant, request id, answer text) of one non-streamed request."""
    body = json.dumps({"model": route, "messages": [{"role": "user", "content": content}], "user": user}).encode()
    headers = {"Content-Type": "application/json", **({"x-request-id": request_id} if request_id else {})}
    request = urllib.request.Request(gw.url + "/v1/chat/completions", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as resp:
        answer = json.loads(resp.read())
        return (
            resp.status,
            resp.headers["x-llmgate-variant"],
            resp.headers["x-request-id"],
            answer["choices"][0]["message"]["content"],
        )


def judge_status(gw):
    return status(gw)["judge"]


def windows_scores(gw, variant):
    """Every score the auto-rollback windows hold for a variant of route bot."""
    windows = gw.app[GATEWAY].pm.get_plugin("auto_rollback").windows
    return gw.call(windows.read("bot", variant, time.time() - 60)).scores


# --- judging live candidates ----------------------------------------------------------------------


def test_sampled_candidate_answers_are_judged_against_the_baseline_and_reach_the_windows(serve, make_gateway, tmp_path):
    baseline, candidate, judge = serve(FakeOpenAI(), MarkedOpenAI(), FakeJudge())
    cfg = config(tmp_path, baseline, candidate, judge=judge, judge_settings={"sample_rate": 0.5, "routes": ["bot"]})
    cfg["routes"]["other"] = cfg["routes"]["bot"]
    gw = make_gateway(cfg)
    ids: list[str] = []  # the gateway's own ids (random): asked until some are sampled and some are not
    while len(ids) < 12 or not 0 < sum(sampled(0.5, "judge", i) for i in ids) < len(ids):
        code, variant, request_id, answer = ask(gw, f"question {len(ids)}")
        assert (code, variant, answer) == (200, "cand", f"echo: question {len(ids)} {QUALITY_MARK}")
        ids.append(request_id)
    chosen = [i for i in ids if sampled(0.5, "judge", i)]
    for _ in range(4):
        assert ask(gw, "elsewhere", route="other")[1] == "cand"  # a route not judged, sampled or not

    n = len(chosen)
    judged = wait_until(lambda: (s := judge_status(gw))["judged"] == n and s, what=f"{n} judgements")
    # Only the sampled requests were put to the baseline (off the request path), whole and non-streamed.
    assert sorted(r["messages"][0]["content"] for r in baseline.requests) == sorted(
        f"question {ids.index(i)}" for i in chosen
    )
    assert all(r["model"] == "m-base" and r["stream"] is False for r in baseline.requests)
    assert len(judge.requests) == 2 * n, "each judgement asks the judge in both orders"
    tally = judged["win_rate"]["bot"]["cand"]
    assert {k: v for k, v in tally.items() if k != "interval"} == {
        "win_rate": 1.0,
        "judged": n,
        "wins": n,
        "ties": 0,
        "losses": 0,
    }
    assert tally["interval"][1] == 1.0 and tally["interval"][0] < 1.0  # n wins of n: not certain
    assert (judged["errors"], judged["dropped"], judged["queued"], judged["budget_left_today"]) == (0, 0, 0, 1000 - n)

    figures = wait_until(
        lambda: (
            (f := status(gw)["auto_rollback"]["routes"].get("bot", {}).get("cand", {})).get("judge_win_rate_n") == n
            and f
        ),
        what="the scores in the auto-rollback figures",
    )
    assert figures["judge_win_rate"] == 1.0
    assert "base" not in status(gw)["auto_rollback"]["routes"]["bot"], "the judge's baseline calls are not traffic"


def test_the_daily_budget_stops_judging_when_spent(serve, make_gateway, tmp_path):
    baseline, candidate, judge = serve(FakeOpenAI(), MarkedOpenAI(), FakeJudge())
    gw = make_gateway(config(tmp_path, baseline, candidate, judge=judge, judge_settings={"daily_budget": 3}))
    for i in range(5):
        assert ask(gw, f"question {i}")[0] == 200
    counts = wait_until(
        lambda: (s := judge_status(gw))["judged"] + s["over_budget"] == 5 and s,
        what="every answer judged or refused for the budget",
    )
    assert (counts["judged"], counts["over_budget"], counts["budget_left_today"]) == (3, 2, 0)
    assert len(judge.requests) == 6 and len(baseline.requests) == 3
    _, ready = get_json(gw.url + "/readyz")
    assert ready["status"] == "ready"
    assert ready["degraded"]["judge"] == "daily judge budget of 3 spent: judging resumes at 00:00 UTC"
    assert windows_scores(gw, "cand")["judge_win_rate"][2] == 3


def test_a_failing_judge_counts_errors_never_scores(serve, make_gateway, tmp_path):
    baseline, candidate, judge = serve(FakeOpenAI(), MarkedOpenAI(), FakeJudge("garbage"))
    gw = make_gateway(config(tmp_path, baseline, candidate, judge=judge))
    baseline.fail_next(500)  # the first baseline call fails: no judgement, and no budget spent on it
    for i in range(4):
        assert ask(gw, f"question {i}")[0] == 200
    counts = wait_until(
        lambda: (s := judge_status(gw))["errors"] + s["baseline_errors"] == 4 and s, what="four judgements to fail"
    )
    assert (counts["judged"], counts["errors"], counts["baseline_errors"]) == (0, 3, 1)
    assert counts["budget_left_today"] == 1000 - 3 and counts["win_rate"] == {}
    assert len(judge.requests) == 6, "garbage is retried once, then the judgement is an error"
    assert windows_scores(gw, "cand") == {}


def test_the_request_path_never_waits_for_the_judge_and_its_queue_is_bounded(serve, make_gateway, tmp_path):
    baseline, candidate, judge = serve(FakeOpenAI(), MarkedOpenAI(), GatedJudge())
    gw = make_gateway(
        config(tmp_path, baseline, candidate, judge=judge, judge_settings={"max_concurrent": 1, "queue_size": 1})
    )
    judge.gate.clear()
    try:
        assert ask(gw, "first")[3] == f"echo: first {QUALITY_MARK}"
        wait_until(lambda: judge.waiting == 1, what="the first judgement to reach the judge")
        # The judge holds that judgement at its gate, yet the next callers get their answers.
        for i in range(3):
            assert ask(gw, f"later {i}")[3] == f"echo: later {i} {QUALITY_MARK}"
        held = wait_until(
            lambda: (s := judge_status(gw))["queued"] + s["dropped"] == 3 and s,
            what="the later judgements queued or dropped",
        )
        assert (held["judged"], held["queued"], held["dropped"]) == (0, 1, 2)
        assert held["budget_left_today"] == 1000 - 2, "a dropped judgement costs nothing"
        _, ready = get_json(gw.url + "/readyz")
        assert ready["degraded"]["judge"] == "2 judgements dropped (queue full)"
    finally:
        judge.gate.set()
    done = wait_until(lambda: (s := judge_status(gw))["judged"] == 2 and s, what="the two admitted judgements")
    assert done["win_rate"]["bot"]["cand"]["wins"] == 2 and len(judge.requests) == 4


# --- THE MUST-SHOW: online judge scores below the floor roll the candidate back ------------------


def test_online_judge_scores_below_the_floor_roll_the_candidate_back(serve, make_gateway, tmp_path):
    baseline, candidate, judge = serve(MarkedOpenAI(), FakeOpenAI(), FakeJudge())  # the candidate is worse
    gw = make_gateway(
        config(
            tmp_path,
            baseline,
            candidate,
            judge=judge,
            judge_settings={"max_concurrent": 4},
            min_samples=10,
            failure_limit=2,
            rules={"p95_latency": None, "scores": {"judge_win_rate": {"floor": 0.4}}},
        )
    )
    deadline = time.monotonic() + 60
    served = []
    while not (rollbacks := events(gw, kind="rollback")):
        assert time.monotonic() < deadline, "gave up waiting for the judge's scores to roll the candidate back"
        served.append(ask(gw, f"question {len(served)}", user=f"user-{len(served)}")[1])
    [event] = rollbacks
    assert event["actor"] == "auto_rollback" and event["rule"] == "score:judge_win_rate"
    assert event["figures"]["failed"] == ["score:judge_win_rate"]
    assert event["figures"]["candidate"]["judge_win_rate"] == 0.0
    assert event["figures"]["candidate"]["judge_win_rate_n"] >= 10
    assert "cand" in served
    rollout = status(gw)["rollout"]["routes"]["bot"]
    assert rollout["percents"] == {} and rollout["rolled_back"]["cand"]["rule"] == "score:judge_win_rate"
    tally = judge_status(gw)["win_rate"]["bot"]["cand"]
    assert tally["losses"] >= 10 and tally["wins"] == tally["ties"] == 0
    assert {ask(gw, f"after {i}", user=f"after-{i}")[1] for i in range(5)} == {"base"}


# --- judging shadow comparisons -------------------------------------------------------------------


def test_shadow_comparisons_get_a_judge_score_and_the_report_shows_its_mean(serve, make_gateway, tmp_path):
    primary, shadow, judge = serve(FakeOpenAI(), MarkedOpenAI(), FakeJudge())  # the shadow answers better
    gw = make_gateway(config(tmp_path, primary, shadow=shadow, judge=judge))
    ids = [ask(gw, f"question {i}")[2] for i in range(3)]
    wait_until(lambda: judge_status(gw)["judged"] == 3, what="three shadow judgements")
    conn = sqlite3.connect(tmp_path / "shadow.db")
    try:
        scores = dict(conn.execute("SELECT request_id, judge_score FROM comparisons"))
    finally:
        conn.close()
    assert scores == {i: 1.0 for i in ids}
    assert len(primary.requests) == 3, "a shadow comparison is judged on the answers it already has"
    shadow_tally = judge_status(gw)["shadow_win_rate"]["bot"]["cheap"]
    assert shadow_tally["win_rate"] == 1.0 and shadow_tally["judged"] == 3 and shadow_tally["wins"] == 3
    assert 0.4 < shadow_tally["interval"][0] < 1.0  # three wins of three: Wilson's interval is wide
    assert judge_status(gw)["win_rate"] == {} and windows_scores(gw, "cheap") == {}

    code, report = admin(gw, "/admin/shadow/report?route=bot")
    assert code == 200 and report["shadows"]["cheap"]["judge"] == {"mean": 1.0, "count": 3, "interval": [1.0, 1.0]}
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "shadow", "report", "bot", "--url", gw.url],
        env={**os.environ, "LLMGATE_ADMIN_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "judge score: 1.000 mean of 3" in out.stdout


# --- configuration --------------------------------------------------------------------------------


def test_the_judge_needs_a_configured_backend(serve, tmp_path):
    from gateway.config import ConfigError

    baseline, judge = serve(FakeOpenAI(), FakeJudge())
    cfg = config(tmp_path, baseline, judge=judge, judge_settings={"backend": "nope", "routes": ["bot", "gone"]})
    with pytest.raises(ConfigError) as refused:
        gateway_thread(cfg).start()
    assert refused.value.problems == [
        "plugins.judge.backend: unknown backend 'nope' (defined: base, judge)",
        "plugins.judge.routes: unknown route 'gone' (defined: bot)",
    ]
    del cfg["plugins"]["judge"]["backend"]
    with pytest.raises(ConfigError) as invalid:
        gateway_thread(cfg).start()
    assert any(p.startswith("plugins.judge.backend") for p in invalid.value.problems)


# --- user feedback --------------------------------------------------------------------------------


def post_feedback(gw, body):
    request = urllib.request.Request(
        gw.url + "/v1/feedback",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer app-key"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_feedback_is_counted_per_variant_and_reaches_the_windows(serve, make_gateway, tmp_path):
    baseline, candidate = serve(FakeOpenAI(), FakeOpenAI())
    gw = make_gateway(config(tmp_path, baseline, candidate, percent=50))
    answers = {}
    for variant, user in (("cand", user_for(gw, "cand")), ("base", user_for(gw, None))):
        for i in range(2):
            _, served, request_id, _ = ask(gw, f"question {i}", user=user)
            assert served == variant
            answers.setdefault(variant, []).append(request_id)
    ratings = {"cand": ["helpful", 2], "base": ["not_helpful", 5]}
    for variant, (first, second) in ratings.items():
        code, recorded = post_feedback(gw, {"request_id": answers[variant][0], "rating": first, "comment": "hm"})
        assert code == 200 and recorded["route"] == "bot" and recorded["variant"] == variant
        assert (recorded["rating"], recorded["score"], recorded["comment"]) == (first, float(first == "helpful"), "hm")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="app-key", max_retries=0)
    for variant, (_, second) in ratings.items():  # the SDK's own client can post it too
        recorded = client.post("/feedback", body={"request_id": answers[variant][1], "rating": second}, cast_to=object)
        assert recorded["variant"] == variant and recorded["score"] == (second - 1) / 4

    tallies = status(gw)["feedback"]["routes"]["bot"]
    assert {v: (t["count"], t["mean"]) for v, t in tallies.items()} == {"base": (2, 0.5), "cand": (2, 0.625)}
    assert all(t["interval"][0] < t["mean"] < t["interval"][1] for t in tallies.values())  # two ratings: wide

    def counted():
        figures = status(gw)["auto_rollback"]["routes"].get("bot", {})
        return all(figures.get(v, {}).get("feedback_n") == 2 for v in ("cand", "base")) and figures

    figures = wait_until(counted, what="feedback in the auto-rollback figures")
    assert (figures["cand"]["feedback"], figures["base"]["feedback"]) == (0.625, 0.5)
    conn = sqlite3.connect(tmp_path / "feedback.db")
    try:
        stored = conn.execute("SELECT variant, rating, score, comment FROM feedback ORDER BY id").fetchall()
    finally:
        conn.close()
    assert stored == [
        ("cand", "helpful", 1.0, "hm"),
        ("base", "not_helpful", 0.0, "hm"),
        ("cand", "2", 0.25, None),
        ("base", "5", 1.0, None),
    ]

    code, again = post_feedback(gw, {"request_id": answers["cand"][0], "rating": "not_helpful"})
    assert code == 409 and again["error"]["code"] == "already_rated"
    code, unknown = post_feedback(gw, {"request_id": "no-such-request", "rating": "helpful"})
    assert code == 404 and unknown["error"]["type"] == "invalid_request_error"
    assert unknown["error"]["param"] == "request_id" and "no-such-request" in unknown["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        client.post("/feedback", body={"request_id": "no-such-request", "rating": 3}, cast_to=object)
    for rating in ("meh", 0, 6, 2.5, True, None):
        code, bad = post_feedback(gw, {"request_id": answers["base"][0], "rating": rating})
        assert code == 400 and bad["error"]["param"] == "rating", rating
    code, bad = post_feedback(gw, {"rating": "helpful"})
    assert code == 400 and bad["error"]["param"] == "request_id"
    assert status(gw)["feedback"]["routes"]["bot"]["cand"]["count"] == 2, "refused ratings count nothing"


def test_feedback_for_an_older_request_is_found_in_the_traffic_log(serve, make_gateway, tmp_path):
    baseline, candidate = serve(FakeOpenAI(), FakeOpenAI())
    cfg = config(tmp_path, baseline, candidate)
    first = make_gateway(cfg)
    old_ids = [ask(first, "before the restart")[2] for _ in range(2)]
    assert post_feedback(first, {"request_id": old_ids[0], "rating": 4})[0] == 200
    first.stop()  # flushes the traffic log; the new gateway remembers nothing in memory

    second = make_gateway(cfg)
    code, recorded = post_feedback(second, {"request_id": old_ids[1], "rating": "helpful"})
    assert code == 200 and (recorded["route"], recorded["variant"]) == ("bot", "cand")
    assert post_feedback(second, {"request_id": old_ids[0], "rating": 1})[0] == 409, "ratings are stored durably"
