"""gateway/dialects/responses.py: the Responses API to the chat form and back, checked against the official SDK's types.

Pure translation, no network: the SDK talks to an httpx MockTransport that runs the translation.
"""

from __future__ import annotations

import json

import httpx2 as httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.chat import StreamAssembler, chunk, completion, tool_call, usage, validate_chat_request
from gateway.dialects.responses import (
    PROVIDER_TOOLS,
    StreamTranslator,
    from_chat_completion,
    output_items_to_chat,
    to_chat_request,
    turn_history,
)
from gateway.errors import InvalidRequest

EVENT = TypeAdapter(ResponseStreamEvent)
RID = "resp_abc123"
CREATED = 1_700_000_000.0
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "the weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
TIME = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}


def chat_of(body, previous=None):
    chat, ignored = to_chat_request(body, previous)
    validate_chat_request(chat)  # whatever the dialect makes, the request path must accept
    return chat, ignored


def refused(body, previous=None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        to_chat_request(body, previous)
    assert info.value.status == 400
    return info.value


def answer(content=None, *, calls=(), finish="stop", usage_=None, **extra):
    message = {"role": "assistant", "content": content, **extra}
    if calls:
        message["tool_calls"] = [tool_call(id, name, args) for id, name, args in calls]
    return completion("chatcmpl-1", "m", message, finish, usage_ or usage(12, 5))


def respond(chat_answer, request, response_id=RID) -> Response:
    data = from_chat_completion(
        chat_answer, response_id=response_id, model=request["model"], request=request, created_at=CREATED
    )
    json.dumps(data)  # it goes out as JSON
    return Response.model_validate(data)


def stream_events(chunks, request, response_id=RID):
    """Feed chunks through a StreamTranslator; check every event against the SDK and the numbering."""
    translator = StreamTranslator(response_id, request["model"], request, CREATED)
    events = translator.start()
    for c in chunks:
        events += translator.feed(c)
    events += translator.finish()
    check_events(events)
    return events


def check_events(events):
    for n, (name, data) in enumerate(events):
        assert data["type"] == name
        assert data["sequence_number"] == n
        json.dumps(data)
        EVENT.validate_python(data)


def sse(events) -> bytes:
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


def sdk(handler) -> openai.OpenAI:
    """The official client, its requests answered in-process by `handler(body) -> dict | events`."""

    def transport(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/responses"
        result = handler(json.loads(request.content))
        if isinstance(result, list):
            return httpx.Response(200, content=sse(result), headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=result)

    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://gateway.test/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(transport)),
    )


def text_chunks(*pieces, finish="stop", usage_=None):
    yield chunk("c1", "m", {"role": "assistant", "content": ""})
    for piece in pieces:
        yield chunk("c1", "m", {"content": piece})
    yield chunk("c1", "m", {}, finish)
    yield chunk("c1", "m", usage=usage_ or usage(9, len(pieces)))


# ---- requests -------------------------------------------------------------------------------------------------


def test_a_string_input_is_one_user_message():
    assert chat_of({"model": "m", "input": "hi"}) == (
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        [],
    )
    chat, _ = chat_of({"model": "m", "input": "hi", "instructions": "be brief"})
    assert chat["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


def test_items_with_parts_images_and_files():
    body = {
        "model": "m",
        "input": [
            {"role": "developer", "content": "use metric units"},
            {
                "type": "message",
                "role": "system",
                "content": [{"type": "input_text", "text": "sys "}, {"type": "input_text", "text": "two"}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is this?"},
                    {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"},
                    {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "auto"},
                    {"type": "input_file", "file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "A cat", "annotations": []},
                    {"type": "refusal", "refusal": "."},
                ],
            },
            {"role": "user", "content": "thanks"},
        ],
    }
    chat, ignored = chat_of(body)
    assert ignored == []
    assert chat["messages"] == [
        {"role": "system", "content": "use metric units"},
        {"role": "system", "content": "sys two"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "auto"}},
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
            ],
        },
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "thanks"},
    ]


