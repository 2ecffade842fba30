"""What becomes of each chat parameter on the way to each backend kind, in one table.

The gateway speaks OpenAI chat inside; a backend of another API must never drop what a caller asked
for without saying so. For every kind, each parameter is:

- translated: sent as the provider's own field (`NOTES` says which);
- refused: a 400 naming the parameter and the backend (`code: unsupported_parameter`), because the
  provider cannot honour it and the answer would differ; a value that asks for nothing beyond the
  default (`n: 1`, `logprobs: false`, a penalty of 0: `HARMLESS`) is accepted;
- ignored: accepted and reported (`Backend.ignored_params`): hints that cannot change the answer
  (`store`, `service_tier`, `prompt_cache_key`, ...);
- passed: sent on unchanged; an OpenAI-compatible server decides.

A top-level parameter not in the table is refused by name for the kinds that translate (anthropic,
bedrock), and passed by the others. Rows named `messages[]...` or `tools[]...` are fields inside
the messages and tools, translated by `turns`; they are in the table so the manual and the tests
cover them too. The manual's parameter page is generated from `POLICY` and `NOTES`.
"""

from __future__ import annotations

from typing import Any, Callable

from pydantic import Field

from ..errors import InvalidRequest

KINDS = ("openai", "anthropic", "bedrock")
TRANSLATING_KINDS = frozenset({"anthropic", "bedrock"})  # unknown parameters refused; the others pass them on
OUTCOMES = ("translated", "refused", "ignored", "passed")
API = {"anthropic": "the Messages API", "bedrock": "Converse"}

_T, _R, _I, _P = OUTCOMES

# reasoning_effort as a thinking budget (tokens). Claude takes at least 1024; "none" turns thinking off.
REASONING_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768}
# ... or as the API's own effort level (reasoning_effort_as: effort, or beside an explicit `thinking`).
EFFORT_LEVELS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh"}


def _row(anthropic: str, bedrock: str, openai: str = _P) -> dict[str, str]:
    return {"openai": openai, "anthropic": anthropic, "bedrock": bedrock}


# What configures an API client (where it connects, with which key), which SDKs and proxies such as LiteLLM
# take beside a request: sent in a body it is refused on every kind, never passed on to an upstream, since
# the gateway alone chooses where a request goes and with what credentials.
CLIENT_SETTINGS = (
    "base_url",
    "api_base",
    "api_key",
    "api_version",
    "api_type",
    "organization",
    "project",
    "default_headers",
    "extra_headers",
    "default_query",
    "max_retries",
)


POLICY: dict[str, dict[str, str]] = {
    "model": _row(_T, _T, _T),
    "messages": _row(_T, _T),
    "stream": _row(_T, _T),
    "stream_options": _row(_T, _T),
    "max_tokens": _row(_T, _T),
    "max_completion_tokens": _row(_T, _T),
    "temperature": _row(_T, _T),
    "top_p": _row(_T, _T),
    "top_k": _row(_T, _T),
    "stop": _row(_T, _T),
    "tools": _row(_T, _T),
    "tool_choice": _row(_T, _T),
    "parallel_tool_calls": _row(_T, _R),
    "response_format": _row(_T, _T),
    "reasoning_effort": _row(_T, _T),
    "thinking": _row(_T, _T),
    "user": _row(_T, _I),
    "safety_identifier": _row(_T, _I),
    "metadata": _row(_I, _I),
    "n": _row(_R, _R),
    "logprobs": _row(_R, _R),
    "top_logprobs": _row(_R, _R),
    "logit_bias": _row(_R, _R),
    "seed": _row(_R, _R),
    "presence_penalty": _row(_R, _R),
    "frequency_penalty": _row(_R, _R),
    "modalities": _row(_R, _R),
    "audio": _row(_R, _R),
    "verbosity": _row(_R, _R),
    "web_search_options": _row(_R, _R),
    "functions": _row(_R, _R),
    "function_call": _row(_R, _R),
    "store": _row(_I, _I),
    "prompt_cache_key": _row(_I, _I),
    "prompt_cache_retention": _row(_I, _I),
    "service_tier": _row(_I, _I),
    "prediction": _row(_I, _I),
    **{name: _row(_R, _R, _R) for name in CLIENT_SETTINGS},
    # fields inside messages and tools
    "messages[].thinking_blocks": _row(_T, _T),
    "messages[].content[].cache_control": _row(_T, _T),
    "messages[].content[].file": _row(_T, _T),
    "messages[].is_error": _row(_T, _T),
    "tools[].function.strict": _row(_T, _T),
}

