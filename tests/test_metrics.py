"""GET /metrics after known traffic: counts by route, variant and status, histograms, tokens, cost,
the other plugins' gauges, plugin faults and rollout events; the overhead header; no secret in labels.

Real gateway, real fake upstream, the official openai SDK; the exposition is read back with
prometheus_client's own parser, so what is asserted is what a Prometheus server would see.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.hookspecs import hookimpl
from tests.conftest import UPSTREAM_KEY, backend_config
from tests.support import wait_until

CALLER_KEY = "sk-caller-key-that-must-not-leak-42"
ADMIN = "admin-token-for-metrics-tests"
PRICES = {"gpt-test": {"input": 2.0, "output": 10.0}}  # USD per million tokens


class CacheVerdict:
    """Marks each request as a cache lookup the way the semantic cache does (annotations["cache"])."""

    @hookimpl
    def before_route(self, ctx):
        ctx.annotations["cache"] = {"result": "miss" if "fresh" in str(ctx.body["messages"]) else "hit-exact"}


def gateway_config(fake, **route) -> dict:
    cheap = {**backend_config("openai", fake), "model": "gpt-cheap"}
    return {
        "server": {"admin_token": ADMIN},
        "backends": {"base": backend_config("openai", fake), "cheap": cheap},
        "routes": {"bot": {"baseline": "base", **route}},
        "prices": PRICES,
    }


def scrape(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def samples(text: str) -> list:
    """Every sample of the exposition, parsed as Prometheus would (a malformed line raises)."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels) -> float | None:
    """The sum of the samples named `name` whose labels include `labels` (None when there is none)."""
    found = [s.value for s in samples(text) if s.name == name and labels.items() <= s.labels.items()]
    return sum(found) if found else None


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=CALLER_KEY, max_retries=0)


