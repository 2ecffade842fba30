"""gateway/dialects/anthropic_messages.py: the Messages API to the chat form and back, checked against the
official anthropic SDK's own types and stream accumulation.

Pure translation, no network: the SDK talks to an httpx MockTransport that runs the translation in-process.
"""

from __future__ import annotations

import json
import typing

import anthropic
import httpx2 as httpx
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse, ErrorType
from pydantic import TypeAdapter

from gateway.chat import chunk, completion, tool_call, usage, validate_chat_request
from gateway.dialects.anthropic_messages import (
    StreamTranslator,
    error_body,
    error_type,
    from_chat_completion,
    sticky_user,
    to_chat_request,
)
from gateway.errors import InvalidRequest

EVENT = TypeAdapter(RawMessageStreamEvent)
MID = "msg_test123"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER = {
    "name": "get_weather",
    "description": "the weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
EPHEMERAL = {"type": "ephemeral"}


def base(**extra) -> dict:
    return {"model": "claude-route", "max_tokens": 256, "messages": [{"role": "user", "content": "hi"}], **extra}


def chat_of(body: dict) -> tuple[dict, list[str]]:
    chat, ignored = to_chat_request(body)
    validate_chat_request(chat)  # whatever the dialect makes, the request path must accept
    json.dumps(chat)
    return chat, ignored


def refused(body) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        to_chat_request(body)
    assert info.value.status == 400
    assert info.value.message
    return info.value


def answer(content=None, *, calls=(), finish="stop", usage_=None, **extra) -> dict:
    message = {"role": "assistant", "content": content, **extra}
    if calls:
        message["tool_calls"] = [tool_call(id, name, args) for id, name, args in calls]
    return completion("chatcmpl-1", "backend-model", message, finish, usage_ or usage(12, 5))


def message_of(chat_answer: dict, model: str = "claude-route") -> Message:
    data = from_chat_completion(chat_answer, model=model)
    json.dumps(data)  # it goes out as JSON
    return Message.model_validate(data)


def translate(chunks, model: str = "claude-route", message_id: str = MID) -> list[tuple[str, dict]]:
    stream = StreamTranslator(model, message_id)
    events = stream.start()
    for c in chunks:
        events += stream.feed(c)
    return events + stream.finish()


def check_events(events: list[tuple[str, dict]]) -> None:
    """Every event parses as the SDK's own type, and the block protocol holds: indexes count up from 0, one
    block open at a time, deltas only on the open block, every started block stopped."""
    assert [name for name, _ in events[:2]] == ["message_start", "ping"]
    assert [name for name, _ in events[-2:]] == ["message_delta", "message_stop"]
    open_index, next_index = None, 0
    for name, data in events:
        assert data["type"] == name
        if name == "ping":  # not a RawMessageStreamEvent: the SDK's stream reader skips it
            assert data == {"type": "ping"}
            continue
        EVENT.validate_python(data)
        json.dumps(data)
        if name == "content_block_start":
            assert open_index is None and data["index"] == next_index
            open_index, next_index = data["index"], next_index + 1
        elif name == "content_block_delta":
            assert data["index"] == open_index
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
    assert open_index is None


def accumulated(events: list[tuple[str, dict]]) -> Message:
    """The final message as the SDK's own stream accumulation builds it."""
    check_events(events)
    snapshot, buffers = None, {}
    for name, data in events:
        if name == "ping":
            continue
        snapshot = accumulate_event(event=EVENT.validate_python(data), current_snapshot=snapshot, json_bufs=buffers)
    return Message.model_validate(snapshot.to_dict())


def sse(events: list[tuple[str, dict]]) -> bytes:
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


def sdk(backend) -> anthropic.Anthropic:
    """The official client, its requests translated in-process and answered by `backend(chat) -> answer | chunks`."""

    def transport(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/messages"
        try:
            chat, _ = chat_of(json.loads(request.content))
        except InvalidRequest as error:
            return httpx.Response(400, json=error_body(400, error.message))
        result = backend(chat)
        if chat.get("stream"):
            return httpx.Response(
                200, content=sse(translate(result, model=chat["model"])), headers={"content-type": "text/event-stream"}
            )
        return httpx.Response(200, json=from_chat_completion(result, model=chat["model"]))

    return anthropic.Anthropic(
        api_key="sk-ant-test",
        base_url="http://gateway.test",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(transport)),
    )


# --- the request: translation --------------------------------------------------------------------------


def test_a_plain_request_becomes_a_chat_body():
    chat, ignored = chat_of(base(system="be brief"))
    assert chat == {
        "model": "claude-route",
        "max_tokens": 256,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    }
    assert ignored == []


def test_system_blocks_keep_their_cache_markers():
    chat, _ = chat_of(
        base(
            system=[
                {"type": "text", "text": "You are Claude Code."},
                {"type": "text", "text": "Long instructions", "cache_control": EPHEMERAL},
            ]
        )
    )
    assert chat["messages"][0] == {
        "role": "system",
        "content": [
            {"type": "text", "text": "You are Claude Code."},
            {"type": "text", "text": "Long instructions", "cache_control": EPHEMERAL},
        ],
    }
    one, _ = chat_of(base(system=[{"type": "text", "text": "only"}]))
    assert one["messages"][0] == {"role": "system", "content": "only"}
    empty, _ = chat_of(base(system=""))
    assert empty["messages"] == [{"role": "user", "content": "hi"}]


def test_a_system_message_mid_conversation_stays_in_place():
    chat, _ = chat_of(
        base(
            messages=[
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "system", "content": [{"type": "text", "text": "env changed"}]},
                {"role": "user", "content": "c"},
            ]
        )
    )
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "system", "user"]
    assert chat["messages"][2]["content"] == "env changed"


