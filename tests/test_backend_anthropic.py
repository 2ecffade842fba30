"""The `anthropic` kind: the fake speaks the real Messages protocol (checked with the official SDK),
requests are translated faithfully, and OpenAI clients see ordinary chat completions through the gateway."""
import json

import anthropic
import openai
import pytest

from gateway.backends.anthropic import AnthropicBackend, from_message, to_messages_request
from gateway.errors import InvalidRequest, UpstreamError
from tests.conftest import UPSTREAM_KEY, backend_config

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
CLOCK = {"type": "function", "function": {"name": "get_time"}}


def user(text):
    return [{"role": "user", "content": text}]


# --- (a) the fake speaks the real protocol: the official anthropic SDK talks to it ---

@pytest.fixture
def sdk(fake_anthropic):
    return anthropic.Anthropic(base_url=fake_anthropic.url, api_key=UPSTREAM_KEY, max_retries=0)


def test_sdk_message(sdk, fake_anthropic):
    msg = sdk.messages.create(model="claude-test", max_tokens=50, system="be brief",
                              messages=user("hello there"))
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
    assert [e.type for e in events] == ["message_start", "content_block_start", "content_block_delta",
                                        "content_block_delta", "content_block_stop", "message_delta",
                                        "message_stop"]  # the SDK drops ping
    assert events[0].message.usage.input_tokens == 1
    assert events[-2].delta.stop_reason == "end_turn" and events[-2].usage.output_tokens == 2


def test_sdk_tool_use_stream_and_not(sdk):
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    msg = sdk.messages.create(model="claude-test", max_tokens=50, tools=tools, messages=user("[tool] weather?"))
    assert msg.stop_reason == "tool_use"
    assert (msg.content[0].type, msg.content[0].name, msg.content[0].input) == ("tool_use", "get_weather",
                                                                                 {"city": "Paris"})
    with sdk.messages.stream(model="claude-test", max_tokens=50, tools=tools,
                             messages=user("[tool] weather?")) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert (final.content[0].id, final.content[0].input) == ("toolu_1", {"city": "Paris"})  # partial JSON joined


