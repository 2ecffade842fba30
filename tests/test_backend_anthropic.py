"""The `anthropic` kind: the fake speaks the real Messages protocol (checked with the official SDK),
requests are translated faithfully, and OpenAI clients see ordinary chat completions through the gateway."""

import base64
import json

import anthropic
import openai
import pytest

from gateway.backends.anthropic import AnthropicBackend, from_message, to_messages_request
from gateway.chat import StreamAssembler
from gateway.config import Config, GatewaySettings
from gateway.errors import InvalidRequest, UpstreamError
from tests.conftest import UPSTREAM_KEY, backend_config
from tests.fakes.anthropic_api import REDACTED_DATA, sign

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time"}}


def user(text):
    return [{"role": "user", "content": text}]


# --- (a) the fake speaks the real protocol: the official anthropic SDK talks to it ---


@pytest.fixture
def sdk(fake_anthropic):
    return anthropic.Anthropic(base_url=fake_anthropic.url, api_key=UPSTREAM_KEY, max_retries=0)


def test_sdk_message(sdk, fake_anthropic):
    msg = sdk.messages.create(model="claude-test", max_tokens=50, system="be brief", messages=user("hello there"))
    assert msg.id.startswith("msg_") and msg.model == "claude-test" and msg.role == "assistant"
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == "echo: hello there"
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (4, 3)  # "be brief" + "hello there"
    assert fake_anthropic.requests[-1]["system"] == "be brief"


def test_sdk_stream_text(sdk):
    with sdk.messages.stream(model="claude-test", max_tokens=50, messages=user("hello there")) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces == ["echo:", " hello", " there"]
    assert final.content[0].text == "echo: hello there"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3


def test_sdk_raw_stream_events(sdk):
    events = list(sdk.messages.create(model="claude-test", max_tokens=50, messages=user("hi"), stream=True))
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # the SDK drops ping
    assert events[0].message.usage.input_tokens == 1
    assert events[-2].delta.stop_reason == "end_turn" and events[-2].usage.output_tokens == 2


def test_sdk_tool_use_stream_and_not(sdk):
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    msg = sdk.messages.create(model="claude-test", max_tokens=50, tools=tools, messages=user("[tool] weather?"))
    assert msg.stop_reason == "tool_use"
    assert (msg.content[0].type, msg.content[0].name, msg.content[0].input) == (
        "tool_use",
        "get_weather",
        {"city": "Paris"},
    )
    with sdk.messages.stream(
        model="claude-test", max_tokens=50, tools=tools, messages=user("[tool] weather?")
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert (final.content[0].id, final.content[0].input) == ("toolu_1", {"city": "Paris"})  # partial JSON joined


def test_sdk_tool_result(sdk):
    msg = sdk.messages.create(
        model="claude-test",
        max_tokens=50,
        messages=[
            {"role": "user", "content": "[tool] weather?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
        ],
    )
    assert msg.content[0].text == "tool said: sunny"


def test_sdk_thinking_whole_and_streamed(sdk, fake_anthropic):
    thinking = {"type": "enabled", "budget_tokens": 1024}
    msg = sdk.messages.create(model="claude-test", max_tokens=2000, thinking=thinking, messages=user("hi [redacted]"))
    assert [b.type for b in msg.content] == ["thinking", "redacted_thinking", "text"]
    assert msg.content[0].signature == sign(msg.content[0].thinking)
    with sdk.messages.stream(
        model="claude-test", max_tokens=2000, thinking=thinking, messages=user("hi [redacted]")
    ) as stream:
        final = stream.get_final_message()  # the SDK joins thinking_delta and signature_delta itself
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in msg.content]
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        sdk.messages.create(model="claude-test", max_tokens=1024, thinking=thinking, messages=user("hi"))


def test_sdk_errors(sdk, fake_anthropic):
    bad_key = anthropic.Anthropic(base_url=fake_anthropic.url, api_key="sk-wrong-key-000000", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad_key.messages.create(model="claude-test", max_tokens=5, messages=user("hi"))
    fake_anthropic.fail_next(529)
    with pytest.raises(anthropic.APIStatusError) as info:
        sdk.messages.create(model="claude-test", max_tokens=5, messages=user("hi"))
    assert info.value.status_code == 529 and info.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.BadRequestError, match="alternate"):
        sdk.messages.create(
            model="claude-test",
            max_tokens=5,
            messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        )
    fake_anthropic.stream_error_next = "overloaded_error"
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        list(sdk.messages.create(model="claude-test", max_tokens=5, messages=user("hi"), stream=True))


# --- (b) translation: what the upstream receives ---


@pytest.fixture
def gateway(make_gateway, fake_anthropic):
    def make(**settings):
        gw = make_gateway(
            {
                "backends": {"up": {**backend_config("anthropic", fake_anthropic), **settings}},
                "routes": {"bot": {"baseline": "up"}},
            }
        )
        return openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)

    return make