NOTES: dict[str, str] = {
    "model": "the backend's own model id (`model` in its settings)",
    "messages": "system and developer messages become the system prompt; turns, images, tool calls and tool "
    "results become content blocks",
    "stream": "anthropic: `stream: true`; bedrock: ConverseStream",
    "stream_options": "`include_usage` is honoured by the gateway: these backends always report usage",
    "max_tokens": "anthropic `max_tokens` (`max_tokens_default` when unset); bedrock `inferenceConfig.maxTokens`; "
    "raised above a thinking budget (budget + the answer's own allowance)",
    "max_completion_tokens": "as `max_tokens`, and wins over it",
    "temperature": "anthropic clamps to 1; bedrock `inferenceConfig.temperature`; with thinking on only 1 is "
    "accepted (Claude's rule), other values are refused",
    "top_p": "bedrock `inferenceConfig.topP`; with thinking on, values below 0.95 are refused",
    "top_k": "anthropic `top_k`; bedrock `additionalModelRequestFields.top_k` (Claude models only, else "
    "refused); refused with thinking on",
    "stop": "anthropic `stop_sequences`; bedrock `inferenceConfig.stopSequences`",
    "tools": "anthropic `tools` (`input_schema`); bedrock `toolConfig.tools[].toolSpec`",
    "tool_choice": "auto, required (any), a named tool; none: anthropic `none`, bedrock leaves the tools out unless "
    "the history has tool blocks; forcing a tool is refused with thinking on",
    "parallel_tool_calls": "anthropic `disable_parallel_tool_use`; bedrock has no such switch: `false` is refused "
    "when tools are offered (accepted when moot: no tools, or tool_choice none)",
    "response_format": "json_schema: a forced tool whose input is the answer (content is its JSON, finish_reason "
    "stop), or with `structured_output: native` the API's own (anthropic "
    "`output_config.format`, bedrock `outputConfig.textFormat`); json_object: a forced tool "
    "taking any object; a forced tool is refused with thinking on",
    "reasoning_effort": "a thinking budget (`thinking: {type: enabled, budget_tokens}`): "
    + ", ".join(f"{k} {v}" for k, v in REASONING_BUDGETS.items())
    + "; none: no "
    "thinking; with `reasoning_effort_as: effort`, or when `thinking` is also given, the "
    "API's own effort (`output_config.effort`, bedrock `outputConfig.effort`); bedrock: "
    "thinking on Claude models only, else refused",
    "thinking": "anthropic `thinking` as given; bedrock `additionalModelRequestFields.thinking` on Claude models; for "
    "other models adaptive and disabled (which let the model skip thinking) are not sent and reported "
    "as ignored, with the reasoning_effort beside them; enabled is refused",
    "user": "anthropic `metadata.user_id` (unless safety_identifier is set)",
    "safety_identifier": "anthropic `metadata.user_id`",
    "metadata": "OpenAI's stored-completion tags: Anthropic's metadata takes only user_id, Bedrock's "
    "requestMetadata only filters invocation logs",
    "n": "one choice per request: only 1 is accepted",
    "logprobs": "no token log probabilities: only false is accepted",
    "top_logprobs": "no token log probabilities: only 0 is accepted",
    "logit_bias": "no token biasing: only {} is accepted",
    "seed": "no seeded sampling",
    "presence_penalty": "no penalties: only 0 is accepted",
    "frequency_penalty": "no penalties: only 0 is accepted",
    "modalities": 'text answers only: only `["text"]` is accepted',
    "audio": "no audio answers",
    "verbosity": "no verbosity control: only medium (the default) is accepted",
    "web_search_options": "no provider-run web search",
    "functions": "the deprecated form of tools: send tools",
    "function_call": "the deprecated form of tool_choice: send tool_choice",
    "store": "the gateway keeps its own traffic log",
    "prompt_cache_key": "a cache-routing hint; mark cache points with cache_control instead",
    "prompt_cache_retention": "a cache hint; cache_control's `ttl` sets a cache point's lifetime",
    "service_tier": "a capacity hint; the answer is the same",
    "prediction": "a latency hint; the answer is the same",
    **{name: "an API client's setting, not a request's: the gateway chooses the upstream" for name in CLIENT_SETTINGS},
    "messages[].thinking_blocks": "an assistant message's thinking / redacted_thinking blocks go back first in "
    "its turn, signatures unchanged (bedrock: `reasoningContent`, Claude models "
    "only); answers carry `reasoning_content` and `thinking_blocks`",
    "messages[].content[].cache_control": "on text, image and file parts, system parts, tools, tool calls and tool "
    "messages: anthropic keeps it on the block (the system prompt is then "
    "sent as blocks); bedrock adds a `cachePoint` after the block",
    "messages[].content[].file": "`file_data` data URLs: anthropic documents (PDF, plain text); bedrock "
    "`document` blocks (pdf, csv, doc, docx, xls, xlsx, html, txt, md)",
    "messages[].is_error": "a tool message's error flag: anthropic `is_error`, bedrock `status: error`",
    "tools[].function.strict": "the tool's input follows its schema exactly: anthropic `strict` on the tool, bedrock "
    "`toolSpec.strict`",
}