def test_sdk_tool_result(sdk):
    msg = sdk.messages.create(model="claude-test", max_tokens=50, messages=[
        {"role": "user", "content": "[tool] weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]}])
    assert msg.content[0].text == "tool said: sunny"


def test_sdk_errors(sdk, fake_anthropic):
    bad_key = anthropic.Anthropic(base_url=fake_anthropic.url, api_key="sk-wrong-key-000000", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad_key.messages.create(model="claude-test", max_tokens=5, messages=user("hi"))
    fake_anthropic.fail_next(529)
    with pytest.raises(anthropic.APIStatusError) as info:
        sdk.messages.create(model="claude-test", max_tokens=5, messages=user("hi"))
    assert info.value.status_code == 529 and info.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.BadRequestError, match="alternate"):
        sdk.messages.create(model="claude-test", max_tokens=5,
                            messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    fake_anthropic.stream_error_next = "overloaded_error"
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        list(sdk.messages.create(model="claude-test", max_tokens=5, messages=user("hi"), stream=True))


# --- (b) translation: what the upstream receives ---

@pytest.fixture
def gateway(make_gateway, fake_anthropic):
    def make(**settings):
        gw = make_gateway({"backends": {"up": {**backend_config("anthropic", fake_anthropic), **settings}},
                           "routes": {"bot": {"baseline": "up"}}})
        return openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
    return make


@pytest.fixture
def client(gateway):
    return gateway()


def test_request_system_and_headers(client, fake_anthropic):
    client.chat.completions.create(model="bot", messages=[
        {"role": "system", "content": "be brief"}, {"role": "developer", "content": "use French"},
        {"role": "user", "content": "hello"}])
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
    gateway(max_tokens_default=77, anthropic_version="2099-01-01", headers={"anthropic-beta": "x"}).chat \
        .completions.create(model="bot", messages=user("hi"))
    assert fake_anthropic.requests[-1]["max_tokens"] == 77
    assert fake_anthropic.headers[-1]["anthropic-version"] == "2099-01-01"
    assert fake_anthropic.headers[-1]["anthropic-beta"] == "x"


def test_request_sampling_parameters(client, fake_anthropic):
    client.chat.completions.create(model="bot", messages=user("hi"), temperature=1.7, top_p=0.9, stop="END",
                                   user="user-42")
    sent = fake_anthropic.requests[-1]
    assert sent["temperature"] == 1.0  # clamped to Anthropic's range
    assert sent["top_p"] == 0.9 and sent["stop_sequences"] == ["END"] and sent["metadata"] == {"user_id": "user-42"}
    client.chat.completions.create(model="bot", messages=user("hi"), temperature=0.3, stop=["a", "b"])
    sent = fake_anthropic.requests[-1]
    assert sent["temperature"] == 0.3 and sent["stop_sequences"] == ["a", "b"]


@pytest.mark.parametrize("choice, parallel, expected", [
    ("auto", None, {"type": "auto"}),
    ("required", None, {"type": "any"}),
    ("none", None, {"type": "none"}),
    ({"type": "function", "function": {"name": "get_time"}}, None, {"type": "tool", "name": "get_time"}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    (None, None, None),
])
def test_request_tools_and_tool_choice(client, fake_anthropic, choice, parallel, expected):
    extra = {k: v for k, v in (("tool_choice", choice), ("parallel_tool_calls", parallel)) if v is not None}
    client.chat.completions.create(model="bot", messages=user("hi"), tools=[WEATHER, CLOCK], **extra)
    sent = fake_anthropic.requests[-1]
    assert sent["tools"] == [
        {"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER["function"]["parameters"]},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}]
    assert sent.get("tool_choice") == expected


def test_request_tool_use_and_result(client, fake_anthropic):
    answer = client.chat.completions.create(model="bot", tools=[WEATHER], messages=[
        {"role": "system", "content": "s"},
        {"role": "user", "content": "[tool] weather?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_9", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_9", "content": "snow"}])
    assert answer.choices[0].message.content == "tool said: snow"
    assert fake_anthropic.requests[-1]["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "[tool] weather?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                          {"type": "tool_use", "id": "toolu_9", "name": "get_weather",
                                           "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "snow"}]}]


def test_request_images(client, fake_anthropic):
    answer = client.chat.completions.create(model="bot", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}])
    assert answer.choices[0].message.content == "echo: what is this"
    assert fake_anthropic.requests[-1]["messages"][0]["content"] == [
        {"type": "text", "text": "what is this"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]


def test_translation_functions():
    request = to_messages_request({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": ""}, {"type": "text", "text": "x"}]}]}, 10)
    assert request == {"model": "m", "max_tokens": 10,
                       "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}
    request = to_messages_request({"model": "m", "messages": user("x"), "tool_choice": "none"}, 10)
    assert "tool_choice" not in request and "tools" not in request  # the API refuses tool_choice alone
    answer = from_message({"id": "msg_1", "model": "claude-x", "stop_reason": "max_tokens", "content": [
        {"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        "usage": {"input_tokens": 3, "cache_creation_input_tokens": 4, "cache_read_input_tokens": 5,
                  "output_tokens": 6}})
    assert answer["id"] == "msg_1" and answer["model"] == "claude-x"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "ab"}
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18,
                               "prompt_tokens_details": {"cached_tokens": 5}}


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
    chunks = list(client.chat.completions.create(model="bot", messages=user("[tool] weather?"), tools=[WEATHER],
                                                 stream=True))
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
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}]
    answer = client.chat.completions.create(model="bot", messages=messages, tools=[WEATHER])
    assert answer.choices[0].message.content == "tool said: sunny, 21C"
    assert answer.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model="bot", messages=messages, tools=[WEATHER], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "tool said: sunny, 21C"
    sent = fake_anthropic.requests[-1]["messages"]
    assert sent[1]["content"] == [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                   "input": {"city": "Paris"}}]
    assert sent[2]["content"][0]["tool_use_id"] == "toolu_1"


def test_stream_usage(client, fake_anthropic):
    fake_anthropic.cache_read_tokens = 2
    chunks = list(client.chat.completions.create(model="bot", messages=user("one two three"), stream=True,
                                                 stream_options={"include_usage": True}))
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
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.chat.completions.create(model="bot", messages=user("hi"), response_format={"type": "json_object"})
    assert fake_anthropic.requests == []


# --- the backend itself, for what a gateway caller cannot see ---

@pytest.fixture
async def backend(fake_anthropic):
    b = AnthropicBackend("claude", AnthropicBackend.Settings(kind="anthropic", model="claude-test",
                                                             base_url=fake_anthropic.url, api_key=UPSTREAM_KEY), {})
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
    b = AnthropicBackend("claude", AnthropicBackend.Settings(kind="anthropic", model="m", base_url=fake_anthropic.url,
                                                             api_key="sk-wrong-0000000000"), {})
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