@pytest.fixture
def client(gateway):
    return gateway()


def test_request_system_and_headers(client, fake_anthropic):
    client.chat.completions.create(
        model="bot",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": "use French"},
            {"role": "user", "content": "hello"},
        ],
    )
    sent = fake_anthropic.requests[-1]
    assert sent["system"] == "be brief\n\nuse French"
    assert sent["model"] == "claude-test"
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    assert "stream" not in sent and "temperature" not in sent and "tools" not in sent
    headers = fake_anthropic.headers[-1]
    assert headers["x-api-key"] == UPSTREAM_KEY and headers["anthropic-version"] == "2023-06-01"
    client.chat.completions.create(model="bot", messages=user("again"))
    assert "system" not in fake_anthropic.requests[-1]


def test_request_max_tokens(gateway, fake_anthropic):
    client = gateway()
    client.chat.completions.create(model="bot", messages=user("hi"))
    assert fake_anthropic.requests[-1]["max_tokens"] == 4096
    client.chat.completions.create(model="bot", messages=user("hi"), max_tokens=33)
    assert fake_anthropic.requests[-1]["max_tokens"] == 33
    client.chat.completions.create(model="bot", messages=user("hi"), max_completion_tokens=44)
    assert fake_anthropic.requests[-1]["max_tokens"] == 44
    gateway(
        max_tokens_default=77, anthropic_version="2099-01-01", headers={"anthropic-beta": "x"}
    ).chat.completions.create(model="bot", messages=user("hi"))
    assert fake_anthropic.requests[-1]["max_tokens"] == 77
    assert fake_anthropic.headers[-1]["anthropic-version"] == "2099-01-01"
    assert fake_anthropic.headers[-1]["anthropic-beta"] == "x"


def test_request_sampling_parameters(client, fake_anthropic):
    client.chat.completions.create(
        model="bot", messages=user("hi"), temperature=1.7, top_p=0.9, stop="END", user="user-42"
    )
    sent = fake_anthropic.requests[-1]
    assert sent["temperature"] == 1.0  # clamped to Anthropic's range
    assert sent["top_p"] == 0.9 and sent["stop_sequences"] == ["END"] and sent["metadata"] == {"user_id": "user-42"}
    client.chat.completions.create(model="bot", messages=user("hi"), temperature=0.3, stop=["a", "b"])
    sent = fake_anthropic.requests[-1]
    assert sent["temperature"] == 0.3 and sent["stop_sequences"] == ["a", "b"]


@pytest.mark.parametrize(
    "choice, parallel, expected",
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        ({"type": "function", "function": {"name": "get_time"}}, None, {"type": "tool", "name": "get_time"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, None, None),
    ],
)
def test_request_tools_and_tool_choice(client, fake_anthropic, choice, parallel, expected):
    extra = {k: v for k, v in (("tool_choice", choice), ("parallel_tool_calls", parallel)) if v is not None}
    client.chat.completions.create(model="bot", messages=user("hi"), tools=[WEATHER, CLOCK], **extra)
    sent = fake_anthropic.requests[-1]
    assert sent["tools"] == [
        {"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER["function"]["parameters"]},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert sent.get("tool_choice") == expected


def test_request_tool_use_and_result(client, fake_anthropic):
    answer = client.chat.completions.create(
        model="bot",
        tools=[WEATHER],
        messages=[
            {"role": "system", "content": "s"},
            {"role": "user", "content": "[tool] weather?"},
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "toolu_9",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_9", "content": "snow"},
        ],
    )
    assert answer.choices[0].message.content == "tool said: snow"
    assert fake_anthropic.requests[-1]["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "[tool] weather?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Oslo"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "snow"}]},
    ]


def test_request_images(client, fake_anthropic):
    answer = client.chat.completions.create(
        model="bot",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            }
        ],
    )
    assert answer.choices[0].message.content == "echo: what is this"
    assert fake_anthropic.requests[-1]["messages"][0]["content"] == [
        {"type": "text", "text": "what is this"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_translation_functions():
    request = to_messages_request(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "x"}]}],
        },
        10,
    )
    assert request == {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
    }
    request = to_messages_request({"model": "m", "messages": user("x"), "tool_choice": "none"}, 10)
    assert "tool_choice" not in request and "tools" not in request  # the API refuses tool_choice alone
    answer = from_message(
        {
            "id": "msg_1",
            "model": "claude-x",
            "stop_reason": "max_tokens",
            "content": [
                {"type": "thinking", "thinking": "hmm"},
                {"type": "text", "text": "a"},
                {"type": "text", "text": "b"},
            ],
            "usage": {
                "input_tokens": 3,
                "cache_creation_input_tokens": 4,
                "cache_read_input_tokens": 5,
                "output_tokens": 6,
            },
        }
    )
    assert answer["id"] == "msg_1" and answer["model"] == "claude-x"
    assert answer["choices"][0]["message"] == {
        "role": "assistant",
        "content": "ab",
        "reasoning_content": "hmm",
        "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": ""}],
    }
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 6,
        "total_tokens": 18,
        "prompt_tokens_details": {"cached_tokens": 5},
        "cache_creation_input_tokens": 4,
    }


