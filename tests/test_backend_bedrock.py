"""The bedrock kind: its fake speaks the real Converse protocol, its translation, and the gateway end to end."""

import asyncio
import base64
import json
import time

import boto3
import openai
import pytest
from botocore.config import Config
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError

from gateway.backends.bedrock import BedrockBackend
from gateway.chat import StreamAssembler
from gateway.config import Config as GatewayConfig
from gateway.config import GatewaySettings
from gateway.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from tests.conftest import BEDROCK_MODEL, backend_config
from tests.fakes.bedrock_api import REDACTED as BEDROCK_REDACTED
from tests.fakes.bedrock_api import encode_frame, event_frame
from tests.fakes.bedrock_api import sign as bedrock_sign

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake-image").decode()


def runtime_client(fake):
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=fake.url,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


def user(text):
    return [{"role": "user", "content": [{"text": text}]}]


# --- (a) the fake speaks the protocol boto3 speaks --------------------------------------------------


def test_event_stream_frames_decode_with_botocore():
    frames = event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "héllo"}}) + encode_frame(
        {":event-type": "messageStop", ":message-type": "event"}, b'{"stopReason":"end_turn"}'
    )
    buffer = EventStreamBuffer()
    buffer.add_data(frames[:7])  # a frame split across reads
    buffer.add_data(frames[7:])
    messages = list(buffer)
    assert [m.headers[":event-type"] for m in messages] == ["contentBlockDelta", "messageStop"]
    assert messages[0].headers[":content-type"] == "application/json"
    assert messages[0].headers[":message-type"] == "event"
    assert json.loads(messages[0].payload) == {"contentBlockIndex": 0, "delta": {"text": "héllo"}}
    assert messages[1].payload == b'{"stopReason":"end_turn"}'
    corrupt = bytearray(frames)
    corrupt[20] ^= 0xFF
    with pytest.raises(ChecksumMismatch):
        broken = EventStreamBuffer()
        broken.add_data(bytes(corrupt))
        list(broken)


def test_boto3_converse_against_the_fake(fake_bedrock):
    answer = runtime_client(fake_bedrock).converse(modelId=BEDROCK_MODEL, messages=user("hello there"))
    assert answer["output"]["message"] == {"role": "assistant", "content": [{"text": "echo: hello there"}]}
    assert answer["stopReason"] == "end_turn"
    assert answer["usage"] == {"inputTokens": 2, "outputTokens": 3, "totalTokens": 5}
    model_id, body = fake_bedrock.requests[0]
    assert model_id == BEDROCK_MODEL  # the ARN arrived percent-encoded and was decoded
    assert body == {"messages": user("hello there")}
    assert "Credential=AKIAFAKEFAKEFAKEFAKE/" in fake_bedrock.headers[0]["Authorization"]


def test_boto3_converse_stream_against_the_fake(fake_bedrock):
    client = runtime_client(fake_bedrock)
    events = list(client.converse_stream(modelId="anthropic.claude-v2", messages=user("one two"))["stream"])
    assert [next(iter(e)) for e in events] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert (
        "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e) == "echo: one two"
    )
    assert events[-2] == {"messageStop": {"stopReason": "end_turn"}}
    assert events[-1]["metadata"]["usage"] == {"inputTokens": 2, "outputTokens": 3, "totalTokens": 5}

    tools = {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}]}
    events = list(client.converse_stream(modelId="m", messages=user("[tool] weather?"), toolConfig=tools)["stream"])
    assert events[1] == {
        "contentBlockStart": {
            "contentBlockIndex": 0,
            "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather"}},
        }
    }
    arguments = "".join(e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events if "contentBlockDelta" in e)
    assert json.loads(arguments) == {"city": "Paris"}
    assert {"messageStop": {"stopReason": "tool_use"}} in events


def test_boto3_sees_the_fakes_errors_in_the_aws_shape(fake_bedrock):
    client = runtime_client(fake_bedrock)
    for status, code in (
        (429, "ThrottlingException"),
        (400, "ValidationException"),
        (503, "ServiceUnavailableException"),
        (500, "InternalServerException"),
    ):
        fake_bedrock.fail_next(status)
        with pytest.raises(ClientError) as err:
            client.converse(modelId="m", messages=user("hi"))
        assert err.value.response["Error"] == {"Code": code, "Message": "scripted failure"}
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    fake_bedrock.fail_next_stream("throttlingException")
    stream = client.converse_stream(modelId="m", messages=user("a b c"))["stream"]
    with pytest.raises(EventStreamError) as err:
        list(stream)
    assert err.value.response["Error"] == {"Code": "throttlingException", "Message": "scripted stream failure"}


