"""A prompt too long for a backend moves to the route's context_fallback: on the upstream's own too-long
error (each kind's real body), or before any call where the backend's context_window is configured."""

import time

import anthropic
import openai
import pytest

from gateway.config import ConfigError, parse_config
from gateway.errors import from_upstream_status, prompt_too_long
from plugins.traffic_log.plugin import read_records
from tests.conftest import backend_config

WINDOW = 30  # the short backend's window, in the fakes' tokens (words)
LONG_PROMPT = " ".join(["word"] * 40)


@pytest.fixture
def long_fake(openai_fakes):
    return openai_fakes()


@pytest.fixture
def spare_fake(openai_fakes):
    return openai_fakes()


def openai_backend(fake, **extra) -> dict:
    return {"kind": "openai", "base_url": fake.url + "/v1", "model": "m", "api_key": "none", **extra}


@pytest.fixture
def config(upstream, long_fake, spare_fake):
    """`short` is each kind in turn, its fake with a 30-token window; `long` takes any prompt; `spare` is
    the ordinary fallback, which a too-long prompt never goes to."""
    kind, fake = upstream
    fake.max_prompt_tokens = WINDOW
    return {
        "backends": {
            "short": backend_config(kind, fake),
            "long": openai_backend(long_fake),
            "spare": openai_backend(spare_fake),
        },
        "routes": {
            "bot": {"baseline": "short", "fallback": ["spare"], "context_fallback": ["long"]},
            "strict": {"baseline": "short", "fallback": ["spare"]},
        },
    }


def client(gw):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="app-key", max_retries=0)


def records(path, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while len(found := list(read_records(path))) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_the_upstreams_too_long_error_moves_the_request_to_the_context_fallback(
    stream, config, upstream, make_gateway, long_fake, spare_fake
):
    _, short_fake = upstream
    gw = make_gateway(config)
    raw = client(gw).chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": LONG_PROMPT}], stream=stream
    )
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        text = raw.parse().choices[0].message.content
    assert text == f"echo: {LONG_PROMPT}"
    assert raw.headers["x-llmgate-variant"] == "long"
    assert raw.headers["x-llmgate-tried"] == "short,long"
    # Asked once (a too-long prompt is not retried), never the ordinary fallback.
    assert len(short_fake.requests) == 1 and len(long_fake.requests) == 1 and spare_fake.requests == []

    short = client(gw).chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": "a short question"}]
    )
    assert short.headers["x-llmgate-variant"] == "short"  # the breaker did not count the too-long answers