@pytest.mark.parametrize(
    "part, param",
    [
        ({"type": "input_image", "file_id": "file-1", "detail": "auto"}, "input[0].content[0].file_id"),
        ({"type": "input_file", "file_id": "file-1"}, "input[0].content[0].file_id"),
        ({"type": "input_file", "file_url": "https://example.com/a.pdf"}, "input[0].content[0].file_url"),
        ({"type": "input_image", "detail": "auto"}, "input[0].content[0].image_url"),
    ],
)
def test_files_the_gateway_cannot_fetch_are_refused(part, param):
    error = refused({"model": "m", "input": [{"role": "user", "content": [part]}]})
    assert error.param == param
    assert "file_data" in error.message or "image_url" in error.message


def test_parameters_translate():
    chat, ignored = chat_of(
        {
            "model": "m",
            "input": "hi",
            "max_output_tokens": 300,
            "temperature": 0.2,
            "top_p": 0.9,
            "stream": True,
            "metadata": {"team": "a"},
            "reasoning": {"effort": "high"},
            "user": "u-1",
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "parallel_tool_calls": False,
        }
    )
    assert ignored == []
    assert chat == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.9,
        "stream": True,
        "metadata": {"team": "a"},
        "reasoning_effort": "high",
        "user": "u-1",
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "the weather in a city",
                    "parameters": WEATHER["parameters"],
                    "strict": True,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
    }


def test_tool_choices():
    base = {"model": "m", "input": "hi", "tools": [WEATHER, TIME]}
    for choice in ("auto", "none", "required"):
        assert chat_of({**base, "tool_choice": choice})[0]["tool_choice"] == choice
    chat, _ = chat_of(
        {
            **base,
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "get_time"}],
            },
        }
    )
    assert chat["tool_choice"] == "required"
    assert [t["function"]["name"] for t in chat["tools"]] == ["get_time"]
    assert chat["tools"][0]["function"]["parameters"] == {"type": "object", "properties": {}}
    # without tools, the chat APIs refuse tool_choice and parallel_tool_calls: they are left out
    chat, _ = chat_of({"model": "m", "input": "hi", "tool_choice": "auto", "parallel_tool_calls": True, "tools": []})
    assert "tool_choice" not in chat and "parallel_tool_calls" not in chat and "tools" not in chat
    assert refused({"model": "m", "input": "hi", "tool_choice": "required"}).param == "tool_choice"


def test_user_and_safety_identifier():
    assert chat_of({"model": "m", "input": "hi", "safety_identifier": "s"})[0]["user"] == "s"
    assert chat_of({"model": "m", "input": "hi", "user": "u", "safety_identifier": "s"})[0]["user"] == "s"
    assert chat_of({"model": "m", "input": "hi", "user": "u", "safety_identifier": "s"})[1] == ["user"]
    assert chat_of({"model": "m", "input": "hi", "user": "s", "safety_identifier": "s"})[1] == []


@pytest.mark.parametrize(
    "fmt, expected",
    [
        ({"type": "text"}, {"type": "text"}),
        ({"type": "json_object"}, {"type": "json_object"}),
        (
            {
                "type": "json_schema",
                "name": "city",
                "description": "a city",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}},
                    "required": ["name"],
                    "additionalProperties": False,
                },
            },
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "city",
                    "description": "a city",
                    "strict": True,
                    "schema": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}},
                        "required": ["name"],
                        "additionalProperties": False,
                    },
                },
            },
        ),
    ],
)
def test_text_format_becomes_response_format(fmt, expected):
    request = {"model": "m", "input": "a city", "text": {"format": fmt}}
    chat, ignored = chat_of(request)
    assert chat["response_format"] == expected and ignored == []
    response = respond(answer('{"name": "Paris"}'), request)
    assert response.text.format.type == fmt["type"]  # echoed as the SDK reads it
    assert response.output_text == '{"name": "Paris"}'


def test_codex_hints_are_accepted_and_listed_as_ignored():
    body = {
        "model": "gpt-5-codex",
        "instructions": "You are Codex.",
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "sandbox"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix it"}]},
        ],
        "tools": [TIME],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0b9d7c3e-session",
        "text": {"verbosity": "low"},
    }
    chat, ignored = chat_of(body)
    assert sorted(ignored) == sorted(["store", "include", "reasoning.summary"])
    # chat completions has these too: an OpenAI backend gets them, the other kinds name them as ignored
    assert chat["prompt_cache_key"] == "0b9d7c3e-session"
    assert chat["x-llmgate-native"]["params"] == {"verbosity": "low"}
    assert chat["x-llmgate-native"]["kind"] == "openai" and chat["x-llmgate-native"]["names"] == ["text.verbosity"]
    assert chat["reasoning_effort"] == "medium" and chat["stream"] is True and chat["parallel_tool_calls"] is False
    assert "response_format" not in chat
    assert chat["messages"] == [
        {"role": "system", "content": "You are Codex."},
        {"role": "system", "content": "sandbox"},
        {"role": "user", "content": "fix it"},
    ]


