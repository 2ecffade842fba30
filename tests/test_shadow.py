"""Shadow mode: mirrored requests off the request path, bounded shadow load, the comparison report.

No assertion here depends on timing: a "slow" shadow is one held at a gate the test opens, so
what the caller got before the gate opened cannot have waited for the shadow.
"""

import asyncio
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from gateway.gateway import GATEWAY
from tests.conftest import UPSTREAM_KEY
from tests.fakes.openai_api import FakeOpenAI
from tests.support import free_port, serving, wait_until
from tests.test_metrics import scrape
from tests.test_routing import get_json

ADMIN = "admin-token-for-shadow-tests"
PRICES = {"m-primary": {"input": 3.0, "output": 15.0}, "cheap": {"input": 0.5, "output": 1.0}}


class GatedOpenAI(FakeOpenAI):
    """A fake upstream that holds each request at `gate` (open unless a test closes it)."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = 0
        self.answered = 0

    async def chat(self, request):
        self.waiting += 1
        await asyncio.get_running_loop().run_in_executor(None, self.gate.wait)
        self.waiting -= 1
        try:
            return await super().chat(request)
        finally:
            self.answered += 1


@pytest.fixture
def shadow_fake():
    fake = GatedOpenAI()
    with serving(fake):
        try:
            yield fake
        finally:
            fake.gate.set()


def config(primary, tmp_path, shadows: dict, **shadow_settings) -> dict:
    plugin = {"path": str(tmp_path / "shadow.db"), **shadow_settings}
    return {
        "server": {"admin_token": ADMIN},
        "backends": {
            "primary": {
                "kind": "openai",
                "base_url": primary.url + "/v1",
                "model": "m-primary",
                "api_key": UPSTREAM_KEY,
            },
            **shadows,
        },
        "routes": {"bot": {"baseline": "primary", "shadow": list(shadows)}},
        "prices": PRICES,
        "plugins": {"shadow": plugin},
    }


def cheap(fake) -> dict:
    return {"cheap": {"kind": "openai", "base_url": fake.url + "/v1", "model": "m-cheap", "api_key": "none"}}


def ask(gw, content, **kw):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="app-key", max_retries=0, timeout=30)
    return client.chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": content}], **kw
    )


def ask_streaming(gw, content) -> tuple[str, str]:
    """(request id, the streamed text) of a streamed request."""
    raw = ask(gw, content, stream=True, stream_options={"include_usage": True})
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    return raw.headers["x-request-id"], text


def admin_get(gw, path, token=ADMIN):
    request = urllib.request.Request(gw.url + path, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def shadow_status(gw) -> dict:
    status, body = admin_get(gw, "/admin/status")
    assert status == 200, body
    return body["shadow"]


def report(gw, since=3600, route="bot") -> dict:
    status, body = admin_get(gw, f"/admin/shadow/report?route={route}&since={since}")
    assert status == 200, body
    return body


def rows(tmp_path) -> list[dict]:
    conn = sqlite3.connect(tmp_path / "shadow.db")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM comparisons ORDER BY id")]
    finally:
        conn.close()


def wait_rows(tmp_path, n: int) -> list[dict]:
    return wait_until(lambda: found if len(found := rows(tmp_path)) >= n else None, f"{n} comparisons")


def primary_cost(prompt, completion):
    return (prompt * 3.0 + completion * 15.0) / 1e6


def cheap_cost(prompt, completion):
    return (prompt * 0.5 + completion * 1.0) / 1e6


def test_shadows_receive_mirrored_non_streaming_requests_and_each_comparison_is_recorded(
    fake_openai, shadow_fake, make_gateway, tmp_path
):
    gw = make_gateway(config(fake_openai, tmp_path, cheap(shadow_fake)))
    plain = ask(gw, "hello there", temperature=0.2)
    assert plain.parse().choices[0].message.content == "echo: hello there"
    wait_rows(tmp_path, 1)
    streamed_id, streamed_text = ask_streaming(gw, "one two three four")
    assert streamed_text == "echo: one two three four"
    found = wait_rows(tmp_path, 2)

    assert [r["messages"] for r in shadow_fake.requests] == [
        [{"role": "user", "content": "hello there"}],
        [{"role": "user", "content": "one two three four"}],
    ]
    assert all(
        r["model"] == "m-cheap" and r["stream"] is False and "stream_options" not in r for r in shadow_fake.requests
    )
    assert shadow_fake.requests[0]["temperature"] == 0.2
    assert [bool(r.get("stream")) for r in fake_openai.requests] == [False, True]  # the primary kept its mode

    first, second = found
    assert first["request_id"] == plain.headers["x-request-id"] and second["request_id"] == streamed_id
    for row, (prompt, completion), answer in (
        (first, (2, 3), "echo: hello there"),
        (second, (4, 5), "echo: one two three four"),
    ):
        assert row["route"] == "bot" and row["primary_backend"] == "primary" and row["shadow_backend"] == "cheap"
        assert (row["primary_status"], row["shadow_status"], row["shadow_error"]) == (200, 200, None)
        assert row["primary_answer"] == row["shadow_answer"] == answer
        assert (row["primary_prompt_tokens"], row["primary_completion_tokens"]) == (prompt, completion)
        assert (row["shadow_prompt_tokens"], row["shadow_completion_tokens"]) == (prompt, completion)
        assert row["primary_cost_usd"] == pytest.approx(primary_cost(prompt, completion))
        assert row["shadow_cost_usd"] == pytest.approx(cheap_cost(prompt, completion))
        assert row["primary_latency_ms"] > 0 and row["shadow_latency_ms"] > 0
        assert row["judge_score"] is None


def test_a_slow_shadow_does_not_hold_the_primary_answer(fake_openai, shadow_fake, make_gateway, tmp_path):
    gw = make_gateway(config(fake_openai, tmp_path, cheap(shadow_fake)))
    shadow_fake.gate.clear()
    assert ask(gw, "first").parse().choices[0].message.content == "echo: first"
    wait_until(lambda: shadow_fake.waiting == 1, "the shadow call to arrive")
    # The shadow is held at the gate, yet the next caller is answered too.
    assert ask(gw, "second").parse().choices[0].message.content == "echo: second"
    wait_until(lambda: shadow_fake.waiting == 2, "the second shadow call to arrive")
    assert shadow_fake.answered == 0 and rows(tmp_path) == []
    assert shadow_status(gw) == {"queued": 0, "in_flight": 2, "completed": 0, "dropped": 0, "errors": 0}

    shadow_fake.gate.set()
    found = wait_rows(tmp_path, 2)
    assert sorted(r["shadow_answer"] for r in found) == ["echo: first", "echo: second"]


def test_failing_down_or_keyless_shadows_leave_the_primary_untouched(fake_openai, shadow_fake, make_gateway, tmp_path):
    shadows = {
        "broken": {"kind": "openai", "base_url": shadow_fake.url + "/v1", "model": "m-broken", "api_key": "none"},
        "down": {
            "kind": "openai",
            "base_url": f"http://127.0.0.1:{free_port()}/v1",
            "model": "m-down",
            "api_key": "none",
        },
        "nokey": {"kind": "anthropic", "model": "claude-x", "api_key": "${LLMGATE_TEST_NO_SUCH_KEY}"},
    }
    gw = make_gateway(config(fake_openai, tmp_path, shadows))
    shadow_fake.fail_next(500, 500)
    plain = ask(gw, "hello")
    assert plain.status_code == 200 and plain.headers["x-llmgate-variant"] == "primary"
    assert plain.parse().choices[0].message.content == "echo: hello"
    assert ask_streaming(gw, "hello again")[1] == "echo: hello again"

    found = wait_rows(tmp_path, 6)
    by_shadow = {name: [r for r in found if r["shadow_backend"] == name] for name in shadows}
    assert all(r["primary_status"] == 200 and r["primary_answer"].startswith("echo: hello") for r in found)
    assert {r["shadow_status"] for r in by_shadow["broken"]} == {500}
    assert all("answered 500" in r["shadow_error"] for r in by_shadow["broken"])
    assert {r["shadow_status"] for r in by_shadow["down"]} == {502}
    assert all("could not connect" in r["shadow_error"] for r in by_shadow["down"])
    assert {r["shadow_status"] for r in by_shadow["nokey"]} == {503}
    assert all("LLMGATE_TEST_NO_SUCH_KEY" in r["shadow_error"] for r in by_shadow["nokey"])
    assert all(r["shadow_answer"] is None and r["shadow_cost_usd"] is None for r in found)
    assert len(shadow_fake.requests) == 2  # a shadow call is never retried: shadow load stays what was sampled
    assert shadow_status(gw) == {"queued": 0, "in_flight": 0, "completed": 6, "dropped": 0, "errors": 6}
    _, ready = get_json(gw.url + "/readyz")
    assert "shadow" not in ready["degraded"] and "shadow" not in ready["plugin_faults"]

    shadows_report = report(gw)["shadows"]
    assert {name: s["shadow"]["error_rate"] for name, s in shadows_report.items()} == {
        "broken": 1.0,
        "down": 1.0,
        "nokey": 1.0,
    }
    assert all(s["primary"]["error_rate"] == 0.0 for s in shadows_report.values())


def test_shadow_load_is_bounded_and_what_does_not_fit_is_dropped_and_counted(
    fake_openai, shadow_fake, make_gateway, tmp_path
):
    gw = make_gateway(config(fake_openai, tmp_path, cheap(shadow_fake), max_concurrent=1, queue_size=2))
    shadow_fake.gate.clear()
    assert ask(gw, "request 0").status_code == 200
    wait_until(lambda: shadow_fake.waiting == 1, "the first shadow call to be in flight")
    for i in range(1, 10):
        raw = ask(gw, f"request {i}")
        assert raw.status_code == 200 and raw.parse().choices[0].message.content == f"echo: request {i}"

    counts = wait_until(
        lambda: s if (s := shadow_status(gw))["queued"] + s["dropped"] == 9 else None,
        "the nine later shadow jobs to be queued or dropped",
    )
    assert counts == {"queued": 2, "in_flight": 1, "completed": 0, "dropped": 7, "errors": 0}
    assert shadow_fake.waiting == 1  # never more than max_concurrent shadow calls at once
    _, ready = get_json(gw.url + "/readyz")
    assert ready["status"] == "ready" and ready["degraded"]["shadow"] == "7 shadow calls dropped (queue full)"

    shadow_fake.gate.set()
    wait_until(lambda: shadow_status(gw)["completed"] == 3, "the three admitted shadow calls")
    assert len(shadow_fake.requests) == 3
    wait_rows(tmp_path, 3)  # "completed" counts the call; its comparison row is written by the batched log writer
    assert report(gw)["shadows"]["cheap"]["count"] == 3


class SlowShadow(FakeOpenAI):
    """A shadow that takes `seconds` to answer, as an LLM does, and counts the calls it holds at once."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds, self.holding, self.peak, self.finished = seconds, 0, 0, []

    async def chat(self, request):
        self.holding += 1
        self.peak = max(self.peak, self.holding)
        try:
            await asyncio.sleep(self.seconds)
            return await super().chat(request)
        finally:
            self.holding -= 1
            self.finished.append(time.monotonic())


