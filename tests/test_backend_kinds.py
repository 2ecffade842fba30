"""The same route, served by each backend kind, answers the official SDK the same way."""

import json

import openai
import pytest

from tests.conftest import backend_config

WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


@pytest.fixture
def gw(upstream, make_gateway):
    kind, fake = upstream
    return make_gateway({"backends": {kind: backend_config(kind, fake)}, "routes": {"support-bot": {"baseline": kind}}})


@pytest.fixture
def client(gw):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="app-key", max_retries=0)


def test_text_answer(client, upstream):
    raw = client.chat.completions.with_raw_response.create(
        model="support-bot",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "where is my order"}],
        temperature=0.2,
        max_tokens=50,
    )
    answer = raw.parse()
    assert raw.headers["x-llmgate-variant"] == upstream[0]
    assert answer.choices[0].message.content == "echo: where is my order"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens == 5 and answer.usage.prompt_tokens > 0


def test_streamed_answer_with_usage(client):
    stream = client.chat.completions.create(
        model="support-bot",
        messages=[{"role": "user", "content": "where is my order"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: where is my order"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.completion_tokens == 5


def test_tool_call_and_tool_result_round_trip(client):
    messages = [{"role": "user", "content": "[tool] weather please"}]
    answer = client.chat.completions.create(model="support-bot", messages=messages, tools=WEATHER)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"},
    ]
    final = client.chat.completions.create(model="support-bot", messages=messages, tools=WEATHER)
    assert final.choices[0].message.content == "tool said: 18C and sunny"


def test_streamed_tool_call(client):
    stream = client.chat.completions.create(
        model="support-bot",
        messages=[{"role": "user", "content": "[tool] go"}],
        tools=WEATHER,
        tool_choice="required",
        stream=True,
    )
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or ():
                entry = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = delta.id or entry["id"]
                entry["name"] += (delta.function.name or "") if delta.function else ""
                entry["arguments"] += (delta.function.arguments or "") if delta.function else ""
    assert finish == "tool_calls"
    assert list(calls) == [0] and calls[0]["id"]
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == {"city": "Paris"}


async def test_async_client_stream_and_not(gw):
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="app-key", max_retries=0)
    answer = await client.chat.completions.create(
        model="support-bot", messages=[{"role": "user", "content": "async hello"}]
    )
    assert answer.choices[0].message.content == "echo: async hello"
    stream = await client.chat.completions.create(
        model="support-bot", messages=[{"role": "user", "content": "async hello"}], stream=True
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "echo: async hello"


def test_upstream_failure_maps_the_same_for_every_kind(client):
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="support-bot", messages=[{"role": "user", "content": "[status 500]"}])
    assert err.value.status_code == 502 and err.value.type == "upstream_error"


def test_a_backend_s_system_prompt_and_default_params_reach_its_upstream(upstream, make_gateway):
    """One model under two prompts is two variants: each backend adds its own, on every kind."""
    kind, fake = upstream
    backend = {
        **backend_config(kind, fake),
        "system_prompt": "Answer in French.",
        "params": {"temperature": 0.1, "max_tokens": 33},
    }
    gw = make_gateway({"backends": {kind: backend}, "routes": {"bot": {"baseline": kind}}})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="app-key", max_retries=0)
    client.chat.completions.create(
        model="bot", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    )
    client.chat.completions.create(model="bot", messages=[{"role": "user", "content": "hello"}], temperature=0.7)
    first, second = fake.requests[-2:]
    if kind == "openai":
        assert [m["content"] for m in first["messages"]] == ["Answer in French.", "Be brief.", "hello"]
        assert (first["temperature"], first["max_tokens"], second["temperature"]) == (0.1, 33, 0.7)
    elif kind == "anthropic":
        system = (
            first["system"]
            if isinstance(first["system"], str)
            else "\n".join(block["text"] for block in first["system"])
        )
        assert "Answer in French." in system and "Be brief." in system
        assert system.index("Answer in French.") < system.index("Be brief.")
        assert (first["temperature"], first["max_tokens"], second["temperature"]) == (0.1, 33, 0.7)
    else:
        _, converse = first
        assert [block["text"] for block in converse["system"]] == ["Answer in French.", "Be brief."]
        assert converse["inferenceConfig"]["temperature"] == 0.1 and converse["inferenceConfig"]["maxTokens"] == 33
        assert second[1]["inferenceConfig"]["temperature"] == 0.7


def test_params_cannot_set_what_the_request_itself_decides():
    from gateway.config import ConfigError, parse_config
    from gateway.gateway import Gateway

    config = parse_config(
        {
            "backends": {
                "b": {"kind": "openai", "model": "m", "api_key": "none", "params": {"stream": True, "temperature": 1}}
            },
            "routes": {"r": {"baseline": "b"}},
        }
    )
    with pytest.raises(ConfigError, match="stream cannot be set here"):
        Gateway(config)