def test_defaults_of_hints_are_not_reported():
    chat, ignored = chat_of(
        {
            "model": "m",
            "input": "hi",
            "background": False,
            "truncation": "disabled",
            "top_logprobs": 0,
            "include": [],
            "service_tier": None,
            "store": None,
            "previous_response_id": None,
            "instructions": None,
        }
    )
    assert ignored == [] and "service_tier" not in chat
    chat, ignored = chat_of(
        {
            "model": "m",
            "input": "hi",
            "truncation": "auto",
            "top_logprobs": 3,
            "service_tier": "flex",
            "max_tool_calls": 3,
            "prompt_cache_retention": "24h",
        }
    )
    assert ignored == ["truncation", "top_logprobs", "max_tool_calls"]
    assert chat["service_tier"] == "flex" and chat["prompt_cache_retention"] == "24h"  # chat parameters too


@pytest.mark.parametrize(
    "name, value", [("frobnicate", 1), ("messages", [{"role": "user", "content": "hi"}]), ("max_tokens", 10)]
)
def test_unknown_parameters_are_refused(name, value):
    error = refused({"model": "m", "input": "hi", name: value})
    assert error.param == name and error.code == "unknown_parameter"
    assert name in error.message


@pytest.mark.parametrize(
    "body, param",
    [
        ({"input": "hi"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": 3}, "input"),
        ({"model": "m", "input": "hi", "conversation": "conv_1"}, "conversation"),
        ({"model": "m", "input": "hi", "prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"model": "m", "input": "hi", "background": True}, "background"),
        ({"model": "m", "input": "hi", "instructions": ["x"]}, "instructions"),
        ({"model": "m", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "m", "input": "hi", "previous_response_id": 7}, "previous_response_id"),
        ({"model": "m", "input": "hi", "user": 7}, "user"),
        ({"model": "m", "input": "hi", "include": "reasoning.encrypted_content"}, "include"),
        ({"model": "m", "input": "hi", "truncation": "sometimes"}, "truncation"),
        ({"model": "m", "input": "hi", "reasoning": "high"}, "reasoning"),
        ({"model": "m", "input": "hi", "reasoning": {"effort": 3}}, "reasoning.effort"),
        ({"model": "m", "input": "hi", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"model": "m", "input": "hi", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
        ({"model": "m", "input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"model": "m", "input": "hi", "text": {"verbosity": "loud"}}, "text.verbosity"),
        ({"model": "m", "input": "hi", "tools": {"name": "x"}}, "tools"),
        ({"model": "m", "input": "hi", "tools": [TIME, {"type": "function"}]}, "tools[1].name"),
        ({"model": "m", "input": "hi", "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools[0].name"),
        ({"model": "m", "input": "hi", "tools": [{**TIME, "parameters": "{}"}]}, "tools[0].parameters"),
        ({"model": "m", "input": "hi", "tools": [{**TIME, "strict": "yes"}]}, "tools[0].strict"),
        ({"model": "m", "input": "hi", "tools": [TIME], "tool_choice": "sometimes"}, "tool_choice"),
        (
            {"model": "m", "input": "hi", "tools": [TIME], "tool_choice": {"type": "function", "name": "nope"}},
            "tool_choice.name",
        ),
        (
            {"model": "m", "input": "hi", "tools": [TIME], "tool_choice": {"type": "web_search_preview"}},
            "tool_choice.type",
        ),
        (
            {
                "model": "m",
                "input": "hi",
                "tools": [TIME],
                "tool_choice": {
                    "type": "allowed_tools",
                    "mode": "auto",
                    "tools": [{"type": "mcp", "server_label": "x"}],
                },
            },
            "tool_choice.tools[0]",
        ),
        ({"model": "m", "input": ["hi"]}, "input[0]"),
        ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"model": "m", "input": [{"role": "user"}]}, "input[0].content"),
        (
            {
                "model": "m",
                "input": [
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": "b"},
                    {"role": "user", "content": "c"},
                    {"role": "user", "content": [{"type": "image", "url": "x"}]},
                ],
            },
            "input[3].content[0].type",
        ),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]},
            "input[0].content[0].type",
        ),
        ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
        (
            {"model": "m", "input": [{"role": "assistant", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"model": "m", "input": [{"role": "system", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0].type",
        ),
        ({"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
        ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]}, "input[0].name"),
        (
            {"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]},
            "input[0].arguments",
        ),
        ({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
        (
            {
                "model": "m",
                "input": [
                    {
                        "type": "function_call_output",
                        "call_id": "c",
                        "output": [{"type": "input_image", "file_id": "f"}],
                    }
                ],
            },
            "input[0].output[0].file_id",
        ),
        ({"model": "m", "input": [{"type": "reasoning", "id": "rs_1", "summary": "x"}]}, "input[0].summary"),
        ({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        ({"model": "m", "input": [{"role": "user", "content": "x"}, {"id": "msg_1"}]}, "input[1]"),
        ({"model": "m", "input": [{"type": "web_search_call", "id": "ws_1", "status": "completed"}]}, "input[0].type"),
        ({"model": "m", "input": [{"type": 3}]}, "input[0].type"),
    ],
)
def test_every_refusal_names_its_parameter(body, param):
    error = refused(body)
    assert error.param == param, error.message
    assert error.body()["error"]["type"] == "invalid_request_error"
    assert len(error.message) > len(param)


@pytest.mark.parametrize("kind", sorted(PROVIDER_TOOLS))
def test_provider_run_tools_offered_beside_functions_are_left_out_and_named(kind):
    chat, ignored = to_chat_request({"model": "m", "input": "hi", "tools": [TIME, {"type": kind}]})
    assert [t["function"]["name"] for t in chat["tools"]] == [TIME["name"]] and ignored == [f"tools.{kind}"]


@pytest.mark.parametrize("kind", ["computer", "local_shell", "custom", "shell", "apply_patch"])
def test_tools_other_than_functions_are_refused(kind):
    error = refused({"model": "m", "input": "hi", "tools": [TIME, {"type": kind}]})
    assert error.param == "tools[1].type" and error.code == "unsupported_tool"
    assert kind in error.message and "function" in error.message


# ---- answers --------------------------------------------------------------------------------------------------


def test_a_text_answer_is_a_response_the_sdk_parses():
    request = {
        "model": "my-route",
        "input": "hi",
        "instructions": "be brief",
        "temperature": 0.5,
        "metadata": {"k": "v"},
        "max_output_tokens": 50,
        "previous_response_id": "resp_prev",
    }
    response = respond(answer("Hello there"), request)
    assert response.id == RID and response.object == "response" and response.status == "completed"
    assert response.output_text == "Hello there"
    assert response.model == "my-route" and response.created_at == CREATED
    message = response.output[0]
    assert (message.type, message.id, message.role, message.status) == (
        "message",
        "msg_abc123",
        "assistant",
        "completed",
    )
    assert message.content[0].annotations == []
    assert (
        response.instructions,
        response.temperature,
        response.metadata,
        response.max_output_tokens,
        response.previous_response_id,
    ) == ("be brief", 0.5, {"k": "v"}, 50, "resp_prev")
    assert (response.tool_choice, response.tools, response.parallel_tool_calls) == ("auto", [], True)
    assert response.incomplete_details is None and response.error is None


def test_usage_mapping():
    u = {
        "prompt_tokens": 100,
        "completion_tokens": 40,
        "total_tokens": 140,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }
    response = respond(answer("ok", usage_=u), {"model": "m", "input": "hi"})
    assert response.usage.input_tokens == 100 and response.usage.output_tokens == 40
    assert response.usage.total_tokens == 140
    assert response.usage.input_tokens_details.cached_tokens == 64
    assert response.usage.output_tokens_details.reasoning_tokens == 30
    plain = respond(answer("ok", usage_=usage(3, 4)), {"model": "m", "input": "hi"}).usage
    assert (
        plain.total_tokens,
        plain.input_tokens_details.cached_tokens,
        plain.output_tokens_details.reasoning_tokens,
    ) == (7, 0, 0)
    data = from_chat_completion(
        {**answer("ok"), "usage": None}, response_id=RID, model="m", request={"model": "m"}, created_at=CREATED
    )
    assert data["usage"] is None


def test_length_makes_the_response_incomplete():
    response = respond(
        answer("It was the best of", finish="length"), {"model": "m", "input": "hi", "max_output_tokens": 5}
    )
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[-1].status == "incomplete"
    assert response.output_text == "It was the best of"
    filtered = respond(answer("", finish="content_filter"), {"model": "m", "input": "hi"})
    assert filtered.status == "incomplete" and filtered.incomplete_details.reason == "content_filter"


def test_an_empty_answer_still_has_a_message():
    response = respond(answer(None), {"model": "m", "input": "hi"})
    assert [item.type for item in response.output] == ["message"] and response.output_text == ""


def test_reasoning_answers():
    response = respond(answer("42", reasoning_content="Six times seven."), {"model": "m", "input": "q"})
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.id == "rs_abc123_0" and reasoning.summary == []
    assert reasoning.content[0].text == "Six times seven." and message.type == "message"
    blocks = [
        {
            "type": "reasoning",
            "id": "rs_up",
            "summary": [{"type": "summary_text", "text": "Sum."}],
            "encrypted_content": "gAAA",
        },
        {"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
        {"type": "redacted_thinking", "data": "r"},
    ]
    response = respond(answer("42", thinking_blocks=blocks, reasoning_content="ignored"), {"model": "m", "input": "q"})
    first, second, third, _ = response.output
    assert (first.id, first.summary[0].text, first.encrypted_content) == ("rs_up", "Sum.", "gAAA")
    assert (second.content[0].text, second.encrypted_content) == ("Hmm.", "sig")
    assert third.encrypted_content == "r"


def test_a_refusal_is_a_refusal_part():
    response = respond(answer(None, refusal="I can't help with that."), {"model": "m", "input": "hi"})
    assert response.output[0].content[0].type == "refusal"
    assert response.output[0].content[0].refusal == "I can't help with that."


def test_function_calls_round_trip_as_the_agents_sdk_sends_them():
    """Turn one asks for two tool calls; turn two sends the output items back verbatim, then their outputs."""
    first = {
        "model": "m",
        "input": [{"role": "user", "content": "weather and time in Paris?"}],
        "tools": [WEATHER, TIME],
    }
    chat, _ = chat_of(first)
    assert chat["tools"][0]["function"]["name"] == "get_weather"
    reply = answer(
        "Checking.",
        calls=[("call_1", "get_weather", '{"city": "Paris"}'), ("call_2", "get_time", "{}")],
        finish="tool_calls",
        reasoning_content="Two lookups.",
    )
    response = respond(reply, first)
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "message", "function_call", "function_call"]
    weather, clock = response.output[2:]
    assert (weather.id, weather.call_id, weather.name, weather.arguments, weather.status) == (
        "fc_abc123_2",
        "call_1",
        "get_weather",
        '{"city": "Paris"}',
        "completed",
    )
    assert (clock.id, clock.call_id) == ("fc_abc123_3", "call_2")

    second = {
        **first,
        "input": [
            *first["input"],
            *(item.model_dump(exclude_unset=True) for item in response.output),
            {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
            {
                "type": "function_call_output",
                "call_id": "call_2",
                "output": [{"type": "input_text", "text": "10:"}, {"type": "input_text", "text": "42"}],
            },
        ],
    }
    chat, ignored = chat_of(second)
    assert ignored == []
    assert chat["messages"] == [
        {"role": "user", "content": "weather and time in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "thinking_blocks": [
                {
                    "type": "reasoning",
                    "id": "rs_abc123_0",
                    "summary": [],
                    "encrypted_content": None,
                    "content": [{"type": "reasoning_text", "text": "Two lookups."}],
                }
            ],
            "tool_calls": [
                tool_call("call_1", "get_weather", '{"city": "Paris"}'),
                tool_call("call_2", "get_time", "{}"),
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "10:42"},
    ]


def test_consecutive_function_calls_merge_and_reasoning_waits_for_its_message():
    items = [
        {"role": "user", "content": "go"},
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "plan"}],
            "encrypted_content": "enc",
        },
        {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "b", "name": "g", "arguments": "{}"},
        {
            "type": "function_call_output",
            "call_id": "a",
            "output": [
                {"type": "input_text", "text": "see"},
                {"type": "input_image", "image_url": "https://example.com/x.png"},
            ],
        },
        {"type": "function_call_output", "call_id": "b", "output": "ok"},
        {"type": "reasoning", "id": "rs_dropped", "summary": []},
        {"role": "user", "content": "and?"},
    ]
    chat, _ = chat_of({"model": "m", "input": items})
    user, calls, out_a, out_b, last = chat["messages"]
    assert calls["content"] is None and [c["id"] for c in calls["tool_calls"]] == ["a", "b"]
    assert calls["thinking_blocks"] == [
        {
            "type": "reasoning",
            "id": "rs_1",
            "encrypted_content": "enc",
            "summary": [{"type": "summary_text", "text": "plan"}],
        }
    ]
    assert out_a["content"] == [
        {"type": "text", "text": "see"},
        {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
    ]
    assert out_b == {"role": "tool", "tool_call_id": "b", "content": "ok"}
    assert last == {"role": "user", "content": "and?"}  # the reasoning before a user message is dropped


def test_previous_turn_is_prepended_and_instructions_replaced():
    turn1 = {"model": "m", "instructions": "Answer in French.", "input": "hi"}
    chat1, _ = chat_of(turn1)
    response1 = from_chat_completion(
        answer("bonjour"), response_id="resp_1", model="m", request=turn1, created_at=CREATED
    )
    history = turn_history(turn1, chat1, response1)
    assert history == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "bonjour"}]

    turn2 = {"model": "m", "instructions": "Answer in German.", "input": "again", "previous_response_id": "resp_1"}
    chat2, ignored = chat_of(turn2, previous=history)
    assert ignored == []
    assert chat2["messages"] == [
        {"role": "system", "content": "Answer in German."},
        *history,
        {"role": "user", "content": "again"},
    ]
    response2 = from_chat_completion(
        answer("hallo"), response_id="resp_2", model="m", request=turn2, created_at=CREATED
    )
    assert Response.model_validate(response2).previous_response_id == "resp_1"

    turn3 = {"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}
    history2 = turn_history(turn2, chat2, response2)
    chat3, _ = to_chat_request(turn3, previous=history2)  # no instructions now: none carried over
    assert chat3["messages"][0] == {"role": "user", "content": "hi"}
    assert chat3["messages"][-2:] == [
        {"role": "assistant", "content": "hallo"},
        {"role": "tool", "tool_call_id": "c", "content": "x"},
    ]
    assert to_chat_request({"model": "m", "previous_response_id": "resp_1"}, previous=history)[0]["messages"] == history


def test_output_items_to_chat():
    reply = answer(
        "Let me look.",
        calls=[("call_9", "f", '{"a": 1}')],
        thinking_blocks=[{"type": "reasoning", "id": "rs_x", "summary": [], "encrypted_content": "e"}],
    )
    data = from_chat_completion(reply, response_id=RID, model="m", request={"model": "m"}, created_at=CREATED)
    assert output_items_to_chat(data) == [
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [tool_call("call_9", "f", '{"a": 1}')],
            "thinking_blocks": [{"type": "reasoning", "id": "rs_x", "summary": [], "encrypted_content": "e"}],
        }
    ]
    refusal = from_chat_completion(
        answer(None, refusal="no"), response_id=RID, model="m", request={"model": "m"}, created_at=CREATED
    )
    assert output_items_to_chat(refusal) == [{"role": "assistant", "content": "no"}]


def test_the_sdk_round_trip_through_create():
    """responses.create with the SDK: its request translated, its answer parsed, output_text read."""
    seen = {}

    def handler(body):
        chat, ignored = chat_of(body)
        seen.update(chat=chat, ignored=ignored)
        return from_chat_completion(
            answer("Paris."), response_id=RID, model=body["model"], request=body, created_at=CREATED
        )

    client = sdk(handler)
    response = client.responses.create(
        model="route",
        input="capital of France?",
        instructions="terse",
        tools=[WEATHER],
        store=False,
        reasoning={"effort": "low", "summary": "auto"},
        text={"format": {"type": "text"}},
    )
    assert response.output_text == "Paris."
    assert response.tools[0].name == "get_weather"
    assert seen["chat"]["messages"][0] == {"role": "system", "content": "terse"}
    assert sorted(seen["ignored"]) == ["reasoning.summary", "store"]


# ---- streams --------------------------------------------------------------------------------------------------


def test_streaming_text():
    request = {"model": "m", "input": "hi", "stream": True}
    events = stream_events(text_chunks("Hel", "lo", usage_=usage(9, 2)), request)
    names = [name for name, _ in events]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0][1]["response"]["status"] == "in_progress" and events[0][1]["response"]["output"] == []
    deltas = [d for n, d in events if n == "response.output_text.delta"]
    assert [(d["item_id"], d["output_index"], d["content_index"], d["delta"]) for d in deltas] == [
        ("msg_abc123", 0, 0, "Hel"),
        ("msg_abc123", 0, 0, "lo"),
    ]
    final = events[-1][1]["response"]
    assert final["status"] == "completed" and final["usage"]["total_tokens"] == 11
    assembler = StreamAssembler()
    for c in text_chunks("Hel", "lo", usage_=usage(9, 2)):
        assembler.add(c)
    assert final == from_chat_completion(
        assembler.result(), response_id=RID, model="m", request=request, created_at=CREATED
    )
    assert Response.model_validate(final).output_text == "Hello"


def test_streaming_through_the_sdk_accumulator():
    def handler(body):
        assert body["stream"] is True
        chat_of(body)
        return stream_events(text_chunks("Bon", "jour"), body)

    client = sdk(handler)
    with client.responses.stream(model="m", input="hi") as stream:
        texts = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert texts == ["Bon", "jour"]
    assert final.output_text == "Bonjour" and final.status == "completed" and final.id == RID


def two_tool_call_chunks():
    yield chunk("c", "m", {"role": "assistant", "content": None})
    yield chunk(
        "c",
        "m",
        {
            "tool_calls": [
                {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]
        },
    )
    yield chunk("c", "m", {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]})
    yield chunk("c", "m", {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]})
    yield chunk(
        "c",
        "m",
        {
            "tool_calls": [
                {"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]
        },
    )
    yield chunk("c", "m", {}, "tool_calls")
    yield chunk("c", "m", usage=usage(20, 15))


def test_streaming_two_tool_calls():
    request = {"model": "m", "input": "weather and time?", "tools": [WEATHER, TIME], "stream": True}
    events = stream_events(two_tool_call_chunks(), request)
    names = [name for name, _ in events]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = [d["item"] for n, d in events if n == "response.output_item.added"]
    assert [(a["id"], a["call_id"], a["name"], a["status"]) for a in added] == [
        ("fc_abc123_0", "call_a", "get_weather", "in_progress"),
        ("fc_abc123_1", "call_b", "get_time", "in_progress"),
    ]
    done = [d["arguments"] for n, d in events if n == "response.function_call_arguments.done"]
    assert done == ['{"city": "Paris"}', "{}"]
    final = events[-1][1]["response"]
    assembler = StreamAssembler()
    for c in two_tool_call_chunks():
        assembler.add(c)
    assert final == from_chat_completion(
        assembler.result(), response_id=RID, model="m", request=request, created_at=CREATED
    )

    client = sdk(lambda body: stream_events(two_tool_call_chunks(), body))
    with client.responses.stream(model="m", input="weather and time?", tools=[WEATHER, TIME]) as stream:
        arg_deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        response = stream.get_final_response()
    assert arg_deltas == ['{"city": ', '"Paris"}', "{}"]
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments, c.status) for c in calls] == [
        ("call_a", "get_weather", '{"city": "Paris"}', "completed"),
        ("call_b", "get_time", "{}", "completed"),
    ]
    assert calls[0].parsed_arguments == {"city": "Paris"}  # the SDK parses strict tools' arguments


def reasoning_chunks():
    yield chunk("c", "m", {"role": "assistant", "content": ""})
    yield chunk("c", "m", {"reasoning_content": "First, "})
    yield chunk("c", "m", {"reasoning_content": "think."})
    yield chunk("c", "m", {"thinking_blocks": [{"type": "thinking", "thinking": "", "signature": "sig-1"}]})
    yield chunk("c", "m", {"content": "Done."})
    yield chunk("c", "m", {}, "stop")
    yield chunk("c", "m", usage={**usage(5, 7), "completion_tokens_details": {"reasoning_tokens": 4}})


def test_streaming_with_reasoning():
    request = {"model": "m", "input": "q", "reasoning": {"effort": "high"}, "stream": True}
    events = stream_events(reasoning_chunks(), request)
    names = [name for name, _ in events]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    reasoning_done = events[8][1]["item"]
    assert reasoning_done == {
        "id": "rs_abc123_0",
        "type": "reasoning",
        "summary": [],
        "status": "completed",
        "content": [{"type": "reasoning_text", "text": "First, think."}],
        "encrypted_content": "sig-1",
    }
    assert events[9][1]["output_index"] == 1 and events[9][1]["item"]["id"] == "msg_abc123"
    final = Response.model_validate(events[-1][1]["response"])
    assert final.output_text == "Done." and final.usage.output_tokens_details.reasoning_tokens == 4
    assert final.reasoning.effort == "high"

    client = sdk(lambda body: stream_events(reasoning_chunks(), body))
    with client.responses.stream(model="m", input="q") as stream:
        thoughts = [e.delta for e in stream if e.type == "response.reasoning_text.delta"]
        response = stream.get_final_response()
    assert thoughts == ["First, ", "think."]
    assert [item.type for item in response.output] == ["reasoning", "message"]
    # the answer goes back as the next turn's history, reasoning and signature included
    assert output_items_to_chat(events[-1][1]["response"])[0]["thinking_blocks"][0]["encrypted_content"] == "sig-1"


def test_streaming_incomplete_and_text_then_tool_call():
    request = {"model": "m", "input": "hi", "tools": [TIME]}
    chunks = [
        chunk("c", "m", {"content": "Let me check."}),
        chunk(
            "c", "m", {"tool_calls": [{"index": 0, "id": "call_t", "function": {"name": "get_time", "arguments": "{"}}]}
        ),
        chunk("c", "m", {}, "length"),
    ]
    events = stream_events(chunks, request)
    names = [name for name, _ in events]
    # the message closes when the call starts; the response ends incomplete, its last item with it
    assert names.index("response.output_item.done") < names.index("response.function_call_arguments.delta")
    assert names[-1] == "response.incomplete"
    final = Response.model_validate(events[-1][1]["response"])
    assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens"
    assert [(i.type, i.status) for i in final.output] == [("message", "completed"), ("function_call", "incomplete")]
    assert final.usage is None


def test_an_empty_stream_still_answers_a_message():
    events = stream_events(
        [chunk("c", "m", {"role": "assistant", "content": ""}), chunk("c", "m", {}, "stop")],
        {"model": "m", "input": "hi"},
    )
    assert "response.output_text.delta" not in [n for n, _ in events]
    assert Response.model_validate(events[-1][1]["response"]).output_text == ""


def test_streamed_refusal():
    events = stream_events(
        [chunk("c", "m", {"refusal": "No"}), chunk("c", "m", {"refusal": "pe."}), chunk("c", "m", {}, "stop")],
        {"model": "m", "input": "hi"},
    )
    assert [d["delta"] for n, d in events if n == "response.refusal.delta"] == ["No", "pe."]
    final = Response.model_validate(events[-1][1]["response"])
    assert final.output[0].content[0].refusal == "Nope."


def test_error_mid_stream():
    request = {"model": "m", "input": "hi"}
    translator = StreamTranslator(RID, "m", request, CREATED)
    events = translator.start() + translator.feed(chunk("c", "m", {"content": "Hal"}))
    events += translator.error_event("upstream_error", "backend 'a' failed mid-stream")
    check_events(events)
    error, failed = events[-2:]
    assert error == (
        "error",
        {
            "type": "error",
            "sequence_number": len(events) - 2,
            "code": "upstream_error",
            "message": "backend 'a' failed mid-stream",
            "param": None,
        },
    )
    assert failed[0] == "response.failed"
    response = Response.model_validate(failed[1]["response"])
    assert response.status == "failed" and response.error.code == "server_error"
    assert response.error.message == "backend 'a' failed mid-stream"
    assert translator.finish() == [] and translator.feed(chunk("c", "m", {"content": "x"})) == []
    rate = StreamTranslator(RID, "m", request, CREATED)
    events = rate.start() + rate.error_event("rate_limit_error", "slow down")
    check_events(events)
    assert events[-1][1]["response"]["error"]["code"] == "rate_limit_exceeded"
