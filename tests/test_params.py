"""Every row of the parameter table (`gateway.backends.params.POLICY`), for every backend kind, does what the
table says, against each kind's fake upstream:

- translated: the upstream request has the translated field (or the answer shows it);
- refused: a 400 whose `param` names it and whose message names the backend, before any call;
- ignored: listed by `Backend.ignored_params`, and the call goes through without it;
- passed: the OpenAI-compatible server received it unchanged.

The tests are parametrised over the table itself: a row added without a case in CASES fails.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from gateway.backends.anthropic import AnthropicBackend
from gateway.backends.bedrock import BedrockBackend
from gateway.backends.openai import OpenAIBackend
from gateway.backends.params import CLIENT_SETTINGS, HARMLESS, KINDS, OUTCOMES, POLICY, is_field
from gateway.chat import StreamAssembler
from gateway.errors import InvalidRequest
from tests.conftest import UPSTREAM_KEY, backend_config
from tests.fakes import anthropic_api, bedrock_api

CLAUDE_ON_BEDROCK = "us.anthropic.claude-sonnet-4-20250514-v1:0"
NAME = "up"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
PDF = base64.b64encode(b"%PDF-1.4 fake").decode()


def hi(text: str = "hi") -> list[dict]:
    return [{"role": "user", "content": text}]


def tool_round(**tool_message) -> list[dict]:
    return [
        {"role": "user", "content": "[tool] weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny", **tool_message},
    ]


def signed(kind: str, text: str = "I thought.") -> dict:
    sign = anthropic_api.sign if kind == "anthropic" else bedrock_api.sign
    return {"type": "thinking", "thinking": text, "signature": sign(text)}


Check = Callable[[dict, dict, Any], None]  # (what the upstream received, the answer, the fake)


@dataclass
class Case:
    body: dict | Callable[[str], dict]  # the request's extra parameters (or made per kind)
    anthropic: Check | None = None
    bedrock: Check | None = None
    openai: Check | None = None  # passed rows need none: the parameter arrives unchanged
    extra: dict = field(default_factory=dict)

    def request(self, kind: str) -> dict:
        body = self.body(kind) if callable(self.body) else self.body
        return {"model": "route", "messages": hi(), **body}


def _model(sent, answer, fake):
    assert fake.requests[-1][0] == CLAUDE_ON_BEDROCK


def _stream_answer(sent, answer, fake):
    assert answer["choices"][0]["message"]["content"] == "echo: hi"


def _json_answer(sent, answer, fake):
    assert json.loads(answer["choices"][0]["message"]["content"]) == {"answer": "echo: hi"}
    assert answer["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in answer["choices"][0]["message"]


def _thought(sent, answer, fake):
    message = answer["choices"][0]["message"]
    assert message["reasoning_content"] == "The user said: hi"
    assert message["thinking_blocks"][0]["type"] == "thinking"


def expect(predicate: Callable[[dict, dict, Any], bool]) -> Check:
    def check(sent, answer, fake):
        assert predicate(sent, answer, fake), sent

    return check


def both(check_a: Check, check_b: Check) -> dict:
    return {"anthropic": check_a, "bedrock": check_b}


def _inference(key: str, value: Any) -> Check:
    def check(sent, answer, fake):
        assert sent["inferenceConfig"][key] == value

    return check


def _field(key: str, value: Any) -> Check:
    def check(sent, answer, fake):
        assert sent[key] == value

    return check


CASES: dict[str, Case] = {
    "model": Case({}, _field("model", "claude-test"), _model, _field("model", "gpt-test")),
    "messages": Case(
        {"messages": [{"role": "system", "content": "be brief"}, *hi()]},
        expect(
            lambda s, a, f: (
                s["system"] == "be brief"
                and s["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
            )
        ),
        expect(
            lambda s, a, f: (
                s["system"] == [{"text": "be brief"}]
                and s["messages"] == [{"role": "user", "content": [{"text": "hi"}]}]
            )
        ),
    ),
    "stream": Case(
        {"stream": True},
        expect(lambda s, a, f: s["stream"] is True and _stream_answer(s, a, f) is None),
        _stream_answer,
    ),
    "stream_options": Case(
        {"stream": True, "stream_options": {"include_usage": True}},
        **both(
            expect(lambda s, a, f: a["usage"]["total_tokens"] > 0),
            expect(lambda s, a, f: a["usage"]["total_tokens"] > 0),
        ),
    ),
    "max_tokens": Case({"max_tokens": 33}, _field("max_tokens", 33), _inference("maxTokens", 33)),
    "max_completion_tokens": Case({"max_completion_tokens": 44}, _field("max_tokens", 44), _inference("maxTokens", 44)),
    "temperature": Case({"temperature": 0.5}, _field("temperature", 0.5), _inference("temperature", 0.5)),
    "top_p": Case({"top_p": 0.9}, _field("top_p", 0.9), _inference("topP", 0.9)),
    "top_k": Case(
        {"top_k": 7}, _field("top_k", 7), expect(lambda s, a, f: s["additionalModelRequestFields"]["top_k"] == 7)
    ),
    "stop": Case({"stop": ["END"]}, _field("stop_sequences", ["END"]), _inference("stopSequences", ["END"])),
    "tools": Case(
        {"tools": [WEATHER]},
        expect(
            lambda s, a, f: (
                s["tools"]
                == [
                    {
                        "name": "get_weather",
                        "description": "Weather in a city",
                        "input_schema": WEATHER["function"]["parameters"],
                    }
                ]
            )
        ),
        expect(
            lambda s, a, f: (
                s["toolConfig"]["tools"]
                == [
                    {
                        "toolSpec": {
                            "name": "get_weather",
                            "description": "Weather in a city",
                            "inputSchema": {"json": WEATHER["function"]["parameters"]},
                        }
                    }
                ]
            )
        ),
    ),
    "tool_choice": Case(
        {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        _field("tool_choice", {"type": "tool", "name": "get_weather"}),
        expect(lambda s, a, f: s["toolConfig"]["toolChoice"] == {"tool": {"name": "get_weather"}}),
    ),
    "parallel_tool_calls": Case(
        {"tools": [WEATHER], "parallel_tool_calls": False},
        _field("tool_choice", {"type": "auto", "disable_parallel_tool_use": True}),
    ),
    "response_format": Case(
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "reply",
                    "schema": {"type": "object", "properties": {"answer": {"type": "string"}}},
                },
            }
        },
        **both(_json_answer, _json_answer),
    ),
    "reasoning_effort": Case({"reasoning_effort": "low"}, **both(_thought, _thought)),
    "thinking": Case({"thinking": {"type": "enabled", "budget_tokens": 1024}}, **both(_thought, _thought)),
    "user": Case({"user": "u-1"}, _field("metadata", {"user_id": "u-1"})),
    "safety_identifier": Case({"safety_identifier": "s-1"}, _field("metadata", {"user_id": "s-1"})),
    "metadata": Case({"metadata": {"team": "x"}}),
    "n": Case({"n": 2}),
    "logprobs": Case({"logprobs": True}),
    "top_logprobs": Case({"top_logprobs": 3}),
    "logit_bias": Case({"logit_bias": {"50256": -100}}),
    "seed": Case({"seed": 7}),
    "presence_penalty": Case({"presence_penalty": 0.5}),
    "frequency_penalty": Case({"frequency_penalty": 0.5}),
    "modalities": Case({"modalities": ["text", "audio"]}),
    "audio": Case({"audio": {"voice": "alloy", "format": "wav"}}),
    "verbosity": Case({"verbosity": "low"}),
    "web_search_options": Case({"web_search_options": {}}),
    "functions": Case({"functions": [{"name": "f", "parameters": {"type": "object"}}]}),
    "function_call": Case({"function_call": "auto"}),
    "store": Case({"store": True}),
    **{name: Case({name: "http://127.0.0.1:9/v1"}) for name in CLIENT_SETTINGS},
    "prompt_cache_key": Case({"prompt_cache_key": "k-1"}),
    "prompt_cache_retention": Case({"prompt_cache_retention": "24h"}),
    "service_tier": Case({"service_tier": "flex"}),
    "prediction": Case({"prediction": {"type": "content", "content": "x"}}),
    "messages[].thinking_blocks": Case(
        lambda kind: {
            "messages": [*hi(), {"role": "assistant", "content": "ok", "thinking_blocks": [signed(kind)]}, *hi("again")]
        },
        expect(lambda s, a, f: s["messages"][1]["content"][0] == signed("anthropic")),
        expect(
            lambda s, a, f: (
                s["messages"][1]["content"][0]
                == {
                    "reasoningContent": {
                        "reasoningText": {"text": "I thought.", "signature": bedrock_api.sign("I thought.")}
                    }
                }
            )
        ),
    ),
    "messages[].content[].cache_control": Case(
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "long", "cache_control": {"type": "ephemeral"}}]}
            ]
        },
        expect(lambda s, a, f: s["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}),
        expect(lambda s, a, f: s["messages"][0]["content"][1] == {"cachePoint": {"type": "default"}}),
    ),
    "messages[].content[].file": Case(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "read"},
                        {
                            "type": "file",
                            "file": {"file_data": f"data:application/pdf;base64,{PDF}", "filename": "q3 report.pdf"},
                        },
                    ],
                }
            ]
        },
        expect(
            lambda s, a, f: (
                s["messages"][0]["content"][1]
                == {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
                    "title": "q3 report.pdf",
                }
            )
        ),
        expect(
            lambda s, a, f: (
                s["messages"][0]["content"][1]
                == {"document": {"format": "pdf", "name": "q3 report", "source": {"bytes": PDF}}}
            )
        ),
    ),
    "messages[].is_error": Case(
        {"messages": tool_round(is_error=True), "tools": [WEATHER]},
        expect(lambda s, a, f: s["messages"][2]["content"][0]["is_error"] is True),
        expect(lambda s, a, f: s["messages"][2]["content"][0]["toolResult"]["status"] == "error"),
    ),
    "tools[].function.strict": Case(
        {"tools": [{**WEATHER, "function": {**WEATHER["function"], "strict": True}}]},
        expect(lambda s, a, f: s["tools"][0]["strict"] is True),
        expect(lambda s, a, f: s["toolConfig"]["tools"][0]["toolSpec"]["strict"] is True),
    ),
}

ROWS = [(name, kind) for name in POLICY for kind in KINDS]


def test_the_table_is_complete():
    assert set(CASES) == set(POLICY)
    for name, row in POLICY.items():
        assert set(row) == set(KINDS) and set(row.values()) <= set(OUTCOMES), name
        if "refused" in row.values() and name in HARMLESS:
            assert not HARMLESS[name](CASES[name].request("anthropic")[name], CASES[name].request("anthropic"))


@pytest.fixture
async def make(request):
    started = []

    async def make_backend(kind: str):
        fake = request.getfixturevalue(f"fake_{kind}")
        if kind == "anthropic":
            backend = AnthropicBackend(
                NAME,
                AnthropicBackend.Settings(
                    kind="anthropic", model="claude-test", base_url=fake.url, api_key=UPSTREAM_KEY
                ),
                {},
            )
        elif kind == "bedrock":
            backend = BedrockBackend(
                NAME,
                BedrockBackend.Settings.model_validate({**backend_config("bedrock", fake), "model": CLAUDE_ON_BEDROCK}),
                {},
            )
        else:
            backend = OpenAIBackend(NAME, OpenAIBackend.Settings.model_validate(backend_config("openai", fake)), {})
        await backend.start()
        started.append(backend)
        return backend, fake

    yield make_backend
    for backend in started:
        await backend.close()


async def answer_of(backend, body: dict) -> dict:
    if not body.get("stream"):
        return await backend.complete(body)
    assembler = StreamAssembler()
    async for chunk in backend.stream(body):
        assembler.add(chunk)
    return assembler.result()


def sent_of(kind: str, fake) -> dict:
    return fake.requests[-1][1] if kind == "bedrock" else fake.requests[-1]


@pytest.mark.parametrize("name, kind", ROWS, ids=[f"{n}-{k}" for n, k in ROWS])
async def test_row(name, kind, make):
    case = CASES[name]
    body = case.request(kind)
    backend, fake = await make(kind)
    outcome = POLICY[name][kind]
    if outcome == "refused":
        with pytest.raises(InvalidRequest) as info:
            await answer_of(backend, body)
        assert info.value.param == name and info.value.code == "unsupported_parameter"
        assert f"backend '{NAME}' ({kind})" in info.value.message and f"'{name}'" in info.value.message
        assert fake.requests == []
        return
    ignored = backend.ignored_params(body)
    answer = await answer_of(backend, body)
    sent = sent_of(kind, fake)
    if outcome == "ignored":
        assert ignored == [name] and name not in sent
    else:
        assert ignored == []
    if outcome == "passed":
        top = name.split("[")[0] if is_field(name) else name
        assert sent[top] == body[top]
    if outcome == "translated":
        check = getattr(case, kind)
        assert check is not None, f"no check for {name} translated by {kind}"
        check(sent, answer, fake)


@pytest.mark.parametrize("kind", ["anthropic", "bedrock"])
async def test_unknown_parameters_are_refused_by_name(kind, make):
    backend, fake = await make(kind)
    with pytest.raises(InvalidRequest) as info:
        await backend.complete({"model": "r", "messages": hi(), "frobnicate": 1})
    assert info.value.param == "frobnicate" and f"backend '{NAME}' ({kind})" in info.value.message
    assert fake.requests == []
    await backend.complete({"model": "r", "messages": hi(), "frobnicate": None})  # null is unset


async def test_unknown_parameters_pass_to_an_openai_compatible_server(make):
    backend, fake = await make("openai")
    await backend.complete({"model": "r", "messages": hi(), "frobnicate": 1, "chat_template_kwargs": {"x": 1}})
    assert fake.requests[-1]["frobnicate"] == 1 and fake.requests[-1]["chat_template_kwargs"] == {"x": 1}


@pytest.mark.parametrize("kind", ["anthropic", "bedrock"])
async def test_values_that_ask_for_nothing_more_are_accepted(kind, make):
    backend, fake = await make(kind)
    harmless = {
        "n": 1,
        "logprobs": False,
        "top_logprobs": 0,
        "logit_bias": {},
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "modalities": ["text"],
        "verbosity": "medium",
        "parallel_tool_calls": True,
    }
    assert set(harmless) == set(HARMLESS)
    answer = await backend.complete({"model": "r", "messages": hi(), **harmless})
    assert answer["choices"][0]["message"]["content"] == "echo: hi"
    assert backend.ignored_params({"model": "r", "messages": hi(), **harmless}) == []
    await backend.complete({"model": "r", "messages": hi(), "parallel_tool_calls": False})  # moot without tools


def test_the_manual_shows_the_table_from_the_code():
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    assert "<!-- parameters -->" in (root / "docs" / "parameters.md").read_text(encoding="utf-8")
    spec = importlib.util.spec_from_file_location("reference_hook", root / "docs" / "hooks" / "reference.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    section = hook.parameters_section()
    for name, row in POLICY.items():
        line = next(line for line in section.splitlines() if line.startswith(f"| `{name}` |"))
        assert line.split(" | ")[1:4] == [row[kind] for kind in KINDS], name