def test_a_burst_on_a_slow_shadow_is_mirrored_whole_at_the_default_settings(fake_openai, make_gateway, tmp_path):
    """40 requests within 2 s, a shadow answering in 2 s: every one is mirrored, all 40 in flight at once
    (so the last is compared one shadow latency after it came, not 40 / concurrency latencies later)."""
    slow = SlowShadow(2.0)
    with serving(slow):
        gw = make_gateway(config(fake_openai, tmp_path, cheap(slow)))
        with ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(lambda i: ask(gw, f"burst {i}"), range(40)))
        last_answer = time.monotonic()
        assert all(a.status_code == 200 for a in answers)
        wait_until(lambda: shadow_status(gw)["completed"] == 40, "all 40 shadow calls", timeout=30)
    assert slow.peak == 40 and shadow_status(gw)["dropped"] == 0
    print(f"last shadow answer {max(slow.finished) - last_answer:.2f} s after the last caller's answer")
    wait_rows(tmp_path, 40)
    mirrored = report(gw)["shadows"]["cheap"]["mirrored"]
    assert mirrored == {"requests": 40, "mirrored": 40, "dropped": 0, "share": 1.0, "sample_rate": 1.0}
    _, metrics = scrape(gw.url, ADMIN)
    assert 'llmgate_shadow_mirrored_share{route="bot",shadow="cheap"} 1.0' in metrics


