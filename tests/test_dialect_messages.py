"""POST /v1/messages through the official anthropic SDK, to each backend kind: whole and streamed answers,
a tool round trip, system blocks, images, count_tokens, x-api-key, and errors in Anthropic's own shape."""

import json

import anthropic
import openai
import pytest

from plugins.api_keys.plugin import hash_key
from plugins.traffic_log.plugin import read_records
from tests.conftest import backend_config
from tests.support import wait_until

TEAM_KEY = "sk-lg-messages-team-key-0123456789"
WEATHER = {
    "name": "get_weather",
    "description": "the weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def config(kind, fake, tmp_path, **plugins) -> dict:
    return {
        "backends": {"up": backend_config(kind, fake)},
        "routes": {"bot": {"baseline": "up"}},
        "plugins": {"traffic_log": {"path": str(tmp_path / "traffic.db")}, **plugins},
    }


def client(gw, key="k") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)


def test_a_whole_answer_and_a_tool_round_trip_on_every_backend_kind(upstream, make_gateway, tmp_path):
    kind, fake = upstream
    gw = make_gateway(config(kind, fake, tmp_path))
    answer = client(gw).messages.create(
        model="bot", max_tokens=100, system="be brief", messages=[{"role": "user", "content": "hello there"}]
    )
    assert answer.content[0].type == "text" and answer.content[0].text == "echo: hello there"
    assert answer.model == "bot" and answer.stop_reason == "end_turn" and answer.id.startswith("msg_")
    assert answer.usage.output_tokens > 0

    asked = client(gw).messages.create(
        model="bot", max_tokens=100, tools=[WEATHER], messages=[{"role": "user", "content": "[tool] weather?"}]
    )
    assert asked.stop_reason == "tool_use"
    call = next(b for b in asked.content if b.type == "tool_use")
    assert (call.name, call.input) == ("get_weather", {"city": "Paris"})
    done = client(gw).messages.create(
        model="bot",
        max_tokens=100,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "[tool] weather?"},
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in asked.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21C"}]},
        ],
    )
    assert done.content[0].text == "tool said: sunny, 21C" and done.stop_reason == "end_turn"

    records = wait_until(
        lambda: r if len(r := list(read_records(str(tmp_path / "traffic.db")))) == 3 else None, "three logged exchanges"
    )
    assert all(r["annotations"]["dialect"] == "messages" for r in records)
    assert records[0]["request"]["messages"][0] == {"role": "system", "content": "be brief"}  # the chat form


def test_a_streamed_answer_with_a_tool_call_is_what_the_sdk_accumulates(upstream, make_gateway, tmp_path):
    kind, fake = upstream
    gw = make_gateway(config(kind, fake, tmp_path))
    with client(gw).messages.stream(
        model="bot", max_tokens=100, messages=[{"role": "user", "content": "stream this please"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: stream this please" == final.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0

    with client(gw).messages.stream(
        model="bot", max_tokens=100, tools=[WEATHER], messages=[{"role": "user", "content": "[tool] now"}]
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    call = next(b for b in final.content if b.type == "tool_use")
    assert (call.name, call.input, final.stop_reason) == ("get_weather", {"city": "Paris"}, "tool_use")


def test_system_blocks_images_metadata_and_tool_choice_reach_the_backend_in_its_form(
    fake_openai, make_gateway, tmp_path
):
    gw = make_gateway(config("openai", fake_openai, tmp_path))
    client(gw).messages.create(
        model="bot",
        max_tokens=50,
        extra_body={"temperature": 0.2},
        stop_sequences=["END"],
        metadata={"user_id": "user-42"},
        system=[{"type": "text", "text": "rule one. "}, {"type": "text", "text": "rule two."}],
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
                    {"type": "text", "text": "what is this?"},
                ],
            }
        ],
    )
    sent = fake_openai.requests[-1]
    assert sent["messages"][0] == {
        "role": "system",
        "content": [{"type": "text", "text": "rule one. "}, {"type": "text", "text": "rule two."}],
    }
    assert sent["messages"][1]["content"][0] == {
        "type": "image_url",
        "image_url": {"url": f"data:image/png;base64,{PIXEL}"},
    }
    assert sent["user"] == "user-42" and sent["stop"] == ["END"] and sent["temperature"] == 0.2
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]