# --- (b) translation, seen from what the fake received ----------------------------------------------


@pytest.fixture
async def make_backend(fake_bedrock):
    started = []

    async def make(**settings):
        config = {**backend_config("bedrock", fake_bedrock), **settings}
        backend = BedrockBackend("br", BedrockBackend.Settings.model_validate(config), {})
        await backend.start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        await backend.close()


async def test_request_translation(fake_bedrock, make_backend):
    backend = await make_backend(additional_model_request_fields={"top_k": 5})
    answer = await backend.complete(
        {
            "model": "route",
            "max_tokens": 100,
            "temperature": 0.3,
            "top_p": 0.9,
            "stop": ["END"],
            "tools": [WEATHER],
            "tool_choice": "auto",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_9", "content": "rainy"},
            ],
        }
    )
    model_id, body = fake_bedrock.requests[0]
    assert model_id == BEDROCK_MODEL
    assert body["system"] == [{"text": "Be brief."}]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"text": "What is this?"}, {"image": {"format": "png", "source": {"bytes": PNG}}}],
        },
        {
            "role": "assistant",
            "content": [{"toolUse": {"toolUseId": "call_9", "name": "get_weather", "input": {"city": "Oslo"}}}],
        },
        {"role": "user", "content": [{"toolResult": {"toolUseId": "call_9", "content": [{"text": "rainy"}]}}]},
    ]
    assert body["inferenceConfig"] == {"maxTokens": 100, "temperature": 0.3, "topP": 0.9, "stopSequences": ["END"]}
    assert body["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "get_weather",
                    "description": "Weather in a city",
                    "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}}},
                }
            }
        ],
        "toolChoice": {"auto": {}},
    }
    assert body["additionalModelRequestFields"] == {"top_k": 5}
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "tool said: rainy"}
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["model"] == BEDROCK_MODEL and answer["id"].startswith("chatcmpl-bedrock-")