REASONS: dict[str, str] = {
    "parallel_tool_calls": "{api} has no way to ask for one tool call at a time",
    "n": "{api} returns one choice per request: 'n' must be 1",
    "logprobs": "{api} returns no token log probabilities",
    "top_logprobs": "{api} returns no token log probabilities",
    "logit_bias": "{api} takes no token biases",
    "seed": "{api} has no seeded sampling",
    "presence_penalty": "{api} has no presence penalty",
    "frequency_penalty": "{api} has no frequency penalty",
    "modalities": "{api} answers in text only",
    "audio": "{api} answers in text only",
    "verbosity": "{api} has no verbosity setting",
    "web_search_options": "the provider's web search is not run through this gateway",
    "functions": "'functions' is the deprecated form of 'tools': send 'tools'",
    "function_call": "'function_call' is the deprecated form of 'tool_choice': send 'tool_choice'",
    **{
        name: f"'{name}' configures an API client, it is no request parameter: the gateway chooses the upstream "
        "and its credentials, and sends no caller's setting of them on"
        for name in CLIENT_SETTINGS
    },
}


def _moot_parallel(value: Any, body: dict) -> bool:
    return value is True or not body.get("tools") or body.get("tool_choice") == "none"


# Values of a refused parameter that ask for nothing the backend does not do anyway.
HARMLESS: dict[str, Callable[[Any, dict], bool]] = {
    "parallel_tool_calls": _moot_parallel,
    "n": lambda value, body: value == 1,
    "logprobs": lambda value, body: value is False,
    "top_logprobs": lambda value, body: value == 0,
    "logit_bias": lambda value, body: value == {},
    "presence_penalty": lambda value, body: value == 0,
    "frequency_penalty": lambda value, body: value == 0,
    "modalities": lambda value, body: value == ["text"],
    "verbosity": lambda value, body: value == "medium",
}


def is_field(name: str) -> bool:
    """A row for a field inside messages or tools, not a top-level parameter."""
    return "[" in name


def outcome(name: str, kind: str) -> str | None:
    """What `kind` does with the top-level parameter `name`; None when the table has no such parameter."""
    row = POLICY.get(name)
    return None if row is None or is_field(name) else row.get(kind)


def refusal(name: str, backend: str, kind: str, reason: str | None = None) -> InvalidRequest:
    """The 400 for a parameter a backend cannot honour: it names the parameter and the backend."""
    why = reason or REASONS.get(name, "{api} cannot honour it").format(api=API.get(kind, kind))
    return InvalidRequest(
        f"backend '{backend}' ({kind}) does not support '{name}': {why}", param=name, code="unsupported_parameter"
    )


def check_parameters(body: dict, backend: str, kind: str) -> list[str]:
    """Refuse what `kind` cannot honour (400 naming it), before any call; return the ignored parameters."""
    ignored = []
    for name, value in body.items():
        if value is None:  # unset
            continue
        what = outcome(name, kind)
        if what is None:
            if kind in TRANSLATING_KINDS:
                raise InvalidRequest(
                    f"backend '{backend}' ({kind}) does not know the parameter '{name}' and "
                    f"cannot pass it on to {API[kind]}: remove it",
                    param=name,
                    code="unsupported_parameter",
                )
        elif what == "refused":
            harmless = HARMLESS.get(name)
            if harmless is None or not harmless(value, body):
                raise refusal(name, backend, kind)
        elif what == "ignored":
            ignored.append(name)
    return ignored


def ignored_parameters(body: dict, kind: str) -> list[str]:
    """The parameters of `body` that `kind` accepts without effect; never raises."""
    return [name for name, value in body.items() if value is not None and outcome(name, kind) == "ignored"]


# --- the backend settings that choose between translations (anthropic and bedrock) ----------------------


def structured_output_setting(native: str) -> Any:
    return Field(
        "tool",
        description="how a json_schema response_format is honoured: 'tool' forces a tool whose "
        "input is the answer (every Claude model; not beside thinking), 'native' sends the API's own "
        f"structured output ({native}; recent models only)",
    )


def reasoning_effort_setting(native: str) -> Any:
    return Field(
        "budget_tokens",
        description="what reasoning_effort becomes: 'budget_tokens' a thinking budget "
        f"(models with extended thinking), 'effort' the API's own effort level ({native})",
    )