def test_requests_answered_by_a_plugin_or_not_sampled_are_not_mirrored(
    fake_openai, shadow_fake, make_gateway, tmp_path
):
    cfg = config(fake_openai, tmp_path, cheap(shadow_fake), max_concurrent=1)
    cfg["plugins"] = {"answerer": {"module": "tests.plugins_for_tests:Answerer"}, **cfg["plugins"]}
    gw = make_gateway(cfg)
    assert ask(gw, "cached?").headers["x-llmgate-variant"] == "answerer"
    assert ask(gw, "not cached").status_code == 200
    wait_until(lambda: shadow_status(gw)["completed"] == 1, "the mirrored request")
    assert [r["messages"][0]["content"] for r in shadow_fake.requests] == ["not cached"]

    unsampled = make_gateway(config(fake_openai, tmp_path / "unsampled", cheap(shadow_fake), sample_rate=0))
    for i in range(3):
        assert ask(unsampled, f"request {i}").status_code == 200
    assert shadow_status(unsampled) == {"queued": 0, "in_flight": 0, "completed": 0, "dropped": 0, "errors": 0}
    assert len(shadow_fake.requests) == 1


def nearest_rank(values, p):
    ordered = sorted(values)
    return ordered[math.ceil(p / 100 * len(ordered)) - 1]