def test_count_tokens_estimates_and_a_team_key_goes_in_x_api_key(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(
        config(
            "openai",
            fake_openai,
            tmp_path,
            api_keys={"enabled": True, "teams": {"coders": {"keys": [hash_key(TEAM_KEY)]}}},
        )
    )
    counted = client(gw, TEAM_KEY).messages.count_tokens(model="bot", messages=[{"role": "user", "content": "a" * 400}])
    assert 100 <= counted.input_tokens <= 130 and fake_openai.requests == []
    assert (
        client(gw, TEAM_KEY)
        .messages.create(model="bot", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        .content[0]
        .text
        == "echo: hi"
    )
    with pytest.raises(anthropic.AuthenticationError) as refused:
        client(gw, "sk-lg-wrong").messages.create(
            model="bot", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert refused.value.body == {
        "type": "error",
        "error": {
            "type": "authentication_error",
            "message": "Incorrect API key provided: ask the gateway's operator for a key",
        },
    }


@pytest.mark.parametrize(
    "change, status, param_in_message",
    [
        ({"max_tokens": None}, 400, "max_tokens"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "role"),
        ({"messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]}, 400, "video"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, 400, "web_search_20250305"),
        ({"tool_choice": {"type": "sometimes"}}, 400, "tool_choice"),
        ({"frequency_penalty": 1}, 400, "frequency_penalty"),
        ({"model": "no-such-route"}, 404, "no-such-route"),
    ],
)
def test_bad_requests_get_anthropic_errors_that_say_what_to_fix(
    fake_openai, make_gateway, tmp_path, change, status, param_in_message
):
    gw = make_gateway(config("openai", fake_openai, tmp_path))
    body = {"model": "bot", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], **change}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(anthropic.APIStatusError) as refused:
        client(gw).post("/v1/messages", body=body, cast_to=object)
    assert refused.value.status_code == status
    error = refused.value.body
    assert error["type"] == "error" and set(error["error"]) == {"type", "message"}
    assert error["error"]["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    assert param_in_message in error["error"]["message"]
    assert fake_openai.requests == []


def test_a_stream_that_breaks_ends_with_an_error_event(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(config("openai", fake_openai, tmp_path))
    with pytest.raises(anthropic.APIError):
        with client(gw).messages.stream(
            model="bot", max_tokens=10, messages=[{"role": "user", "content": "a [cut] b"}]
        ) as stream:
            for _ in stream:
                pass
    raw = client(gw).messages.with_raw_response.create(
        model="bot", max_tokens=10, stream=True, messages=[{"role": "user", "content": "x [cut]"}]
    )
    text = raw.http_response.read().decode()
    error = json.loads(text.split("event: error\ndata: ")[1].split("\n")[0])
    assert error["type"] == "error" and error["error"]["type"] == "api_error"


def test_parameters_without_effect_are_named_in_a_header_and_the_log(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(config("openai", fake_openai, tmp_path))
    raw = client(gw).messages.with_raw_response.create(  # Anthropic's own hint: an OpenAI backend has no such thing
        model="bot", max_tokens=10, service_tier="auto", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-llmgate-ignored-params"] == "service_tier"
    assert "service_tier" not in fake_openai.requests[-1] and "x-llmgate-native" not in fake_openai.requests[-1]
    chat = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
    raw = chat.chat.completions.with_raw_response.create(
        model="bot", store=True, messages=[{"role": "user", "content": "hi"}]
    )
    assert "x-llmgate-ignored-params" not in raw.headers  # an OpenAI backend takes store itself
    records = wait_until(
        lambda: r if len(r := list(read_records(str(tmp_path / "traffic.db")))) == 2 else None, "two logged exchanges"
    )
    assert [r["annotations"].get("ignored_params") for r in records] == [["service_tier"], None]


def test_what_the_chat_form_lacks_reaches_an_anthropic_backend_untouched(
    fake_anthropic, fake_openai, fake_bedrock, make_gateway, tmp_path
):
    """Messages to an Anthropic backend: Anthropic's own fields, tool fields and betas go as they came; the
    other kinds name them as ignored and send none of them."""
    request = dict(
        model="bot",
        max_tokens=10,
        service_tier="standard_only",
        metadata={"user_id": "user_abc_account_9_session_77"},
        tools=[{**WEATHER, "defer_loading": True, "strict": True}],
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}},
        extra_headers={"anthropic-beta": "context-management-2025-06-27"},
    )
    gw = make_gateway(config("anthropic", fake_anthropic, tmp_path))
    raw = client(gw).messages.with_raw_response.create(**request)
    assert "x-llmgate-ignored-params" not in raw.headers
    sent = fake_anthropic.requests[-1]
    assert sent["service_tier"] == "standard_only"
    assert sent["context_management"] == {"edits": [{"type": "clear_tool_uses_20250919"}]}
    assert sent["metadata"] == {"user_id": "user_abc_account_9_session_77"}  # whole, session and all
    assert sent["tools"][0]["defer_loading"] is True and sent["tools"][0]["strict"] is True
    assert "context-management-2025-06-27" in fake_anthropic.headers[-1]["anthropic-beta"]
    assert not any(key.startswith("x-llmgate") for key in sent)

    for kind, fake in (("openai", fake_openai), ("bedrock", fake_bedrock)):
        gw = make_gateway(config(kind, fake, tmp_path / kind))
        raw = client(gw).messages.with_raw_response.create(**request)
        named = raw.headers["x-llmgate-ignored-params"].split(",")
        assert {"service_tier", "context_management", "tools.defer_loading"} <= set(named), (kind, named)
        sent = json.dumps(fake.requests[-1])
        assert "clear_tool_uses" not in sent and "defer_loading" not in sent and "x-llmgate" not in sent
        assert "anthropic-beta" not in {k.lower() for k in fake.headers[-1]}


def test_a_chat_caller_cannot_write_the_native_slot(fake_anthropic, make_gateway, tmp_path):
    gw = make_gateway(config("anthropic", fake_anthropic, tmp_path))
    chat = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
    slot = {"kind": "anthropic", "params": {"mcp_servers": [{"url": "http://x"}]}, "tools": {}, "headers": {}}
    with pytest.raises(openai.BadRequestError) as bad:
        chat.chat.completions.create(
            model="bot", messages=[{"role": "user", "content": "hi"}], extra_body={"x-llmgate-native": slot}
        )
    assert bad.value.body["param"] == "x-llmgate-native"
    assert not fake_anthropic.requests


def test_an_answer_replayed_as_a_stream_keeps_its_thinking_and_signature():
    """A plugin's answer (a cache hit) is replayed as chunks: the thinking and its signature come out whole."""
    from gateway.chat import StreamAssembler, completion, completion_to_chunks, usage
    from gateway.dialects.anthropic import MessagesStream

    block = {"type": "thinking", "thinking": "weigh it", "signature": "sig-123"}
    message = {"role": "assistant", "content": "done", "reasoning_content": "weigh it", "thinking_blocks": [block]}
    answer = completion("c", "m", message, "stop", usage(3, 4))
    assembled, encoder = StreamAssembler(), MessagesStream("bot", "msg_1")
    events = encoder.start()
    for chunk in completion_to_chunks(answer):
        assembled.add(chunk)
        events += encoder.chunk(chunk)
    events += encoder.finish(None)
    assert assembled.result()["choices"][0]["message"] == message
    text = events.decode()
    assert '"signature_delta","signature":"sig-123"' in text and text.index("weigh it") < text.index('"done"')