@pytest.mark.parametrize(
    "choice, expected",
    [
        ("required", {"any": {}}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"tool": {"name": "get_weather"}}),
        (None, None),
    ],
)
async def test_tool_choice(fake_bedrock, make_backend, choice, expected):
    backend = await make_backend()
    body = {"model": "r", "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER]}
    if choice is not None:
        body["tool_choice"] = choice
    await backend.complete(body)
    config = fake_bedrock.requests[0][1]["toolConfig"]
    assert config["tools"][0]["toolSpec"]["name"] == "get_weather"
    assert config.get("toolChoice") == expected


async def test_tool_choice_none_drops_tools_unless_the_history_needs_them(fake_bedrock, make_backend):
    backend = await make_backend()
    await backend.complete(
        {
            "model": "r",
            "messages": [{"role": "user", "content": "[tool] hi"}],
            "tools": [WEATHER],
            "tool_choice": "none",
        }
    )
    assert "toolConfig" not in fake_bedrock.requests[0][1]
    history = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    await backend.complete({"model": "r", "messages": history, "tools": [WEATHER], "tool_choice": "none"})
    config = fake_bedrock.requests[1][1]["toolConfig"]
    assert [t["toolSpec"]["name"] for t in config["tools"]] == ["get_weather"] and "toolChoice" not in config


async def test_minimal_request_sends_only_what_is_set(fake_bedrock, make_backend):
    backend = await make_backend(model="us.anthropic.claude-3-5-haiku-20241022-v1:0")
    await backend.complete({"model": "r", "messages": [{"role": "user", "content": "hi"}]})
    model_id, body = fake_bedrock.requests[0]
    assert model_id == "us.anthropic.claude-3-5-haiku-20241022-v1:0"
    assert body == {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}


async def test_refusals_happen_before_any_call(fake_bedrock, make_backend):
    backend = await make_backend()
    url_image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]
    with pytest.raises(InvalidRequest, match="base64 data URLs") as refused:
        await backend.complete({"model": "r", "messages": [{"role": "user", "content": "look"}, *url_image]})
    assert refused.value.param == "messages[1].content[0]"  # the part to fix, not just "messages"
    bmp = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/bmp;base64,{PNG}"}}]}]
    with pytest.raises(InvalidRequest, match="png, jpeg, gif or webp"):
        await backend.complete({"model": "r", "messages": bmp})
    with pytest.raises(InvalidRequest, match="'n' must be 1"):
        await backend.complete({"model": "r", "n": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert fake_bedrock.requests == []


async def test_errors_map_to_gateway_errors_without_botocore_retries(fake_bedrock, make_backend):
    backend = await make_backend()
    body = {"model": "r", "messages": [{"role": "user", "content": "hi"}]}
    expected = {429: (429, True), 400: (400, False), 503: (502, True), 500: (502, True), 403: (502, False)}
    for upstream, (status, retryable) in expected.items():
        fake_bedrock.fail_next(upstream)
        with pytest.raises(UpstreamError) as err:
            await backend.complete(body)
        assert (err.value.status, err.value.retryable, err.value.upstream_status) == (status, retryable, upstream)
        assert "scripted failure" in err.value.message
    assert len(fake_bedrock.requests) == len(expected)  # botocore never retried on its own


async def test_stream_errors(fake_bedrock, make_backend):
    backend = await make_backend()
    fake_bedrock.fail_next(503)
    with pytest.raises(UpstreamError) as err:  # an HTTP error comes before the first chunk, so it can fall back
        await backend.stream({"model": "r", "messages": [{"role": "user", "content": "hi"}]}).__anext__()
    assert err.value.upstream_status == 503 and err.value.retryable

    fake_bedrock.fail_next_stream("throttlingException")
    chunks = []
    with pytest.raises(UpstreamError) as err:
        async for chunk in backend.stream({"model": "r", "messages": [{"role": "user", "content": "a b c"}]}):
            chunks.append(chunk)
    assert err.value.status == 429 and "throttlingException" in err.value.message
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "echo:"]

    with pytest.raises(UpstreamError, match="broke the connection") as err:
        async for chunk in backend.stream({"model": "r", "messages": [{"role": "user", "content": "x [cut] y"}]}):
            pass
    assert err.value.retryable


async def test_slow_upstream_times_out(fake_bedrock, make_backend):
    backend = await make_backend(timeout={"connect": 2, "first_byte": 0.3, "total": 5})
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await backend.complete({"model": "r", "messages": [{"role": "user", "content": "[sleep 1] hi"}]})
    assert time.monotonic() - started < 0.9


async def test_stream_closed_early_stops_its_thread(fake_bedrock, make_backend):
    backend = await make_backend(max_concurrency=1)
    words = " ".join(f"w{i}" for i in range(200))  # more events than the hand-over queue holds
    stream = backend.stream({"model": "r", "messages": [{"role": "user", "content": words}]})
    first = await stream.__anext__()
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    await stream.aclose()
    # the only pool thread is free again: a second request gets through
    answer = await asyncio.wait_for(
        backend.complete({"model": "r", "messages": [{"role": "user", "content": "ok"}]}), 5
    )
    assert answer["choices"][0]["message"]["content"] == "echo: ok"


async def test_stream_closed_while_upstream_is_quiet_frees_its_thread(fake_bedrock, make_backend):
    backend = await make_backend(max_concurrency=1)
    fake_bedrock.pause_next_stream(3)
    stream = backend.stream({"model": "r", "messages": [{"role": "user", "content": "hi"}]})
    await stream.__anext__()  # the pump thread now waits on the socket for the next event
    await asyncio.sleep(0.1)
    await stream.aclose()
    started = time.monotonic()
    answer = await asyncio.wait_for(
        backend.complete({"model": "r", "messages": [{"role": "user", "content": "ok"}]}), 5
    )
    assert answer["choices"][0]["message"]["content"] == "echo: ok"
    assert time.monotonic() - started < 1.5  # not the 3 s pause, nor the 60 s read timeout


async def test_explicit_keys_and_cached_usage(fake_bedrock, make_backend, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    backend = await make_backend(aws_access_key_id="AKIAEXPLICITKEY00001", aws_secret_access_key="s3cret-value")
    assert backend.missing_credentials() == []
    await backend.complete({"model": "r", "messages": [{"role": "user", "content": "hi"}]})
    assert "Credential=AKIAEXPLICITKEY00001/" in fake_bedrock.headers[0]["Authorization"]
    assert "s3cret-value" not in json.dumps(fake_bedrock.headers[0])

    from gateway.backends.bedrock import _usage

    assert _usage(
        {
            "inputTokens": 10,
            "outputTokens": 4,
            "totalTokens": 64,
            "cacheReadInputTokens": 30,
            "cacheWriteInputTokens": 20,
        }
    ) == {
        "prompt_tokens": 60,
        "completion_tokens": 4,
        "total_tokens": 64,
        "prompt_tokens_details": {"cached_tokens": 30},
        "cache_creation_input_tokens": 20,
    }


def test_missing_credentials_before_start(aws_env, monkeypatch, tmp_path):
    settings = BedrockBackend.Settings.model_validate({"kind": "bedrock", "model": "m", "region": "eu-west-1"})
    assert BedrockBackend("br", settings, {}).missing_credentials() == []  # found in the environment
    named = BedrockBackend.Settings.model_validate(
        {
            "kind": "bedrock",
            "model": "m",
            "region": "eu-west-1",
            "aws_access_key_id": None,
            "aws_secret_access_key": None,
        }
    )
    assert BedrockBackend(
        "br", named, {"aws_access_key_id": "BR_KEY", "aws_secret_access_key": "BR_SECRET"}
    ).missing_credentials() == ["BR_KEY", "BR_SECRET"]  # the config named variables that are unset
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    profiled = BedrockBackend.Settings.model_validate(
        {"kind": "bedrock", "model": "m", "region": "eu-west-1", "profile": "nope"}
    )
    assert "nope" in BedrockBackend("br", profiled, {}).missing_credentials()[0]


# --- (c) through the gateway, with the official openai SDK ------------------------------------------


@pytest.fixture
def client(fake_bedrock, make_gateway):
    gw = make_gateway(
        {
            "backends": {"br": backend_config("bedrock", fake_bedrock)},
            "routes": {"bot": {"baseline": "br", "retries": 0}},
        }
    )
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)


def test_text_answer(client, fake_bedrock):
    answer = client.chat.completions.create(model="bot", messages=[{"role": "user", "content": "hello there"}])
    assert answer.choices[0].message.content == "echo: hello there"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == BEDROCK_MODEL
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (2, 3, 5)
    assert fake_bedrock.requests[0][0] == BEDROCK_MODEL


def test_streamed_text(client):
    chunks = list(
        client.chat.completions.create(model="bot", messages=[{"role": "user", "content": "hello there"}], stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.usage is None for c in chunks)  # the caller did not ask for usage
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-bedrock-")


def test_tool_call(client, fake_bedrock):
    answer = client.chat.completions.create(
        model="bot", messages=[{"role": "user", "content": "[tool] weather?"}], tools=[WEATHER]
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert (call.id, call.type, call.function.name) == ("tooluse_1", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert choice.message.content is None


def test_streamed_tool_call(client):
    chunks = list(
        client.chat.completions.create(
            model="bot", messages=[{"role": "user", "content": "[tool] go"}], tools=[WEATHER], stream=True
        )
    )
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert calls[0].id == "tooluse_1" and calls[0].function.name == "get_weather" and calls[0].index == 0
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_tool_result_round_trip(client, fake_bedrock):
    messages = [{"role": "user", "content": "[tool] weather?"}]
    first = client.chat.completions.create(model="bot", messages=messages, tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    second = client.chat.completions.create(model="bot", messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == "tool said: sunny, 21C"
    sent = fake_bedrock.requests[1][1]["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": [{"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}}],
    }
    assert sent[2] == {
        "role": "user",
        "content": [{"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "sunny, 21C"}]}}],
    }


def test_stream_usage_when_asked(client):
    chunks = list(
        client.chat.completions.create(
            model="bot",
            messages=[{"role": "user", "content": "count these words"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (3, 4, 7)


def test_validation_exception_is_a_bad_request(client, fake_bedrock):
    fake_bedrock.fail_next(400)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="bot", messages=[{"role": "user", "content": "hi"}])
    assert "ValidationException" in err.value.message and "scripted failure" in err.value.message
    assert len(fake_bedrock.requests) == 1


def test_throttling_is_a_rate_limit(client, fake_bedrock):
    fake_bedrock.fail_next(429)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="bot", messages=[{"role": "user", "content": "hi"}])
    assert "ThrottlingException" in err.value.message


def test_no_aws_credentials_is_a_503_naming_them(fake_bedrock, make_gateway, monkeypatch, tmp_path):
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "empty").write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "empty"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "empty"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    gw = make_gateway(
        {"backends": {"br": backend_config("bedrock", fake_bedrock)}, "routes": {"bot": {"baseline": "br"}}}
    )
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="bot", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 503
    assert "AWS_ACCESS_KEY_ID" in err.value.message
    assert fake_bedrock.requests == []


def test_error_inside_the_stream_reaches_the_caller(client, fake_bedrock):
    fake_bedrock.fail_next_stream("modelStreamErrorException")
    stream = client.chat.completions.create(model="bot", messages=[{"role": "user", "content": "a b c"}], stream=True)
    text = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            text.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert "".join(text) == "echo:"
    assert "modelStreamErrorException" in err.value.message and "scripted stream failure" in err.value.message


# --- thinking, JSON answers, documents and the prompt cache (Claude on Bedrock) ---------------------

CLAUDE = "us.anthropic.claude-sonnet-4-20250514-v1:0"


def chat_user(text):
    return [{"role": "user", "content": text}]


async def assembled(backend, body):
    assembler, chunks = StreamAssembler(), []
    async for chunk in backend.stream(body):
        chunks.append(chunk)
        assembler.add(chunk)
    return assembler.result()["choices"][0], chunks


async def test_thinking_and_a_tool_round_trip_send_the_signature_back_unchanged(fake_bedrock, make_backend):
    backend = await make_backend(model=CLAUDE)
    first = await backend.complete(
        {"model": "r", "messages": chat_user("[tool] weather?"), "tools": [WEATHER], "reasoning_effort": "low"}
    )
    sent = fake_bedrock.requests[-1][1]
    assert sent["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": 2048}}
    assert sent["inferenceConfig"] == {"maxTokens": 2048 + 4096}  # Converse needs maxTokens above the budget
    message = first["choices"][0]["message"]
    text = "The user said: [tool] weather?"
    assert message["reasoning_content"] == text
    assert message["thinking_blocks"] == [{"type": "thinking", "thinking": text, "signature": bedrock_sign(text)}]
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    result = {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "sunny"}
    messages = chat_user("[tool] weather?") + [message, result]
    answer = await backend.complete({"model": "r", "messages": messages, "tools": [WEATHER], "reasoning_effort": "low"})
    assert answer["choices"][0]["message"]["content"] == "tool said: sunny"
    turn = fake_bedrock.requests[-1][1]["messages"][1]["content"]
    assert turn[0] == {"reasoningContent": {"reasoningText": {"text": text, "signature": bedrock_sign(text)}}}
    assert "toolUse" in turn[1]

    # the same round trip streamed: the assembled message goes back as it came
    streamed, _ = await assembled(
        backend, {"model": "r", "messages": chat_user("[tool] weather?"), "tools": [WEATHER], "reasoning_effort": "low"}
    )
    assert streamed["message"]["thinking_blocks"] == message["thinking_blocks"]
    assert streamed["message"]["reasoning_content"] == text and streamed["finish_reason"] == "tool_calls"
    await backend.complete(
        {
            "model": "r",
            "messages": chat_user("[tool] weather?") + [streamed["message"], result],
            "tools": [WEATHER],
            "reasoning_effort": "low",
        }
    )

    bare = {k: v for k, v in message.items() if k != "thinking_blocks"}
    with pytest.raises(UpstreamError, match="must start with a thinking block"):
        await backend.complete(
            {
                "model": "r",
                "messages": chat_user("[tool] weather?") + [bare, result],
                "tools": [WEATHER],
                "reasoning_effort": "low",
            }
        )


async def test_streamed_reasoning_and_redacted_bytes(fake_bedrock, make_backend):
    backend = await make_backend(model=CLAUDE)
    body = {
        "model": "r",
        "messages": chat_user("hi [redacted]"),
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    streamed, chunks = await assembled(backend, body)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "The user said: hi [redacted]"
    whole = (await backend.complete(body))["choices"][0]
    assert streamed["message"] == whole["message"]
    redacted = whole["message"]["thinking_blocks"][1]
    assert redacted == {"type": "redacted_thinking", "data": base64.b64encode(BEDROCK_REDACTED).decode()}
    await backend.complete({"model": "r", "messages": [*chat_user("hi"), whole["message"], *chat_user("and?")]})
    sent = fake_bedrock.requests[-1][1]["messages"][1]["content"]
    assert sent[1] == {"reasoningContent": {"redactedContent": base64.b64encode(BEDROCK_REDACTED).decode()}}


async def test_claude_fields_are_refused_for_other_models(fake_bedrock, make_backend):
    backend = await make_backend()  # a provisioned-model ARN: nothing says Claude
    for extra, param in (
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"top_k": 4}, "top_k"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, "thinking"),
    ):
        with pytest.raises(InvalidRequest, match="not an Anthropic Claude model") as info:
            await backend.complete({"model": "r", "messages": chat_user("hi"), **extra})
        assert info.value.param == param and "backend 'br' (bedrock)" in info.value.message
    assert fake_bedrock.requests == []
    history = [
        *chat_user("hi"),
        {
            "role": "assistant",
            "content": "ok",
            "thinking_blocks": [{"type": "thinking", "thinking": "t", "signature": "s"}],
        },
        *chat_user("more"),
    ]
    await backend.complete({"model": "r", "messages": history, "reasoning_effort": "none"})
    assert fake_bedrock.requests[-1][1]["messages"][1] == {"role": "assistant", "content": [{"text": "ok"}]}
    named = await make_backend(claude=True)
    await named.complete({"model": "r", "messages": chat_user("hi"), "top_k": 4})
    assert fake_bedrock.requests[-1][1]["additionalModelRequestFields"] == {"top_k": 4}


async def test_effort_setting_and_native_structured_output(fake_bedrock, make_backend):
    backend = await make_backend(
        model=CLAUDE,
        reasoning_effort_as="effort",
        structured_output="native",
        additional_model_request_fields={"anthropic_beta": ["x"]},
    )
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    await backend.complete(
        {
            "model": "r",
            "messages": chat_user("hi"),
            "reasoning_effort": "medium",
            "response_format": {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}},
        }
    )
    sent = fake_bedrock.requests[-1][1]
    assert sent["outputConfig"] == {
        "effort": "medium",
        "textFormat": {
            "type": "json_schema",
            "structure": {"jsonSchema": {"schema": json.dumps(schema), "name": "reply"}},
        },
    }
    assert sent["additionalModelRequestFields"] == {"anthropic_beta": ["x"]} and "toolConfig" not in sent


async def test_json_schema_through_a_forced_tool(fake_bedrock, make_backend):
    backend = await make_backend(model=CLAUDE)
    body = {
        "model": "r",
        "messages": chat_user("Paris?"),
        "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "object"}}},
    }
    whole = (await backend.complete(body))["choices"][0]
    config = fake_bedrock.requests[-1][1]["toolConfig"]
    assert config["toolChoice"] == {"tool": {"name": "city"}}
    assert config["tools"][0]["toolSpec"]["name"] == "city"
    assert whole["message"] == {"role": "assistant", "content": '{"answer": "echo: Paris?"}'}
    assert whole["finish_reason"] == "stop"
    streamed, _ = await assembled(backend, body)
    assert json.loads(streamed["message"]["content"]) == {"answer": "echo: Paris?"}
    assert streamed["finish_reason"] == "stop" and "tool_calls" not in streamed["message"]
    with pytest.raises(InvalidRequest, match="while thinking is on") as info:
        await backend.complete({**body, "reasoning_effort": "low"})
    assert info.value.param == "response_format"
    await backend.complete({**body, "tools": [WEATHER], "tool_choice": "none"})
    config = fake_bedrock.requests[-1][1]["toolConfig"]  # no history needs get_weather: only the answer's tool
    assert [t["toolSpec"]["name"] for t in config["tools"]] == ["city"] and config["toolChoice"] == {
        "tool": {"name": "city"}
    }


async def test_cache_points_documents_and_cache_usage(fake_bedrock, make_backend):
    backend = await make_backend(model=CLAUDE)
    mark = {"type": "ephemeral"}
    pdf, csv = base64.b64encode(b"%PDF-1.4 x").decode(), base64.b64encode(b"a,b\n1,2").decode()
    fake_bedrock.cache_read_tokens, fake_bedrock.cache_write_tokens = 30, 20
    body = {
        "model": "r",
        "tools": [{**WEATHER, "cache_control": mark}],
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "rules", "cache_control": {**mark, "ttl": "1h"}}]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "file",
                        "file": {"file_data": f"data:application/pdf;base64,{pdf}", "filename": "Q3: report.pdf"},
                    },
                    {
                        "type": "file",
                        "file": {"file_data": f"data:text/csv;base64,{csv}", "filename": "Q3: report.csv"},
                    },
                    {"type": "text", "text": "summarise", "cache_control": mark},
                ],
            },
        ],
    }
    answer = await backend.complete(body)
    sent = fake_bedrock.requests[-1][1]
    assert sent["system"] == [{"text": "rules"}, {"cachePoint": {"type": "default", "ttl": "1h"}}]
    assert sent["toolConfig"]["tools"][1] == {"cachePoint": {"type": "default"}}
    assert sent["messages"][0]["content"] == [
        {"document": {"format": "pdf", "name": "Q3 report", "source": {"bytes": pdf}}},
        {"document": {"format": "csv", "name": "Q3 report (2)", "source": {"bytes": csv}}},
        {"text": "summarise"},
        {"cachePoint": {"type": "default"}},
    ]
    usage = answer["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] - usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 30} and usage["cache_creation_input_tokens"] == 20
    _, chunks = await assembled(backend, body)
    assert chunks[-1]["usage"] == usage
    config = GatewayConfig(
        GatewaySettings.model_validate(
            {
                "backends": {},
                "routes": {},
                "prices": {"br": {"input": 3, "output": 15, "cached_input": 0.3, "cache_write": 3.75}},
            }
        ),
        "test",
    )
    expected = ((usage["prompt_tokens"] - 50) * 3 + 30 * 0.3 + 20 * 3.75 + usage["completion_tokens"] * 15) / 1e6
    assert config.cost("br", None, usage) == pytest.approx(expected)
    with pytest.raises(InvalidRequest, match="documents as pdf"):
        await backend.complete(
            {
                "model": "r",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "file", "file": {"file_data": f"data:image/svg+xml;base64,{csv}"}}],
                    }
                ],
            }
        )


