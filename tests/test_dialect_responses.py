"""POST /v1/responses through the official openai SDK and the OpenAI Agents SDK, to each backend kind:
whole and streamed answers, a function-tool round trip, previous_response_id (stored per team, shared by
replicas through the state store, refused clearly otherwise), and errors in the OpenAI shape."""

import asyncio
import json

import openai
import pytest

from plugins.api_keys.plugin import hash_key
from plugins.traffic_log.plugin import read_records
from tests.conftest import backend_config
from tests.support import wait_until

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
KEYS = {"a": "sk-lg-responses-team-a-0123456789", "b": "sk-lg-responses-team-b-0123456789"}


def config(kind, fake, tmp_path, **plugins) -> dict:
    return {
        "backends": {"up": backend_config(kind, fake)},
        "routes": {"bot": {"baseline": "up"}},
        "plugins": {"traffic_log": {"path": str(tmp_path / "traffic.db")}, **plugins},
    }


def client(gw, key="k") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def test_whole_and_streamed_answers_and_a_function_tool_round_trip(upstream, make_gateway, tmp_path):
    kind, fake = upstream
    gw = make_gateway(config(kind, fake, tmp_path))
    answer = client(gw).responses.create(model="bot", instructions="be brief", input="hello there")
    assert answer.output_text == "echo: hello there" and answer.status == "completed"
    assert answer.id.startswith("resp_") and answer.model == "bot" and answer.usage.output_tokens > 0

    asked = client(gw).responses.create(model="bot", input="[tool] weather?", tools=[WEATHER])
    call = next(item for item in asked.output if item.type == "function_call")
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    # The second turn sends the first turn's output items back verbatim, as agents do.
    done = client(gw).responses.create(
        model="bot",
        tools=[WEATHER],
        input=[
            {"role": "user", "content": "[tool] weather?"},
            *[item.model_dump(exclude_none=True) for item in asked.output],
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"},
        ],
    )
    assert done.output_text == "tool said: sunny, 21C"

    with client(gw).responses.stream(model="bot", input="stream this please") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "echo: stream this please" == final.output_text
    with client(gw).responses.stream(model="bot", input="[tool] now", tools=[WEATHER]) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in kinds
    called = next(item for item in final.output if item.type == "function_call")
    assert json.loads(called.arguments) == {"city": "Paris"}

    records = wait_until(
        lambda: r if len(r := list(read_records(str(tmp_path / "traffic.db")))) == 5 else None, "five logged exchanges"
    )
    assert all(r["annotations"]["dialect"] == "responses" for r in records)


def test_hints_chat_completions_shares_reach_an_openai_backend_and_others_name_them(
    fake_openai, fake_anthropic, make_gateway, tmp_path
):
    """Responses to an OpenAI backend: what chat completions has too (prompt_cache_key, service_tier,
    text.verbosity as verbosity) goes on; an Anthropic backend names them as ignored and sends none."""
    hints = dict(prompt_cache_key="session-7", service_tier="flex", text={"verbosity": "low"}, store=False)
    gw = make_gateway(config("openai", fake_openai, tmp_path))
    raw = client(gw).responses.with_raw_response.create(model="bot", input="hi", **hints)
    assert "x-llmgate-ignored-params" not in raw.headers
    sent = fake_openai.requests[-1]
    assert (sent["prompt_cache_key"], sent["service_tier"], sent["verbosity"]) == ("session-7", "flex", "low")
    assert not any(key.startswith("x-llmgate") for key in sent)

    gw = make_gateway(config("anthropic", fake_anthropic, tmp_path / "anthropic"))
    raw = client(gw).responses.with_raw_response.create(model="bot", input="hi", **hints)
    named = set(raw.headers["x-llmgate-ignored-params"].split(","))
    assert {"prompt_cache_key", "service_tier", "text.verbosity"} <= named
    sent = fake_anthropic.requests[-1]
    assert not {"prompt_cache_key", "service_tier", "verbosity"} & set(sent) and "x-llmgate-native" not in sent


def test_previous_response_id_continues_a_stored_turn_for_the_same_team_only(fake_openai, make_gateway, tmp_path):
    gw = make_gateway(
        config(
            "openai",
            fake_openai,
            tmp_path,
            api_keys={"enabled": True, "teams": {name: {"keys": [hash_key(key)]} for name, key in KEYS.items()}},
        )
    )
    first = client(gw, KEYS["a"]).responses.create(model="bot", instructions="rule one", input="first question")
    second = client(gw, KEYS["a"]).responses.create(
        model="bot", instructions="rule two", input="second question", previous_response_id=first.id
    )
    assert second.output_text == "echo: second question"
    sent = fake_openai.requests[-1]["messages"]
    assert sent == [
        {"role": "system", "content": "rule two"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "echo: first question"},
        {"role": "user", "content": "second question"},
    ]  # the new instructions only

    with pytest.raises(openai.BadRequestError) as foreign:  # another team cannot continue it, or learn it exists
        client(gw, KEYS["b"]).responses.create(model="bot", input="x", previous_response_id=first.id)
    assert foreign.value.body["param"] == "previous_response_id"
    assert foreign.value.body["code"] == "previous_response_not_found"

    unstored = client(gw, KEYS["a"]).responses.create(model="bot", input="keep nothing", store=False)
    with pytest.raises(openai.BadRequestError) as refused:
        client(gw, KEYS["a"]).responses.create(model="bot", input="x", previous_response_id=unstored.id)
    assert "store: false" in refused.value.body["message"]


def test_replicas_sharing_redis_continue_each_others_responses(fake_openai, make_gateway, tmp_path, redis_url):
    cfg = config("openai", fake_openai, tmp_path)
    one = make_gateway({**cfg, "state": {"redis_url": redis_url}})
    two = make_gateway({**cfg, "state": {"redis_url": redis_url}})
    first = client(one).responses.create(model="bot", input="asked on one")
    answer = client(two).responses.create(model="bot", input="asked on two", previous_response_id=first.id)
    assert answer.output_text == "echo: asked on two"
    assert [m["content"] for m in fake_openai.requests[-1]["messages"]] == [
        "asked on one",
        "echo: asked on one",
        "asked on two",
    ]


@pytest.mark.parametrize(
    "change, param",
    [
        ({"input": None}, "input"),
        ({"tools": [{"type": "computer"}]}, "tools[0].type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"frequency_penalty": 1}, "frequency_penalty"),
    ],
)
def test_bad_requests_are_400s_naming_the_parameter(fake_openai, make_gateway, tmp_path, change, param):
    gw = make_gateway(config("openai", fake_openai, tmp_path))
    body = {k: v for k, v in {"model": "bot", "input": "hi", **change}.items() if v is not None}
    with pytest.raises(openai.BadRequestError) as refused:
        client(gw).post("/responses", body=body, cast_to=object)
    assert refused.value.body["param"].startswith(param) and refused.value.body["type"] == "invalid_request_error"
    assert fake_openai.requests == []


def test_an_agents_sdk_agent_runs_a_function_tool_through_the_gateway(upstream, make_gateway, tmp_path):
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    kind, fake = upstream
    gw = make_gateway(config(kind, fake, tmp_path))
    calls = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"{city}: sunny, 21C"

    model = OpenAIResponsesModel(
        model="bot", openai_client=openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
    )
    agent = Agent(name="forecaster", instructions="answer with the weather", model=model, tools=[get_weather])
    result = asyncio.run(Runner.run(agent, "[tool] what is the weather?"))
    assert calls == ["Paris"] and result.final_output == "tool said: Paris: sunny, 21C"