# --- (c) through the gateway with the official openai SDK ---


def test_text_answer(client):
    answer = client.chat.completions.create(model="bot", messages=user("hello there"))
    assert answer.id.startswith("msg_")
    assert answer.choices[0].message.content == "echo: hello there"
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (2, 3, 5)


def test_streamed_text(client):
    chunks = list(client.chat.completions.create(model="bot", messages=user("hello there"), stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert all(c.usage is None for c in chunks)  # not asked for
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("msg_")


def test_tool_call(client):
    answer = client.chat.completions.create(model="bot", messages=user("[tool] weather in Paris?"), tools=[WEATHER])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert (call.id, call.type, call.function.name) == ("toolu_1", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_streamed_tool_call(client):
    chunks = list(
        client.chat.completions.create(model="bot", messages=user("[tool] weather?"), tools=[WEATHER], stream=True)
    )
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert calls[0].id == "toolu_1" and calls[0].function.name == "get_weather"
    assert {tc.index for tc in calls} == {0}
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_tool_result_round_trip(client, fake_anthropic):
    first = client.chat.completions.create(model="bot", messages=user("[tool] weather?"), tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    messages = user("[tool] weather?") + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    answer = client.chat.completions.create(model="bot", messages=messages, tools=[WEATHER])
    assert answer.choices[0].message.content == "tool said: sunny, 21C"
    assert answer.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model="bot", messages=messages, tools=[WEATHER], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "tool said: sunny, 21C"
    sent = fake_anthropic.requests[-1]["messages"]
    assert sent[1]["content"] == [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
    ]
    assert sent[2]["content"][0]["tool_use_id"] == "toolu_1"


def test_stream_usage(client, fake_anthropic):
    fake_anthropic.cache_read_tokens = 2
    chunks = list(
        client.chat.completions.create(
            model="bot", messages=user("one two three"), stream=True, stream_options={"include_usage": True}
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (3, 4, 7)
    assert last.usage.prompt_tokens_details.cached_tokens == 2
    answer = client.chat.completions.create(model="bot", messages=user("one two three"))
    assert answer.usage.prompt_tokens == 3 and answer.usage.prompt_tokens_details.cached_tokens == 2


def test_upstream_400_is_bad_request(client):
    with pytest.raises(openai.BadRequestError, match="upstream says 400"):
        client.chat.completions.create(model="bot", messages=user("[status 400]"))
    with pytest.raises(openai.BadRequestError, match="upstream says 400"):
        client.chat.completions.create(model="bot", messages=user("[status 400]"), stream=True)


def test_upstream_overloaded_is_retried(client, fake_anthropic):
    fake_anthropic.fail_next(529)
    answer = client.chat.completions.create(model="bot", messages=user("hi"))
    assert answer.choices[0].message.content == "echo: hi"
    assert len(fake_anthropic.requests) == 2  # one retry on the same backend


def test_n_refused(client, fake_anthropic):
    with pytest.raises(openai.BadRequestError, match="'n'") as info:
        client.chat.completions.create(model="bot", messages=user("hi"), n=2)
    assert info.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError, match="'n'"):
        client.chat.completions.create(model="bot", messages=user("hi"), n=3, stream=True)
    with pytest.raises(openai.BadRequestError, match="'logprobs'") as info:
        client.chat.completions.create(model="bot", messages=user("hi"), logprobs=True)
    assert info.value.body["param"] == "logprobs" and "backend 'up' (anthropic)" in info.value.body["message"]
    assert fake_anthropic.requests == []


# --- the backend itself, for what a gateway caller cannot see ---


@pytest.fixture
async def backend(fake_anthropic):
    b = AnthropicBackend(
        "claude",
        AnthropicBackend.Settings(
            kind="anthropic", model="claude-test", base_url=fake_anthropic.url, api_key=UPSTREAM_KEY
        ),
        {},
    )
    await b.start()
    yield b
    await b.close()


async def test_stream_error_event(backend, fake_anthropic):
    for error_type, retryable in (("overloaded_error", True), ("invalid_request_error", False)):
        fake_anthropic.stream_error_next = error_type
        chunks = []
        with pytest.raises(UpstreamError, match=f"backend 'claude' failed mid-stream: {error_type}") as info:
            async for chunk in backend.stream({"model": "bot", "messages": user("hi")}):
                chunks.append(chunk)
        assert info.value.retryable is retryable
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


async def test_stream_cut(backend):
    with pytest.raises(UpstreamError, match="'claude'") as info:
        async for _ in backend.stream({"model": "bot", "messages": user("one two three [cut]")}):
            pass
    assert info.value.retryable


async def test_upstream_auth_failure(fake_anthropic):
    b = AnthropicBackend(
        "claude",
        AnthropicBackend.Settings(
            kind="anthropic", model="m", base_url=fake_anthropic.url, api_key="sk-wrong-0000000000"
        ),
        {},
    )
    await b.start()
    try:
        with pytest.raises(UpstreamError, match="backend 'claude' answered 401: invalid x-api-key") as info:
            await b.complete({"model": "bot", "messages": user("hi")})
        assert info.value.status == 502 and not info.value.retryable
    finally:
        await b.close()


async def test_refusals_before_calling(backend, fake_anthropic):
    with pytest.raises(InvalidRequest, match="must start with a user message"):
        await backend.complete({"model": "bot", "messages": [{"role": "assistant", "content": "hi"}]})
    assert fake_anthropic.requests == []


# --- thinking, JSON answers and the prompt cache ---


def test_thinking_and_a_tool_round_trip_send_the_signature_back_unchanged(client, fake_anthropic):
    first = client.chat.completions.create(
        model="bot", messages=user("[tool] weather?"), tools=[WEATHER], reasoning_effort="low"
    )
    sent = fake_anthropic.requests[-1]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048} and sent["max_tokens"] == 4096
    message = first.choices[0].message
    assert message.model_extra["reasoning_content"] == "The user said: [tool] weather?"
    [block] = message.model_extra["thinking_blocks"]
    assert block == {
        "type": "thinking",
        "thinking": "The user said: [tool] weather?",
        "signature": sign("The user said: [tool] weather?"),
    }
    result = {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "sunny"}
    messages = user("[tool] weather?") + [message.model_dump(exclude_none=True), result]
    answer = client.chat.completions.create(model="bot", messages=messages, tools=[WEATHER], reasoning_effort="low")
    assert answer.choices[0].message.content == "tool said: sunny"
    turn = fake_anthropic.requests[-1]["messages"][1]["content"]
    assert turn[0] == block and [b["type"] for b in turn] == ["thinking", "tool_use"]  # thinking first, as Claude asks

    bare = {k: v for k, v in message.model_dump(exclude_none=True).items() if k != "thinking_blocks"}
    with pytest.raises(openai.BadRequestError, match="must start with a thinking block"):  # what Claude says
        client.chat.completions.create(
            model="bot", messages=user("[tool] weather?") + [bare, result], tools=[WEATHER], reasoning_effort="low"
        )


async def test_streamed_thinking_is_assembled_like_the_whole_answer(backend, fake_anthropic):
    body = {"model": "bot", "messages": user("hi [redacted]"), "reasoning_effort": "medium"}
    assembler, chunks = StreamAssembler(), []
    async for chunk in backend.stream(body):
        chunks.append(chunk)
        assembler.add(chunk)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert [d["reasoning_content"] for d in deltas if "reasoning_content" in d] == ["The user", " said: hi [redacted]"]
    ended = [d["thinking_blocks"] for d in deltas if "thinking_blocks" in d]
    text = "The user said: hi [redacted]"
    assert ended == [
        [{"type": "thinking", "thinking": text, "signature": sign(text)}],
        [{"type": "redacted_thinking", "data": REDACTED_DATA}],
    ]
    streamed = assembler.result()["choices"][0]
    whole = (await backend.complete(body))["choices"][0]
    assert (
        streamed["message"]
        == whole["message"]
        == {
            "role": "assistant",
            "content": "echo: hi [redacted]",
            "reasoning_content": text,
            "thinking_blocks": [ended[0][0], ended[1][0]],
        }
    )
    assert streamed["finish_reason"] == whole["finish_reason"] == "stop"
    sent = fake_anthropic.requests[-1]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 8192} and sent["max_tokens"] == 8192 + 4096


async def test_what_claude_refuses_beside_thinking_is_refused_by_name(backend, fake_anthropic):
    base = {"model": "bot", "messages": user("hi"), "reasoning_effort": "high"}
    for extra, param in (
        ({"temperature": 0.2}, "temperature"),
        ({"top_p": 0.5}, "top_p"),
        ({"top_k": 5}, "top_k"),
        ({"tools": [WEATHER], "tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ):
        with pytest.raises(InvalidRequest, match="while thinking is on") as info:
            await backend.complete({**base, **extra})
        assert info.value.param == param and "backend 'claude' (anthropic)" in info.value.message
    with pytest.raises(InvalidRequest) as info:
        await backend.complete({**base, "reasoning_effort": "maximal"})
    assert info.value.param == "reasoning_effort"
    assert fake_anthropic.requests == []
    await backend.complete({**base, "temperature": 1.5, "top_p": 0.97})  # clamped to 1: what thinking takes
    assert fake_anthropic.requests[-1]["max_tokens"] == 16384 + 4096
    await backend.complete({**base, "reasoning_effort": "none", "temperature": 0.2})
    assert "thinking" not in fake_anthropic.requests[-1]


async def test_explicit_thinking_and_the_effort_setting(fake_anthropic):
    settings = {"kind": "anthropic", "model": "claude-test", "base_url": fake_anthropic.url, "api_key": UPSTREAM_KEY}
    b = AnthropicBackend("claude", AnthropicBackend.Settings(**settings, reasoning_effort_as="effort"), {})
    await b.start()
    try:
        await b.complete({"model": "bot", "messages": user("hi"), "reasoning_effort": "high", "top_k": 3})
        sent = fake_anthropic.requests[-1]
        assert sent["output_config"] == {"effort": "high"} and "thinking" not in sent and sent["top_k"] == 3
        adaptive = {"type": "adaptive"}
        answer = await b.complete(
            {"model": "bot", "messages": user("hi"), "thinking": adaptive, "reasoning_effort": "xhigh"}
        )
        sent = fake_anthropic.requests[-1]
        assert sent["thinking"] == adaptive and sent["output_config"] == {"effort": "xhigh"}
        assert answer["choices"][0]["message"]["reasoning_content"] == "The user said: hi"
    finally:
        await b.close()


SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "city",
        "schema": {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]},
    },
}


async def test_json_schema_through_a_forced_tool(backend, fake_anthropic):
    body = {"model": "bot", "messages": user("Paris?"), "response_format": SCHEMA}
    whole = (await backend.complete(body))["choices"][0]
    sent = fake_anthropic.requests[-1]
    assert sent["tools"] == [
        {
            "name": "city",
            "description": "Give your answer as this tool's input, in this JSON schema.",
            "input_schema": SCHEMA["json_schema"]["schema"],
        }
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": "city"}
    assert whole["message"] == {"role": "assistant", "content": '{"answer": "echo: Paris?"}'}
    assert whole["finish_reason"] == "stop"
    assembler = StreamAssembler()
    async for chunk in backend.stream(body):
        assembler.add(chunk)
    streamed = assembler.result()["choices"][0]
    assert json.loads(streamed["message"]["content"]) == {"answer": "echo: Paris?"}
    assert streamed["finish_reason"] == "stop" and "tool_calls" not in streamed["message"]

    # beside the caller's tools the model must call one of them or answer through the schema's tool
    answer = await backend.complete({**body, "tools": [WEATHER], "messages": user("[tool] weather?")})
    assert fake_anthropic.requests[-1]["tool_choice"] == {"type": "any"}
    assert [t["name"] for t in fake_anthropic.requests[-1]["tools"]] == ["get_weather", "city"]
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    assert answer["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    await backend.complete({"model": "bot", "messages": user("x"), "response_format": {"type": "json_object"}})
    assert fake_anthropic.requests[-1]["tool_choice"] == {"type": "tool", "name": "json_answer"}
    with pytest.raises(InvalidRequest, match="named 'get_weather'") as info:
        await backend.complete(
            {
                **body,
                "tools": [WEATHER],
                "response_format": {"type": "json_schema", "json_schema": {"name": "get_weather", "schema": {}}},
            }
        )
    assert info.value.param == "response_format"


async def test_native_structured_output(fake_anthropic):
    settings = {"kind": "anthropic", "model": "claude-test", "base_url": fake_anthropic.url, "api_key": UPSTREAM_KEY}
    b = AnthropicBackend("claude", AnthropicBackend.Settings(**settings, structured_output="native"), {})
    await b.start()
    try:
        await b.complete({"model": "bot", "messages": user("hi"), "response_format": SCHEMA, "reasoning_effort": "low"})
        sent = fake_anthropic.requests[-1]
        assert sent["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA["json_schema"]["schema"]}}
        assert "tools" not in sent and sent["thinking"]["type"] == "enabled"  # no forced tool: thinking is fine
    finally:
        await b.close()


async def test_cache_control_marks_blocks_and_cache_usage_is_reported_and_priced(backend, fake_anthropic):
    mark = {"type": "ephemeral"}
    hour = {"type": "ephemeral", "ttl": "1h"}
    body = {
        "model": "bot",
        "tools": [{**WEATHER, "cache_control": mark}],
        "messages": [
            {
                "role": "system",
                "content": [
                    {"type": "text", "text": "long rules", "cache_control": hour},
                    {"type": "text", "text": "today"},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "[tool] weather?", "cache_control": mark},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                        "cache_control": mark,
                    },
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                        "cache_control": mark,
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny", "cache_control": mark, "is_error": True},
        ],
    }
    fake_anthropic.cache_read_tokens, fake_anthropic.cache_write_tokens = 2, 3
    answer = await backend.complete(body)
    sent = fake_anthropic.requests[-1]
    assert sent["system"] == [
        {"type": "text", "text": "long rules", "cache_control": hour},
        {"type": "text", "text": "today"},
    ]
    assert sent["tools"][0]["cache_control"] == mark
    assert [b["cache_control"] for b in sent["messages"][0]["content"]] == [mark, mark]
    assert sent["messages"][1]["content"][0]["cache_control"] == mark
    assert sent["messages"][2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": "sunny",
        "is_error": True,
        "cache_control": mark,
    }
    usage = answer["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 2} and usage["cache_creation_input_tokens"] == 3
    chunks = [c async for c in backend.stream(body)]
    assert chunks[-1]["usage"] == usage
    config = Config(
        GatewaySettings.model_validate(
            {
                "backends": {},
                "routes": {},
                "prices": {"claude": {"input": 3, "output": 15, "cached_input": 0.3, "cache_write": 3.75}},
            }
        ),
        "test",
    )
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    expected = ((prompt - 5) * 3 + 2 * 0.3 + 3 * 3.75 + completion * 15) / 1e6
    assert config.cost("claude", None, usage) == pytest.approx(expected)
    without = Config(
        GatewaySettings.model_validate(
            {"backends": {}, "routes": {}, "prices": {"claude": {"input": 3, "output": 15}}}
        ),
        "test",
    )
    assert without.cost("claude", None, usage) == pytest.approx((prompt * 3 + completion * 15) / 1e6)


async def test_documents_go_as_document_blocks(backend, fake_anthropic):
    text = base64.b64encode("plain words".encode()).decode()
    await backend.complete(
        {
            "model": "bot",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "read"},
                        {
                            "type": "file",
                            "file": {"file_data": f"data:text/plain;base64,{text}", "filename": "notes.txt"},
                        },
                    ],
                }
            ],
        }
    )
    assert fake_anthropic.requests[-1]["messages"][0]["content"][1] == {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "plain words"},
        "title": "notes.txt",
    }
    with pytest.raises(InvalidRequest, match="PDF and plain-text"):
        await backend.complete(
            {
                "model": "bot",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "file", "file": {"file_data": f"data:text/csv;base64,{text}"}}],
                    }
                ],
            }
        )
    with pytest.raises(InvalidRequest, match="file_data") as info:
        await backend.complete(
            {
                "model": "bot",
                "messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-123"}}]}],
            }
        )
    assert info.value.param == "messages[0].content[0].file"


async def test_ignored_params_names_the_hints(backend):
    body = {
        "model": "bot",
        "messages": user("hi"),
        "store": True,
        "service_tier": "auto",
        "metadata": {"a": "b"},
        "temperature": 0.2,
        "prompt_cache_key": None,
    }
    assert backend.ignored_params(body) == ["store", "service_tier", "metadata"]