def test_images_and_documents_become_chat_parts():
    content = [
        {"type": "text", "text": "what is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}, "cache_control": EPHEMERAL},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
            "title": "report.pdf",
        },
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain notes"}},
        {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "inner"}]}},
    ]
    chat, _ = chat_of(base(messages=[{"role": "user", "content": content}]))
    assert chat["messages"][0]["content"] == [
        {"type": "text", "text": "what is in these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}, "cache_control": EPHEMERAL},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x", "filename": "report.pdf"}},
        {"type": "text", "text": "plain notes"},
        {"type": "text", "text": "inner"},
    ]


def test_a_search_result_becomes_text_the_model_reads():
    block = {
        "type": "search_result",
        "source": "https://docs.example",
        "title": "Docs",
        "content": [{"type": "text", "text": "answer one"}],
        "citations": {"enabled": True},
    }
    chat, ignored = chat_of(base(messages=[{"role": "user", "content": [block]}]))
    assert chat["messages"][0]["content"] == "Docs\nhttps://docs.example\n\nanswer one"
    assert ignored == ["citations"]


def conversation() -> list[dict]:
    return [
        {"role": "user", "content": "weather in Paris and the time?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Two tools.", "signature": "sig-1"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_b", "content": "12:00"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_a",
                    "is_error": True,
                    "content": [{"type": "text", "text": "service down"}],
                    "cache_control": EPHEMERAL,
                },
                {"type": "text", "text": "and then?"},
            ],
        },
    ]


def test_tool_use_and_tool_results_keep_the_order_chat_needs():
    chat, _ = chat_of(base(messages=conversation(), tools=[WEATHER, TIME]))
    user, assistant, time_result, weather_result, after = chat["messages"]
    assert user == {"role": "user", "content": "weather in Paris and the time?"}
    assert assistant["role"] == "assistant" and assistant["content"] == "Checking."
    assert [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in assistant["tool_calls"]
    ] == [("toolu_a", "get_weather", {"city": "Paris"}), ("toolu_b", "get_time", {})]
    assert all(c["type"] == "function" for c in assistant["tool_calls"])
    assert time_result == {"role": "tool", "tool_call_id": "toolu_b", "content": "12:00"}
    assert weather_result == {
        "role": "tool",
        "tool_call_id": "toolu_a",
        "content": "service down",
        "is_error": True,
        "cache_control": EPHEMERAL,
    }
    assert after == {"role": "user", "content": "and then?"}


def test_tool_results_come_first_even_after_text():
    messages = conversation()
    messages[2]["content"] = [
        {"type": "text", "text": "here:"},
        {"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "toolu_b", "content": "noon"},
    ]
    chat, _ = chat_of(base(messages=messages))
    assert [(m["role"], m.get("tool_call_id")) for m in chat["messages"][2:]] == [
        ("tool", "toolu_a"),
        ("tool", "toolu_b"),
        ("user", None),
    ]


def test_tool_results_may_be_split_across_consecutive_user_messages():
    messages = conversation()[:2] + [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_b", "content": "noon"}]},
    ]
    chat, _ = chat_of(base(messages=messages))
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "tool", "tool"]


def test_a_tool_result_with_an_image_keeps_its_parts():
    messages = conversation()[:2] + [
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_a",
                    "content": [
                        {"type": "text", "text": "screenshot:"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    ],
                },
                {"type": "tool_result", "tool_use_id": "toolu_b"},
            ],
        }
    ]
    chat, _ = chat_of(base(messages=messages))
    assert chat["messages"][2]["content"] == [
        {"type": "text", "text": "screenshot:"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "toolu_b", "content": ""}


def test_thinking_blocks_are_kept_as_given_for_their_signatures():
    thinking = [
        {"type": "thinking", "thinking": "First, look.", "signature": "EqQBCkgIARABGAIi"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
        {"type": "thinking", "thinking": "Then answer.", "signature": "sig-2"},
    ]
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [*thinking, {"type": "text", "text": "A."}]},
        {"role": "user", "content": "more"},
    ]
    chat, _ = chat_of(base(messages=messages))
    assistant = chat["messages"][1]
    assert assistant["thinking_blocks"] == thinking
    assert assistant["thinking_blocks"][0] is not thinking[0]  # a copy: the caller's body is not shared
    assert assistant["reasoning_content"] == "First, look.\n\nThen answer."
    assert assistant["content"] == "A."