def test_counts_histograms_tokens_and_cost_after_known_traffic(fake_openai, make_gateway):
    gw = make_gateway(gateway_config(fake_openai, retries=1))
    sdk = client(gw.url)
    prompt = completion = 0
    for text in ("one", "two words", "three little words"):
        answer = sdk.chat.completions.create(model="bot", messages=[{"role": "user", "content": text}])
        prompt += answer.usage.prompt_tokens
        completion += answer.usage.completion_tokens
    stream = sdk.chat.completions.create(
        model="bot",
        messages=[{"role": "user", "content": "stream me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage for chunk in stream if chunk.usage][-1]
    prompt += usage.prompt_tokens
    completion += usage.completion_tokens
    with pytest.raises(openai.APIStatusError) as failed:
        sdk.chat.completions.create(model="bot", messages=[{"role": "user", "content": "[status 503]"}])
    assert failed.value.status_code == 502

    status, text = scrape(gw.url)
    assert status == 200
    route = {"route": "bot", "variant": "base", "backend": "base"}
    assert value(text, "llmgate_requests_total", **route, status_class="2xx") == 4
    assert value(text, "llmgate_requests_total", **route, status_class="5xx") == 1
    assert value(text, "llmgate_request_errors_total", **route, type="upstream_error") == 1
    assert value(text, "llmgate_request_duration_seconds_count", **route) == 5
    assert value(text, "llmgate_request_duration_seconds_bucket", **route, le="+Inf") == 5
    assert value(text, "llmgate_time_to_first_token_seconds_count", **route) == 1
    assert value(text, "llmgate_overhead_seconds_count", route="bot") == 5
    assert value(text, "llmgate_tokens_total", **route, kind="prompt") == prompt
    assert value(text, "llmgate_tokens_total", **route, kind="completion") == completion
    expected_cost = (prompt * 2.0 + completion * 10.0) / 1e6
    assert value(text, "llmgate_cost_usd_total", **route) == pytest.approx(expected_cost)
    # 4 answered attempts, and the failing request tried twice (retries: 1)
    assert value(text, "llmgate_upstream_attempts_total", route="bot", backend="base", status_class="2xx") == 4
    assert value(text, "llmgate_upstream_attempts_total", route="bot", backend="base", status_class="5xx") == 2
    assert value(text, "llmgate_requests_in_flight", route="bot") == 0
    # the traffic log's own figures, read at scrape time through the collect_metrics hook
    assert value(text, "llmgate_traffic_log_queue_depth") is not None
    assert wait_until(lambda: value(scrape(gw.url)[1], "llmgate_traffic_log_written_total") == 5)


def test_other_plugins_gauges_and_faults(fake_openai, make_gateway):
    config = gateway_config(fake_openai, shadow=["cheap"], candidates={"cheap": 0})
    config["plugins"] = {
        "cache_verdict": {"module": "tests.test_metrics:CacheVerdict"},
        "raiser": {"module": "tests.plugins_for_tests:Raiser"},
        "answerer": {"module": "tests.plugins_for_tests:Answerer"},
    }
    gw = make_gateway(config)
    sdk = client(gw.url)
    for text in ("fresh one", "fresh two", "again"):
        sdk.chat.completions.create(model="bot", messages=[{"role": "user", "content": text}])
    sdk.chat.completions.create(model="bot", messages=[{"role": "user", "content": "cached?"}])

    text = wait_until(lambda: (t := scrape(gw.url)[1]) and value(t, "llmgate_shadow_calls_total") == 3 and t)
    assert value(text, "llmgate_shadow_dropped_total") == 0
    assert value(text, "llmgate_shadow_errors_total") == 0
    assert value(text, "llmgate_shadow_queue_depth") == 0
    assert value(text, "llmgate_cache_lookups_total", route="bot", result="miss") == 2
    assert value(text, "llmgate_cache_lookups_total", route="bot", result="hit-exact") == 2
    assert value(text, "llmgate_plugin_answers_total", route="bot", plugin="answerer") == 1
    # Raiser fails in before_route, choose_variant and after_response on each of the 4 requests
    # (choose_variant is not reached when the answerer answers)
    assert value(text, "llmgate_plugin_errors_total", plugin="raiser") == 4 + 3 + 4

    status, _ = (
        urllib.request.urlopen(
            urllib.request.Request(
                gw.url + "/admin/routes/bot/rollback",
                method="POST",
                data=json.dumps({"candidate": "cheap", "reason": "metrics test"}).encode(),
                headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
            )
        ).status,
        None,
    )
    assert status == 200
    assert value(scrape(gw.url)[1], "llmgate_rollout_events_total", route="bot", kind="rollback") == 1


def test_token_protects_the_endpoint_and_no_secret_is_a_label(fake_openai, make_gateway):
    config = gateway_config(fake_openai)
    config["plugins"] = {"metrics": {"token": "scrape-token-0123"}}
    gw = make_gateway(config)
    answer = client(gw.url).chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": "hello"}], user="alice@example.com"
    )
    request_id = answer.headers["x-request-id"]

    status, body = scrape(gw.url)
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
    assert scrape(gw.url, "wrong")[0] == 401
    status, text = scrape(gw.url, "scrape-token-0123")
    assert status == 200
    assert value(text, "llmgate_requests_total", route="bot", status_class="2xx") == 1
    label_values = {v for s in samples(text) for v in s.labels.values()}
    for secret in (UPSTREAM_KEY, CALLER_KEY, "scrape-token-0123", request_id, "alice@example.com"):
        assert secret not in text
        assert secret not in label_values


def test_overhead_header_is_the_gateways_own_time(fake_openai, make_gateway):
    gw = make_gateway(gateway_config(fake_openai))
    sdk = client(gw.url)
    started = time.perf_counter()
    raw = sdk.chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": "slow [sleep 0.3]"}]
    )
    elapsed_ms = (time.perf_counter() - started) * 1000
    overhead = float(raw.headers["x-llmgate-overhead-ms"])
    # the 300 ms the upstream slept are not the gateway's: what is left is at most what the caller saw minus them
    assert 0 <= overhead <= elapsed_ms - 300

    with sdk.chat.completions.with_streaming_response.create(
        model="bot", messages=[{"role": "user", "content": "stream [sleep 0.2]"}], stream=True
    ) as streamed:
        assert 0 <= float(streamed.headers["x-llmgate-overhead-ms"])
        assert [line for line in streamed.iter_lines() if line]

    with pytest.raises(openai.NotFoundError) as missing:
        sdk.chat.completions.create(model="no-such-route", messages=[{"role": "user", "content": "hi"}])
    assert float(missing.value.response.headers["x-llmgate-overhead-ms"]) >= 0
    with urllib.request.urlopen(gw.url + "/v1/models") as resp:
        assert float(resp.headers["x-llmgate-overhead-ms"]) >= 0