def test_the_report_compares_error_rates_tokens_costs_and_projects_the_saving(
    fake_openai, shadow_fake, make_gateway, tmp_path
):
    gw = make_gateway(config(fake_openai, tmp_path, cheap(shadow_fake)))
    ids = [ask(gw, "hello there").headers["x-request-id"]]
    wait_rows(tmp_path, 1)
    ids.append(ask_streaming(gw, "one two three four")[0])
    wait_rows(tmp_path, 2)
    with pytest.raises(openai.APIError):  # the primary's stream breaks: a primary error, still mirrored
        ask_streaming(gw, "a [cut]")
    wait_rows(tmp_path, 3)
    shadow_fake.fail_next(500)  # the shadow fails the next one
    ids.append(ask(gw, "x y z").headers["x-request-id"])
    found = wait_rows(tmp_path, 4)
    cut_id = found[2]["request_id"]
    conn = sqlite3.connect(tmp_path / "shadow.db")  # an evaluator's scores, joined into the report
    with conn:
        conn.execute("UPDATE comparisons SET judge_score = 0.5 WHERE request_id = ?", (ids[0],))
        conn.execute("UPDATE comparisons SET judge_score = 1.0 WHERE request_id = ?", (ids[1],))
    conn.close()

    body = report(gw, since=3600)
    assert body["route"] == "bot" and body["since_s"] == 3600 and list(body["shadows"]) == ["cheap"]
    s = body["shadows"]["cheap"]
    # primary ok: hello there (2/3 tokens), one..four (4/5), x y z (3/4);
    # shadow ok: hello there, one..four, a [cut] (2/3)
    p_cost = (primary_cost(2, 3) + primary_cost(4, 5) + primary_cost(3, 4)) / 3
    s_cost = (cheap_cost(2, 3) + cheap_cost(4, 5) + cheap_cost(2, 3)) / 3
    per_day = 4 / (3600 / 86400)
    assert s["count"] == 4
    assert s["primary"]["error_rate"] == 0.25 and s["shadow"]["error_rate"] == 0.25
    assert s["primary"]["prompt_tokens_mean"] == pytest.approx(3.0)
    assert s["primary"]["completion_tokens_mean"] == pytest.approx(4.0)
    assert s["shadow"]["prompt_tokens_mean"] == pytest.approx(8 / 3)
    assert s["shadow"]["completion_tokens_mean"] == pytest.approx(11 / 3)
    assert s["difference"]["prompt_tokens_mean"] == pytest.approx(8 / 3 - 3)
    assert s["difference"]["completion_tokens_mean"] == pytest.approx(11 / 3 - 4)
    assert s["primary"]["cost_per_request_usd"] == pytest.approx(p_cost)
    assert s["shadow"]["cost_per_request_usd"] == pytest.approx(s_cost)
    assert s["difference"]["cost_per_request_usd"] == pytest.approx(s_cost - p_cost)
    assert s["requests_per_day"] == pytest.approx(per_day)
    assert s["projected_monthly_saving_usd"] == pytest.approx((p_cost - s_cost) * per_day * 30)
    assert s["judge"]["mean"] == 0.75 and s["judge"]["count"] == 2
    assert s["judge"]["interval"] == pytest.approx([0.26, 1.24], abs=1e-3)  # 0.75 +- 1.96 x 0.25
    assert (
        s["primary"]["errors"]["n"] == 4
        and s["primary"]["errors"]["interval"][0] < 0.25 < s["primary"]["errors"]["interval"][1]
    )
    paired = s["paired_difference"]  # the two requests both answered: hello there, one..four
    assert paired["prompt_tokens"] == {"mean": 0.0, "interval": [0.0, 0.0], "n": 2}
    assert paired["latency_ms"]["n"] == 2 and paired["cost_usd"]["mean"] == pytest.approx(
        (cheap_cost(2, 3) - primary_cost(2, 3) + cheap_cost(4, 5) - primary_cost(4, 5)) / 2
    )
    primary_ok = [r["primary_latency_ms"] for r in found if r["primary_status"] == 200]
    shadow_ok = [r["shadow_latency_ms"] for r in found if r["shadow_error"] is None]
    for q in (50, 95, 99):
        assert s["primary"]["latency_ms"][f"p{q}"] == pytest.approx(nearest_rank(primary_ok, q))
        assert s["shadow"]["latency_ms"][f"p{q}"] == pytest.approx(nearest_rank(shadow_ok, q))
    assert [(r["request_id"], r["primary_answer"], r["shadow_answer"]) for r in s["recent"]] == [
        (ids[2], "echo: x y z", None),
        (cut_id, "echo:", "echo: a [cut]"),
        (ids[1], "echo: one two three four", "echo: one two three four"),
    ]

    env = {**os.environ, "LLMGATE_ADMIN_TOKEN": ADMIN}
    cli = [sys.executable, "-m", "gateway", "shadow", "report", "bot", "--url", gw.url]
    out = subprocess.run(cli + ["--since", "1h"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "route bot: shadow comparisons over the last 1h (sample rate 1)" in text
    assert "shadow cheap: 4 comparisons, about 96.0 requests/day" in text
    assert re.search(r"error rate\s+25\.0%\s+25\.0%\n", text)
    assert re.search(r"prompt tokens \(mean\)\s+3\.00\s+2\.67\s+-0\.33\n", text)
    assert re.search(r"completion tokens \(mean\)\s+4\.00\s+3\.67\s+-0\.33\n", text)
    assert re.search(rf"cost per request \(USD\)\s+{p_cost:.6f}\s+{s_cost:.6f}\s+{s_cost - p_cost:+.6f}\n", text)
    assert f"projected monthly saving: {(p_cost - s_cost) * per_day * 30:,.2f} USD" in text
    assert "judge score: 0.750 mean of 2 (95% 0.260 to 1.240)" in text
    assert re.search(r"error rate 95% intervals: primary 4\.6% to 69\.9%, shadow 4\.6% to 69\.9% \(4 requests\)", text)
    assert "completion tokens, shadow - primary on the same requests: +0.00 (95% +0.00 to +0.00, 2 pairs)" in text
    assert f"{ids[2]}:\n    primary: echo: x y z\n    shadow:  -" in text
    as_json = subprocess.run(cli + ["--since", "3600", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(as_json.stdout)["shadows"] == body["shadows"]

    assert admin_get(gw, "/admin/shadow/report?route=bot", token=None)[0] == 401
    assert admin_get(gw, "/admin/shadow/report?route=bot", token="wrong")[0] == 401
    refused = subprocess.run(
        cli,
        env={k: v for k, v in env.items() if k != "LLMGATE_ADMIN_TOKEN"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "401" in refused.stderr
    status, missing = admin_get(gw, "/admin/shadow/report?route=nope")
    assert status == 404 and "`nope`" in missing["error"]["message"]
    assert admin_get(gw, "/admin/shadow/report?route=bot&since=-5")[0] == 400


def plugin_of(gw):
    return gw.app[GATEWAY].pm.get_plugin("shadow")


def test_shutdown_waits_for_a_shadow_call_in_flight_and_writes_it(fake_openai, shadow_fake, make_gateway, tmp_path):
    cfg = config(fake_openai, tmp_path, cheap(shadow_fake))
    cfg["plugins"]["shadow"]["drain_seconds"] = 30
    gw = make_gateway(cfg)
    shadow_fake.gate.clear()
    assert ask(gw, "last words").status_code == 200
    wait_until(lambda: shadow_fake.waiting == 1, "the shadow call to be in flight")
    stopping = threading.Thread(target=gw.stop)
    stopping.start()
    wait_until(lambda: plugin_of(gw).closing, "the shadow plugin's shutdown to begin")
    assert stopping.is_alive()  # held by the shadow call, which cannot answer before the gate opens
    shadow_fake.gate.set()
    stopping.join(30)
    assert not stopping.is_alive()
    [row] = rows(tmp_path)
    assert (row["shadow_status"], row["shadow_answer"]) == (200, "echo: last words")


def test_shutdown_records_a_shadow_call_cut_off_at_its_bound(fake_openai, shadow_fake, make_gateway, tmp_path):
    cfg = config(fake_openai, tmp_path, cheap(shadow_fake))
    cfg["plugins"]["shadow"]["drain_seconds"] = 0.3
    gw = make_gateway(cfg)
    shadow_fake.gate.clear()
    assert ask(gw, "never answered").status_code == 200
    wait_until(lambda: shadow_fake.waiting == 1, "the shadow call to be in flight")
    gw.stop()
    [row] = rows(tmp_path)
    assert row["primary_answer"] == "echo: never answered"
    assert (row["shadow_status"], row["shadow_error"]) == (499, "the gateway stopped before the shadow answered")