def test_an_assistant_message_of_tool_calls_alone_has_no_content():
    messages = conversation()[:2]
    messages[1]["content"] = [messages[1]["content"][2]]
    chat, _ = chat_of(base(messages=messages))
    assert chat["messages"][1]["content"] is None and len(chat["messages"][1]["tool_calls"]) == 1


def test_tools_become_function_tools():
    marked = {**TIME, "cache_control": EPHEMERAL, "strict": True}
    chat, ignored = chat_of(base(tools=[WEATHER, marked]))
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "the weather in a city",
                "parameters": WEATHER["input_schema"],
            },
        },
        {
            "type": "function",
            "function": {"name": "get_time", "parameters": TIME["input_schema"], "strict": True},
            "cache_control": EPHEMERAL,
        },
    ]
    assert ignored == []
    deferred, ignored = chat_of(base(tools=[{**WEATHER, "defer_loading": True, "type": "custom"}]))
    assert deferred["tools"][0]["function"]["name"] == "get_weather"
    assert ignored == []  # for an Anthropic backend to send; the others name it
    slot = deferred["x-llmgate-native"]
    assert slot["tools"] == {"get_weather": {"defer_loading": True}} and slot["names"] == ["tools.defer_loading"]


@pytest.mark.parametrize(
    "choice, expected",
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "tool", "name": "get_time"}, {"tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
        ({"type": "none"}, {"tool_choice": "none"}),
        ({"type": "auto", "disable_parallel_tool_use": True}, {"tool_choice": "auto", "parallel_tool_calls": False}),
        ({"type": "any", "disable_parallel_tool_use": False}, {"tool_choice": "required"}),
        (
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": False},
        ),
    ],
)
def test_tool_choice(choice, expected):
    chat, _ = chat_of(base(tools=[WEATHER, TIME], tool_choice=choice))
    assert {k: chat[k] for k in ("tool_choice", "parallel_tool_calls") if k in chat} == expected


def test_auto_tool_choice_without_tools_sends_none():
    chat, _ = chat_of(base(tool_choice={"type": "auto"}))
    assert "tool_choice" not in chat and "tools" not in chat


def test_sampling_and_thinking_parameters():
    thinking = {"type": "enabled", "budget_tokens": 2048}
    chat, ignored = chat_of(
        base(temperature=0.2, top_p=0.9, top_k=40, stop_sequences=["END", "STOP"], thinking=thinking, stream=True)
    )
    assert (chat["temperature"], chat["top_p"], chat["top_k"], chat["stop"]) == (0.2, 0.9, 40, ["END", "STOP"])
    assert chat["thinking"] == thinking and chat["thinking"] is not thinking
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert ignored == []
    off, _ = chat_of(base(thinking={"type": "disabled"}, stream=False))
    assert off["thinking"] == {"type": "disabled"} and off["stream"] is False and "stream_options" not in off


def test_output_config_becomes_reasoning_effort_and_a_json_schema():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    chat, _ = chat_of(base(output_config={"effort": "max", "format": {"type": "json_schema", "schema": schema}}))
    assert chat["reasoning_effort"] == "xhigh"
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }
    beta, _ = chat_of(base(output_format={"type": "json_schema", "schema": schema}))
    assert beta["response_format"]["json_schema"]["schema"] == schema


@pytest.mark.parametrize(
    "user_id, sticky",
    [
        ("alice", "alice"),
        ("user_abc123_account_4f6e_session_9a8b", "user_abc123_account_4f6e"),
        ('{"device_id": "dev-1", "account_uuid": "acct-1", "session_id": "s-1"}', "acct-1"),
        ('{"device_id": "dev-1", "account_uuid": "", "session_id": "s-1"}', "dev-1"),
    ],
)
def test_metadata_user_id_becomes_the_sticky_user(user_id, sticky):
    chat, _ = chat_of(base(metadata={"user_id": user_id}))
    assert chat["user"] == sticky == sticky_user(user_id)
    none, _ = chat_of(base(metadata={"user_id": None}))
    assert "user" not in none