async def test_parallel_tool_calls_false_is_refused_only_where_it_matters(fake_bedrock, make_backend):
    backend = await make_backend()
    with pytest.raises(InvalidRequest, match="one tool call at a time") as info:
        await backend.complete(
            {"model": "r", "messages": chat_user("hi"), "tools": [WEATHER], "parallel_tool_calls": False}
        )
    assert info.value.param == "parallel_tool_calls"
    await backend.complete(
        {
            "model": "r",
            "messages": chat_user("hi"),
            "tools": [WEATHER],
            "tool_choice": "none",
            "parallel_tool_calls": False,
        }
    )
    assert backend.ignored_params({"model": "r", "messages": chat_user("hi"), "user": "u", "store": False}) == [
        "user",
        "store",
    ]


async def test_a_thinking_the_model_may_skip_is_moot_for_other_models(fake_bedrock, make_backend):
    backend = await make_backend()  # not Claude; Claude Code sends this on every call
    body = {"model": "r", "messages": chat_user("hi"), "thinking": {"type": "adaptive"}, "reasoning_effort": "high"}
    assert backend.ignored_params(body) == ["thinking", "reasoning_effort"]
    await backend.complete(body)
    sent = fake_bedrock.requests[-1][1]
    assert "additionalModelRequestFields" not in sent and "outputConfig" not in sent
    claude = await make_backend(model=CLAUDE)
    assert claude.ignored_params(body) == []
    await claude.complete(body)
    sent = fake_bedrock.requests[-1][1]
    assert sent["additionalModelRequestFields"] == {"thinking": {"type": "adaptive"}}
    assert sent["outputConfig"] == {"effort": "high"}