def test_without_a_context_fallback_the_caller_gets_the_upstreams_400(config, upstream, make_gateway, spare_fake):
    kind, short_fake = upstream
    gw = make_gateway(config)
    with pytest.raises(openai.BadRequestError) as caught:
        client(gw).chat.completions.create(model="strict", messages=[{"role": "user", "content": LONG_PROMPT}])
    error = caught.value.body
    said = {
        "openai": "This model's maximum context length is 30 tokens",
        "anthropic": "prompt is too long: 40 tokens > 30 maximum",
        "bedrock": "ValidationException: Input is too long for requested model.",
    }[kind]
    assert said in error["message"] and error["message"].startswith("backend 'short' answered 400")
    assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error"
    assert len(short_fake.requests) == 1 and spare_fake.requests == []

    # The Messages API's caller gets it in its own shape.
    messages = anthropic.Anthropic(base_url=gw.url, api_key="app-key", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as caught:
        messages.messages.create(model="strict", max_tokens=50, messages=[{"role": "user", "content": LONG_PROMPT}])
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert said in caught.value.body["error"]["message"]


def test_a_prompt_too_long_for_every_context_fallback_gets_the_last_400(upstream, make_gateway, long_fake):
    kind, short_fake = upstream
    short_fake.max_prompt_tokens = WINDOW
    long_fake.max_prompt_tokens = 35
    gw = make_gateway(
        {
            "backends": {"short": backend_config(kind, short_fake), "long": openai_backend(long_fake)},
            "routes": {"bot": {"baseline": "short", "context_fallback": ["short", "long"]}},
        }
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client(gw).chat.completions.create(model="bot", messages=[{"role": "user", "content": LONG_PROMPT}])
    assert "backend 'long' answered 400: This model's maximum context length is 35" in caught.value.body["message"]
    assert caught.value.response.headers["x-llmgate-tried"] == "short,long"  # `short` once: it had said so
    assert len(short_fake.requests) == 1 and len(long_fake.requests) == 1


def window_config(short_fake, long_fake, context_fallback=("long",)) -> dict:
    return {
        "backends": {
            "short": {**backend_config("openai", short_fake), "context_window": 100},
            "long": openai_backend(long_fake),
        },
        "routes": {"bot": {"baseline": "short", "context_fallback": list(context_fallback)}},
    }


def test_a_configured_window_skips_the_backend_before_any_call(make_gateway, fake_openai, long_fake, tmp_path):
    gw = make_gateway(window_config(fake_openai, long_fake))
    ask = client(gw).chat.completions.with_raw_response.create

    raw = ask(model="bot", messages=[{"role": "user", "content": "x" * 440}])  # about 110 tokens: over 100
    assert raw.headers["x-llmgate-variant"] == "long" and raw.headers["x-llmgate-tried"] == "short,long"
    assert fake_openai.requests == []  # skipped: never called

    # The answer's max_tokens counts: 80 + 30 does not fit 100, 80 + 10 does.
    served = [
        ask(model="bot", max_tokens=n, messages=[{"role": "user", "content": "x" * 320}]).headers["x-llmgate-variant"]
        for n in (30, 10)
    ]
    assert served == ["long", "short"]
    assert len(fake_openai.requests) == 1 and len(long_fake.requests) == 2

    skipped = records(tmp_path / "traffic.db", 3)[0]
    assert skipped["served_by"] == "long"
    assert [(a["backend"], a["status"]) for a in skipped["attempts"]] == [("short", 400), ("long", 200)]
    assert skipped["attempts"][0]["error"] == (
        "backend 'short' was skipped: the prompt (about 110 tokens) does not fit its context window of 100 tokens"
    )


def test_a_window_skip_without_a_context_fallback_is_the_callers_400(make_gateway, fake_openai, long_fake):
    gw = make_gateway(window_config(fake_openai, long_fake, context_fallback=()))
    with pytest.raises(openai.BadRequestError) as caught:
        client(gw).chat.completions.create(
            model="bot", max_tokens=30, messages=[{"role": "user", "content": "x" * 320}]
        )
    assert caught.value.body["code"] == "context_length_exceeded"
    assert caught.value.body["message"] == (
        "backend 'short' was skipped: the prompt (about 80 tokens) and max_tokens 30 do not fit its context "
        "window of 100 tokens"
    )
    assert fake_openai.requests == [] and long_fake.requests == []


# Each provider's own words for it (OpenAI and compatible servers, Anthropic, Bedrock), and what is not it.
TOO_LONG = [
    '{"error":{"message":"This model\'s maximum context length is 4097 tokens. However, your messages resulted in '
    '4294 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages",'
    '"code":"context_length_exceeded"}}',
    '{"error":{"message":"Your input exceeds the context window of this model. Please adjust your input and try '
    'again.","type":"invalid_request_error","param":"input","code":"context_length_exceeded"}}',
    '{"object":"error","message":"This model\'s maximum context length is 8192 tokens. However, you requested 8203 '
    'tokens (7691 in the messages, 512 in the completion).","type":"BadRequestError","param":null,"code":400}',
    '{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it",'
    '"type":"exceed_context_size_error","n_prompt_tokens":5000,"n_ctx":4096}}',
    '{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208310 tokens > 200000 '
    'maximum"},"request_id":"req_011CVQe1dLrGNMJyE1ghG1av"}',
    '{"type":"error","error":{"type":"invalid_request_error","message":"input length and `max_tokens` exceed '
    'context limit: 198000 + 8192 > 200000, decrease input length or `max_tokens` and try again"}}',
    "ValidationException: Input is too long for requested model.",
    "ValidationException: The model returned the following errors: prompt is too long: 227255 tokens > 200000 maximum",
    "ValidationException: too many input tokens",
]
NOT_TOO_LONG = [
    '{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: 10000 > 4096, which is the '
    'maximum allowed number of output tokens for claude-3-5-sonnet-20240620"}}',
    '{"error":{"message":"Invalid \'messages[1].content\': string too long.","type":"invalid_request_error"}}',
    "ValidationException: The format of the value at toolConfig.tools.0.toolSpec.inputSchema.json is invalid.",
]


@pytest.mark.parametrize("body", TOO_LONG)
def test_each_providers_too_long_error_is_recognised(body):
    assert prompt_too_long(400, body)
    error = from_upstream_status("b", 400, "detail", body=body)
    assert error.too_long and error.code == "context_length_exceeded" and error.status == 400
    assert not prompt_too_long(500, body)  # a failure of the provider's is never the prompt's length


@pytest.mark.parametrize("body", NOT_TOO_LONG)
def test_other_refusals_are_not_taken_for_a_long_prompt(body):
    error = from_upstream_status("b", 400, "detail", body=body)
    assert not error.too_long and error.code is None


def test_config_check_names_a_context_fallback_it_does_not_know():
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "backends": {"short": {"kind": "openai", "model": "m"}, "long": {"kind": "openai", "model": "m"}},
                "routes": {"bot": {"baseline": "short", "context_fallback": ["lnog"]}},
            }
        )
    assert caught.value.problems == [
        "routes.bot.context_fallback[0]: unknown backend 'lnog' (did you mean 'long'? defined: long, short)"
    ]