def test_anthropic_hints_wait_in_the_native_slot_and_others_are_listed_as_ignored():
    chat, ignored = chat_of(
        base(
            service_tier="auto",
            speed="fast",
            context_management={"edits": []},
            inference_geo="us",
            container=None,
            diagnostics={"x": 1},
        )
    )
    assert ignored == ["diagnostics"]
    assert not {"service_tier", "speed", "context_management", "inference_geo", "container", "diagnostics"} & set(chat)
    slot = chat["x-llmgate-native"]
    assert slot["kind"] == "anthropic"
    assert slot["params"] == {
        "service_tier": "auto",
        "inference_geo": "us",
        "speed": "fast",
        "context_management": {"edits": []},
    }
    assert slot["names"] == ["service_tier", "inference_geo", "speed", "context_management"]


def test_top_level_cache_control_marks_the_last_block():
    chat, _ = chat_of(base(cache_control=EPHEMERAL))
    assert chat["messages"][-1]["content"] == [{"type": "text", "text": "hi", "cache_control": EPHEMERAL}]
    tools, _ = chat_of(
        base(
            messages=conversation()[:2]
            + [
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_a", "content": "x"},
                        {"type": "tool_result", "tool_use_id": "toolu_b", "content": "y"},
                    ],
                }
            ],
            cache_control=EPHEMERAL,
        )
    )
    assert tools["messages"][-1]["cache_control"] == EPHEMERAL and "cache_control" not in tools["messages"][-2]


def test_the_callers_body_is_not_changed():
    body = base(messages=conversation(), tools=[WEATHER, TIME], cache_control=EPHEMERAL, system="s")
    before = json.dumps(body, sort_keys=True)
    chat_of(body)
    assert json.dumps(body, sort_keys=True) == before


# --- the request: refusals -----------------------------------------------------------------------------


def with_message(content, role="user", before=()):
    return base(messages=[*before, {"role": role, "content": content}])


