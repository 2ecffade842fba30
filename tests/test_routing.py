"""Retries, fallback, the routes a caller sees, readiness, and what the traffic log records."""

import json
import time
import urllib.request

import openai
import pytest

from plugins.traffic_log.plugin import read_records
from tests.conftest import UPSTREAM_KEY
from tests.fakes.openai_api import FakeOpenAI
from tests.support import serving


def get_json(url: str):
    try:
        with urllib.request.urlopen(url) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def second_openai():
    fake = FakeOpenAI()
    with serving(fake):
        yield fake


@pytest.fixture
def config(fake_openai, second_openai, tmp_path):
    return {
        "backends": {
            "primary": {
                "kind": "openai",
                "base_url": fake_openai.url + "/v1",
                "model": "m-primary",
                "api_key": UPSTREAM_KEY,
            },
            "spare": {"kind": "openai", "base_url": second_openai.url + "/v1", "model": "m-spare", "api_key": "none"},
            "nokey": {"kind": "anthropic", "model": "claude-x", "api_key": "${LLMGATE_TEST_NO_SUCH_KEY}"},
        },
        "routes": {
            "bot": {"baseline": "primary", "fallback": ["spare"], "retries": 1},
            "keyless": {"baseline": "nokey", "fallback": ["spare"]},
        },
        "prices": {"m-primary": {"input": 3.0, "output": 15.0}, "spare": {"input": 1.0, "output": 2.0}},
    }


def client(gw):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="app-key", max_retries=0)


def wait_for_records(path, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        records = list(read_records(path))
        if len(records) >= n or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def test_retryable_error_is_retried_on_the_same_backend(config, make_gateway, fake_openai, second_openai):
    gw = make_gateway(config)
    fake_openai.fail_next(503)
    raw = client(gw).chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-llmgate-variant"] == "primary"
    assert raw.parse().choices[0].message.content == "echo: hi"
    assert len(fake_openai.requests) == 2 and second_openai.requests == []


def test_exhausted_backend_falls_back_along_the_chain(config, make_gateway, fake_openai, second_openai):
    gw = make_gateway(config)
    fake_openai.fail_next(503, 502)
    raw = client(gw).chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-llmgate-variant"] == "spare"
    assert raw.parse().model == "m-spare"
    assert len(second_openai.requests) == 1


def test_caller_errors_do_not_fall_back(config, make_gateway, fake_openai, second_openai):
    gw = make_gateway(config)
    fake_openai.fail_next(400)
    with pytest.raises(openai.BadRequestError):
        client(gw).chat.completions.create(model="bot", messages=[{"role": "user", "content": "hi"}])
    assert second_openai.requests == []


def test_stream_that_fails_to_start_falls_back(config, make_gateway, fake_openai, second_openai):
    gw = make_gateway(config)
    fake_openai.fail_next(503, 503)
    stream = client(gw).chat.completions.create(model="bot", messages=[{"role": "user", "content": "a b"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "echo: a b"
    assert len(second_openai.requests) == 1


def test_backend_without_credentials_falls_back(config, make_gateway, second_openai):
    gw = make_gateway(config)
    answer = client(gw).chat.completions.create(model="keyless", messages=[{"role": "user", "content": "hi"}])
    assert answer.model == "m-spare"


def test_a_callers_request_id_is_echoed_beside_the_gateways_own(config, make_gateway):
    gw = make_gateway(config)
    raw = client(gw).chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-request-id": "caller-id-42"}
    )
    assert raw.headers["x-client-request-id"] == "caller-id-42"  # for the caller's correlation
    assert raw.headers["x-request-id"] != "caller-id-42" and len(raw.headers["x-request-id"]) == 32
    raw = client(gw).chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-request-id": "bad id\twith tab"}
    )
    assert raw.headers["x-request-id"] != "bad id\twith tab" and len(raw.headers["x-request-id"]) == 32


def test_models_lists_the_routes(config, make_gateway):
    gw = make_gateway(config)
    models = client(gw).models.list()
    assert sorted(m.id for m in models.data) == ["bot", "keyless"]
    assert client(gw).models.retrieve("bot").id == "bot"
    with pytest.raises(openai.NotFoundError):
        client(gw).models.retrieve("nope")


def test_health_and_readiness(config, make_gateway):
    gw = make_gateway(config)
    assert get_json(gw.url + "/healthz") == (200, {"status": "ok"})
    status, ready = get_json(gw.url + "/readyz")
    assert status == 200 and ready["status"] == "ready"
    assert ready["state_store"] == {"engine": "sqlite", "reachable": True}
    assert ready["missing_credentials"] == {"nokey": ["LLMGATE_TEST_NO_SUCH_KEY"]}


def test_traffic_log_records_every_exchange(config, make_gateway, tmp_path):
    gw = make_gateway(config)
    c = client(gw)
    c.chat.completions.create(model="bot", messages=[{"role": "user", "content": "one two"}], user="alice")
    list(c.chat.completions.create(model="bot", messages=[{"role": "user", "content": "three"}], stream=True))
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model="bot", messages=[{"role": "user", "content": "[status 500]"}])
    records = wait_for_records(tmp_path / "traffic.db", 3)
    assert [r["status"] for r in records] == [200, 200, 502]
    first, streamed, failed = records
    assert first["route"] == "bot" and first["variant"] == "primary" and first["served_by"] == "primary"
    assert first["request"]["messages"][0]["content"] == "one two"
    assert first["response"]["choices"][0]["message"]["content"] == "echo: one two"
    assert first["prompt_tokens"] == 2 and first["completion_tokens"] == 3
    assert first["cost_usd"] == pytest.approx((2 * 3.0 + 3 * 15.0) / 1e6)
    assert first["sticky_hash"] and "alice" not in json.dumps(first["sticky_hash"])
    assert streamed["stream"] is True
    assert streamed["response"]["choices"][0]["message"]["content"] == "echo: three"
    assert streamed["completion_tokens"] == 2, "usage is logged even when the caller did not ask for it"
    assert streamed["ttft_ms"] is not None and streamed["ttft_ms"] <= streamed["latency_ms"]
    assert failed["error_type"] == "upstream_error"
    assert [a["backend"] for a in failed["attempts"]] == ["primary", "primary", "spare", "spare"]