@pytest.mark.parametrize(
    "body, param",
    [
        ([], "body"),
        ("hello", "body"),
        ({"max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}, "model"),
        (base(model=""), "model"),
        (base(model=3), "model"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (base(max_tokens=0), "max_tokens"),
        (base(max_tokens="100"), "max_tokens"),
        (base(max_tokens=True), "max_tokens"),
        (base(max_tokens=2**40), "max_tokens"),
        ({"model": "m", "max_tokens": 5}, "messages"),
        (base(messages=[]), "messages"),
        (base(messages={"role": "user"}), "messages"),
        (base(messages=["hi"]), "messages[0]"),
        (base(messages=[{"role": "tool", "content": "x"}]), "messages[0].role"),
        (base(messages=[{"role": "user"}]), "messages[0].content"),
        (base(messages=[{"role": "user", "content": "x", "name": "bob"}]), "messages[0].name"),
        (with_message(42), "messages[0].content"),
        (with_message([]), "messages[0].content"),
        (with_message(["text"]), "messages[0].content[0]"),
        (with_message([{"type": "video", "url": "x"}]), "messages[0].content[0].type"),
        (with_message([{"type": "text"}]), "messages[0].content[0].text"),
        (with_message([{"type": "text", "text": "x", "cache_control": "yes"}]), "messages[0].content[0].cache_control"),
        (
            with_message([{"type": "image", "source": {"type": "base64", "data": PNG}}]),
            "messages[0].content[0].source.media_type",
        ),
        (
            with_message([{"type": "image", "source": {"type": "file", "file_id": "file_1"}}]),
            "messages[0].content[0].source.type",
        ),
        (with_message([{"type": "image"}]), "messages[0].content[0].source"),
        (
            with_message([{"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}]),
            "messages[0].content[0].source.type",
        ),
        (with_message([{"type": "tool_use", "id": "t", "name": "n", "input": {}}]), "messages[0].content[0].type"),
        (with_message([{"type": "thinking", "thinking": "x", "signature": "s"}]), "messages[0].content[0].type"),
        (
            with_message([{"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}]),
            "messages[0].content[0].type",
        ),
        (
            with_message([{"type": "image", "source": {"type": "url", "url": "https://x/i.png"}}], role="assistant"),
            "messages[0].content[0].type",
        ),
        (
            with_message([{"type": "tool_use", "id": "t", "name": "n", "input": "city=Paris"}], role="assistant"),
            "messages[0].content[0].input",
        ),
        (with_message([{"type": "tool_use", "name": "n", "input": {}}], role="assistant"), "messages[0].content[0].id"),
        (with_message([{"type": "thinking", "thinking": "x"}], role="assistant"), "messages[0].content[0].signature"),
        (with_message([{"type": "redacted_thinking"}], role="assistant"), "messages[0].content[0].data"),
        (
            with_message([{"type": "tool_result", "tool_use_id": "toolu_x", "content": "r"}]),
            "messages[0].content[0].tool_use_id",
        ),
        (
            with_message([{"type": "tool_result", "tool_use_id": "toolu_a", "content": 5}], before=conversation()[:2]),
            "messages[2].content[0].content",
        ),
        (
            with_message(
                [{"type": "tool_result", "tool_use_id": "toolu_a", "is_error": "yes"}], before=conversation()[:2]
            ),
            "messages[2].content[0].is_error",
        ),
        (base(system=[{"type": "image", "source": {"type": "url", "url": "https://x"}}]), "system[0].type"),
        (base(system=5), "system"),
        (base(temperature=1.5), "temperature"),
        (base(top_p="high"), "top_p"),
        (base(top_k=0), "top_k"),
        (base(stop_sequences="END"), "stop_sequences"),
        (base(stop_sequences=["a", "b", "c", "d", "e"]), "stop_sequences"),
        (base(stream="yes"), "stream"),
        (base(tools={"name": "x"}), "tools"),
        (base(tools=[{"name": "x"}]), "tools[0].input_schema"),
        (base(tools=[{"input_schema": {}}]), "tools[0].name"),
        (base(tools=[WEATHER, WEATHER]), "tools[1].name"),
        (base(tools=[{**WEATHER, "color": "red"}]), "tools[0].color"),
        (base(tools=[WEATHER, {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]), "tools[1].type"),
        (base(tools=[{"type": "bash_20250124", "name": "bash"}]), "tools[0].type"),
        (base(tools=[{"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}]), "tools[0].type"),
        (base(tools=[WEATHER], tool_choice="auto"), "tool_choice"),
        (base(tools=[WEATHER], tool_choice={"type": "required"}), "tool_choice.type"),
        (base(tools=[WEATHER], tool_choice={"type": "tool", "name": "nope"}), "tool_choice.name"),
        (base(tools=[WEATHER], tool_choice={"type": "tool"}), "tool_choice.name"),
        (base(tool_choice={"type": "any"}), "tool_choice"),
        (
            base(tools=[WEATHER], tool_choice={"type": "auto", "disable_parallel_tool_use": "yes"}),
            "tool_choice.disable_parallel_tool_use",
        ),
        (
            base(tools=[WEATHER], tool_choice={"type": "none", "disable_parallel_tool_use": True}),
            "tool_choice.disable_parallel_tool_use",
        ),
        (base(thinking={"type": "on"}), "thinking.type"),
        (base(thinking={"type": "enabled"}), "thinking.budget_tokens"),
        (base(thinking=True), "thinking.type"),
        (base(metadata="alice"), "metadata"),
        (base(metadata={"user_id": 7}), "metadata.user_id"),
        (base(metadata={"user_id": "a", "team": "b"}), "metadata.team"),
        (base(output_config={"effort": "extreme"}), "output_config.effort"),
        (base(output_config={"effort": ["low"]}), "output_config.effort"),
        (base(output_config={"format": {"type": "json_object"}}), "output_config.format"),
        (base(output_config={"verbosity": "low"}), "output_config.verbosity"),
        (
            base(
                output_config={"format": {"type": "json_schema", "schema": {}}},
                output_format={"type": "json_schema", "schema": {}},
            ),
            "output_format",
        ),
        (base(cache_control={"type": "persistent"}), "cache_control"),
        (base(container="container_1"), "container"),
        (base(mcp_servers=[{"type": "url", "url": "https://mcp.example", "name": "x"}]), "mcp_servers"),
        (base(frequency_penalty=0.5), "frequency_penalty"),
        (base(n=2, logprobs=True), "logprobs"),
    ],
)
def test_bad_requests_name_the_parameter(body, param):
    error = refused(body)
    assert error.param == param, error.message
    if param not in ("body",) and not param.startswith("messages["):
        assert param.split(".")[0].split("[")[0] in error.message or param in error.message


def test_unknown_parameters_are_refused_not_dropped():
    error = refused(base(frequency_penalty=0.5, logit_bias={}))
    assert error.code == "unknown_parameter"
    assert "'frequency_penalty'" in error.message and "'logit_bias'" in error.message
    assert "remove them" in error.message


def test_a_server_tool_refusal_says_what_to_do_instead():
    error = refused(base(tools=[{"type": "web_search_20250305", "name": "web_search"}]))
    assert error.code == "unsupported_tool" and "custom tool" in error.message


def test_missing_max_tokens_says_it_is_required():
    error = refused({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert "required" in error.message


# --- the whole answer ----------------------------------------------------------------------------------


def test_a_text_answer_is_a_message():
    message = message_of(answer("Hello!"))
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == "claude-route"
    assert [(b.type, b.text) for b in message.content] == [("text", "Hello!")]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 5)
    assert from_chat_completion(answer("x"), model="m", message_id="msg_given")["id"] == "msg_given"


@pytest.mark.parametrize(
    "finish, reason",
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
        ("something_new", "end_turn"),
    ],
)
def test_stop_reasons(finish, reason):
    assert message_of(answer("x", finish=finish)).stop_reason == reason


def test_tool_calls_become_tool_use_blocks():
    message = message_of(
        answer(
            "Let me check.",
            finish="tool_calls",
            calls=[
                ("call_1", "get_weather", '{"city": "Paris"}'),
                ("call_2", "get_time", ""),
                ("call_3", "get_weather", '{"city": '),
                ("call_4", "get_weather", "[1, 2]"),
            ],
        )
    )
    text, *uses = message.content
    assert text.text == "Let me check."
    assert [(u.type, u.id, u.name, u.input) for u in uses] == [
        ("tool_use", "call_1", "get_weather", {"city": "Paris"}),
        ("tool_use", "call_2", "get_time", {}),
        ("tool_use", "call_3", "get_weather", {}),
        ("tool_use", "call_4", "get_weather", {}),
    ]
    assert message.stop_reason == "tool_use"


def test_tool_calls_under_a_stop_finish_still_say_tool_use_and_get_ids():
    chat_answer = answer(None, calls=[("", "get_time", "{}")], finish="stop")
    message = message_of(chat_answer)
    assert message.stop_reason == "tool_use" and message.content[0].id.startswith("toolu_")
    assert message_of(answer(None, calls=[("c", "get_time", "{}")], finish="length")).stop_reason == "max_tokens"


def test_thinking_comes_first_with_its_signature():
    blocks = [
        {"type": "thinking", "thinking": "Hmm.", "signature": "sig-9"},
        {"type": "redacted_thinking", "data": "opaque"},
    ]
    message = message_of(answer("Done.", thinking_blocks=blocks, reasoning_content="Hmm."))
    assert [b.type for b in message.content] == ["thinking", "redacted_thinking", "text"]
    assert (message.content[0].thinking, message.content[0].signature) == ("Hmm.", "sig-9")
    assert message.content[1].data == "opaque"
    bare = message_of(answer("Done.", reasoning_content="Just text reasoning."))
    assert [(b.type, getattr(b, "thinking", None), getattr(b, "signature", None)) for b in bare.content[:1]] == [
        ("thinking", "Just text reasoning.", "")
    ]
    vllm = message_of(answer("Done.", reasoning="vLLM names it reasoning"))
    assert vllm.content[0].thinking == "vLLM names it reasoning"


def test_usage_counts_cached_input_apart():
    chat_usage = {**usage(1000, 50, cached=800), "cache_creation_input_tokens": 150}
    message = message_of(answer("x", usage_=chat_usage))
    assert message.usage.input_tokens == 50
    assert message.usage.cache_read_input_tokens == 800
    assert message.usage.cache_creation_input_tokens == 150
    assert message.usage.output_tokens == 50
    plain = message_of(answer("x", usage_=usage(10, 2)))
    assert (plain.usage.input_tokens, plain.usage.cache_read_input_tokens) == (10, 0)
    missing = from_chat_completion({**answer("x"), "usage": None}, model="m")
    assert missing["usage"]["input_tokens"] == 0


def test_a_refusal_and_an_empty_answer():
    refusal = message_of(answer(None, refusal="I can't help with that."))
    assert refusal.content[0].text == "I can't help with that." and refusal.stop_reason == "refusal"
    empty = message_of(answer(""))
    assert empty.content == [] and empty.stop_reason == "end_turn"
    nothing = message_of({"id": "x", "choices": [], "usage": None})
    assert nothing.content == []


# --- the stream ----------------------------------------------------------------------------------------


def text_chunks(*pieces, finish="stop", usage_=None):
    yield chunk("c1", "m", {"role": "assistant", "content": ""})
    for piece in pieces:
        yield chunk("c1", "m", {"content": piece})
    yield chunk("c1", "m", {}, finish)
    yield chunk("c1", "m", usage=usage_ or usage(9, 3))


def call_start(index, id, name):
    return chunk(
        "c1",
        "m",
        {"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]},
    )


def call_args(index, fragment):
    return chunk("c1", "m", {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})


def test_a_text_stream():
    events = translate(text_chunks("Hel", "lo", "!"))
    message = accumulated(events)
    assert message.id == MID and message.model == "claude-route"
    assert [(b.type, b.text) for b in message.content] == [("text", "Hello!")]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (9, 3)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert events[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


def test_a_stream_of_thinking_text_and_a_tool_call():
    chunks = [
        chunk("c1", "m", {"role": "assistant", "reasoning_content": "The user wants "}),
        chunk("c1", "m", {"reasoning_content": "the weather."}),
        chunk(
            "c1",
            "m",
            {
                "thinking_blocks": [
                    {"type": "thinking", "thinking": "The user wants the weather.", "signature": "sig-abc"}
                ]
            },
        ),
        chunk("c1", "m", {"content": "Checking "}),
        chunk("c1", "m", {"content": "now."}),
        call_start(0, "call_w", "get_weather"),
        call_args(0, '{"ci'),
        call_args(0, 'ty": "Par'),
        call_args(0, 'is"}'),
        chunk("c1", "m", {}, "tool_calls"),
        chunk("c1", "m", usage={**usage(100, 40, cached=64), "cache_creation_input_tokens": 6}),
    ]
    events = translate(chunks)
    message = accumulated(events)
    thinking, text, use = message.content
    assert (thinking.type, thinking.thinking, thinking.signature) == (
        "thinking",
        "The user wants the weather.",
        "sig-abc",
    )
    assert (text.type, text.text) == ("text", "Checking now.")
    assert (use.type, use.id, use.name, use.input) == ("tool_use", "call_w", "get_weather", {"city": "Paris"})
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (30, 40)
    assert (message.usage.cache_read_input_tokens, message.usage.cache_creation_input_tokens) == (64, 6)
    deltas = [d["delta"]["type"] for n, d in events if n == "content_block_delta"]
    assert deltas == [
        "thinking_delta",
        "thinking_delta",
        "signature_delta",
        "text_delta",
        "text_delta",
        "input_json_delta",
        "input_json_delta",
        "input_json_delta",
    ]


def test_two_parallel_tool_calls_stream_one_block_after_the_other():
    chunks = [
        call_start(0, "call_a", "get_weather"),
        call_args(0, '{"city":'),
        call_args(0, ' "Oslo"}'),
        call_start(1, "call_b", "get_time"),
        call_args(1, "{}"),
        chunk("c1", "m", {}, "tool_calls"),
        chunk("c1", "m", usage=usage(20, 10)),
    ]
    events = translate(chunks)
    message = accumulated(events)
    assert [(b.id, b.name, b.input) for b in message.content] == [
        ("call_a", "get_weather", {"city": "Oslo"}),
        ("call_b", "get_time", {}),
    ]
    assert message.stop_reason == "tool_use"
    # both stream live: the first call's block stops as the second's starts, and the second's arguments follow
    stream = StreamTranslator("m", MID)
    stream.start()
    for c in chunks[:3]:
        stream.feed(c)
    assert [(n, d["index"]) for n, d in stream.feed(chunks[3])] == [
        ("content_block_stop", 0),
        ("content_block_start", 1),
    ]
    assert [(n, d["index"], d["delta"]) for n, d in stream.feed(chunks[4])] == [
        ("content_block_delta", 1, {"type": "input_json_delta", "partial_json": "{}"})
    ]


def test_interleaved_parallel_tool_calls_never_touch_a_stopped_block():
    chunks = [
        chunk("c1", "m", {"content": "Two at once."}),
        call_start(0, "call_a", "get_weather"),
        call_args(0, '{"city":'),
        call_start(1, "call_b", "get_weather"),
        call_args(1, '{"city": "Rome"}'),
        call_args(0, ' "Oslo"}'),
        chunk("c1", "m", {}, "tool_calls"),
    ]
    message = accumulated(translate(chunks))
    assert [(b.type, getattr(b, "input", None)) for b in message.content] == [
        ("text", None),
        ("tool_use", {"city": "Oslo"}),
        ("tool_use", {"city": "Rome"}),
    ]


def test_a_call_without_an_id_gets_one():
    message = accumulated(
        translate([call_start(0, None, "get_time"), call_args(0, "{}"), chunk("c1", "m", {}, "tool_calls")])
    )
    assert message.content[0].id.startswith("toolu_") and message.content[0].name == "get_time"


def test_redacted_and_whole_thinking_blocks_in_a_stream():
    chunks = [
        chunk("c1", "m", {"thinking_blocks": [{"type": "redacted_thinking", "data": "opaque-1"}]}),
        chunk("c1", "m", {"thinking_blocks": [{"type": "thinking", "thinking": "whole block", "signature": "sig-w"}]}),
        chunk("c1", "m", {"reasoning_content": "streamed, no signature"}),
        chunk("c1", "m", {"content": "Answer."}),
        chunk("c1", "m", {}, "stop"),
    ]
    message = accumulated(translate(chunks))
    assert [b.type for b in message.content] == ["redacted_thinking", "thinking", "thinking", "text"]
    assert message.content[0].data == "opaque-1"
    assert (message.content[1].thinking, message.content[1].signature) == ("whole block", "sig-w")
    assert (message.content[2].thinking, message.content[2].signature) == ("streamed, no signature", "")


def test_a_stream_cut_short_by_max_tokens():
    message = accumulated(translate(text_chunks("partial", finish="length")))
    assert message.stop_reason == "max_tokens"


def test_an_empty_stream_still_closes():
    events = translate([])
    check_events(events)
    assert accumulated(events).content == []


def test_finish_and_feed_after_the_end_add_nothing():
    stream = StreamTranslator("m", MID)
    stream.start()
    assert stream.finish()[-1][0] == "message_stop"
    assert stream.finish() == [] and stream.feed(chunk("c1", "m", {"content": "late"})) == []


def test_a_stream_that_fails_sends_an_error_event():
    stream = StreamTranslator("m", MID)
    stream.start()
    stream.feed(chunk("c1", "m", {"content": "Hi"}))
    ((name, data),) = stream.fail(529, "backend overloaded")
    assert name == "error" and data == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "backend overloaded"},
    }
    ErrorResponse.model_validate(data)
    assert stream.finish() == []


# --- through the official SDK --------------------------------------------------------------------------


def test_the_sdk_round_trips_a_tool_conversation():
    seen = []

    def backend(chat):
        seen.append(chat)
        return answer(None, calls=[("call_1", "get_weather", '{"city": "Paris"}')], finish="tool_calls")

    client = sdk(backend)
    first = client.messages.create(
        model="claude-route",
        max_tokens=100,
        tools=[WEATHER],
        messages=[{"role": "user", "content": "weather?"}],
        metadata={"user_id": "alice"},
        tool_choice={"type": "any"},
    )
    assert first.stop_reason == "tool_use" and first.content[0].input == {"city": "Paris"}
    assert seen[0]["user"] == "alice" and seen[0]["tool_choice"] == "required"
    client.messages.create(
        model="claude-route",
        max_tokens=100,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": first.role, "content": first.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"}]},
        ],
    )
    assert [m["role"] for m in seen[1]["messages"]] == ["user", "assistant", "tool"]
    assert seen[1]["messages"][2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}


def test_the_sdk_stream_builds_the_final_message():
    seen = []

    def backend(chat):
        seen.append(chat)
        if not chat.get("stream"):
            return answer("It is noon.")
        return [
            chunk("c1", "m", {"reasoning_content": "think"}),
            chunk("c1", "m", {"thinking_blocks": [{"type": "thinking", "thinking": "think", "signature": "s1"}]}),
            chunk("c1", "m", {"content": "Hi"}),
            call_start(0, "call_t", "get_time"),
            call_args(0, "{}"),
            chunk("c1", "m", {}, "tool_calls"),
            chunk("c1", "m", usage=usage(7, 4)),
        ]

    client = sdk(backend)
    with client.messages.stream(
        model="claude-route",
        max_tokens=100,
        tools=[TIME],
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "time?"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hi"
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[0].signature == "s1" and final.content[2].input == {}
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == 4
    # the thinking block goes back as given, signature and all
    client.messages.create(
        model="claude-route",
        max_tokens=100,
        tools=[TIME],
        messages=[
            {"role": "user", "content": "time?"},
            final.to_param(),
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_t", "content": "noon"}]},
        ],
    )
    assistant = seen[-1]["messages"][1]
    assert assistant["thinking_blocks"] == [{"type": "thinking", "thinking": "think", "signature": "s1"}]
    assert assistant["content"] == "Hi" and assistant["tool_calls"][0]["id"] == "call_t"


def test_the_sdk_raises_its_own_error_for_a_refused_request():
    client = sdk(lambda chat: answer("never"))
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model="claude-route",
            max_tokens=10,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"frequency_penalty": 1},
        )
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "frequency_penalty" in info.value.body["error"]["message"]


# --- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, kind",
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (409, "conflict_error"),
        (413, "request_too_large"),
        (415, "invalid_request_error"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
        (599, "api_error"),
    ],
)
def test_error_types(status, kind):
    body = error_body(status, "what went wrong")
    assert body == {"type": "error", "error": {"type": kind, "message": "what went wrong"}}
    assert error_type(status) == kind
    assert kind in typing.get_args(ErrorType) or kind == "request_too_large"  # 413: in Anthropic's docs only
    if kind not in ("request_too_large", "conflict_error"):  # both absent from the SDK's ErrorObject union
        assert ErrorResponse.model_validate(body).error.type == kind


@pytest.mark.parametrize(
    "status, exception",
    [
        (400, anthropic.BadRequestError),
        (401, anthropic.AuthenticationError),
        (404, anthropic.NotFoundError),
        (429, anthropic.RateLimitError),
        (529, anthropic.OverloadedError),
    ],
)
def test_the_sdk_reads_the_error_body(status, exception):
    def transport(request):
        return httpx.Response(status, json=error_body(status, "nope"))

    client = anthropic.Anthropic(
        api_key="k",
        base_url="http://gateway.test",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(transport)),
    )
    with pytest.raises(exception) as info:
        client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"]["message"] == "nope"


def test_a_long_error_message_is_cut_to_something_presentable():
    body = error_body(400, "x" * 5000)
    assert len(body["error"]["message"]) < 1100
