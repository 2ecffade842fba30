"""The OpenAI chat-completions shapes: validating a request, building answers, assembling streams.

Validation is hand-written rather than schema-driven because it runs on every request; it checks
what a backend could not recover from, names the offending parameter, and passes unknown
parameters through for backends that understand them.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Iterator

from .bodies import check_encodable
from .checks import bad, is_int, is_number, shown
from .errors import InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
TOOL_CHOICES = frozenset({"none", "auto", "required"})
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})
DEFAULT_MAX_MESSAGES = 2048  # a conversation longer than this is a mistake or an attack, not a chat
MAX_TOKENS_LIMIT = 2**31 - 1  # what an int32 field (Bedrock's maxTokens, most servers') can hold

# The chat body's slot for what a dialect's request has beyond the chat form, kept in that API's own
# shape for the backend kind that speaks it (Messages to `anthropic`): {"kind", "params" (top-level
# fields), "tools" ({tool name: its extra fields}), "headers", "names" (what they are called in the
# caller's request)}. Every other kind leaves it out, and the request path names `names` as ignored.
# Only dialects write it: a chat-completions caller that sends it is refused.
NATIVE = "x-llmgate-native"


def native(body: dict, kind: str) -> dict | None:
    """The request's own-API fields for a backend of `kind`, if the caller spoke its API."""
    slot = body.get(NATIVE)
    return slot if slot is not None and slot["kind"] == kind else None


def native_slot(body: dict, kind: str) -> dict:
    """The body's native slot for `kind`, made empty if it has none yet (for a dialect to fill)."""
    return body.setdefault(NATIVE, {"kind": kind, "params": {}, "tools": {}, "headers": {}, "names": []})


def without_native(body: dict) -> dict:
    """The chat body without the native slot (what goes to a backend, or is compared)."""
    return {k: v for k, v in body.items() if k != NATIVE} if NATIVE in body else body


def _validate_message(i: int, message: Any) -> None:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise bad(f"{where} must be an object", where)
    role = message.get("role")
    if not (isinstance(role, str) and role in ROLES):
        raise bad(f"{where}.role must be one of {', '.join(sorted(ROLES))}, got {shown(role)}", f"{where}.role")
    content = message.get("content")
    if role == "assistant" and content is None:
        if not (message.get("tool_calls") or message.get("function_call")):
            raise bad(f"{where}.content is required unless the message has tool_calls", f"{where}.content")
    elif not isinstance(content, (str, list)):
        raise bad(f"{where}.content must be a string or an array of content parts", f"{where}.content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and isinstance(part.get("type"), str)):
                raise bad(f"{where}.content[{j}] must be an object with a 'type'", f"{where}.content[{j}]")
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise bad(f"{where}.content[{j}].text must be a string", f"{where}.content[{j}].text")
    name = message.get("name")
    if not (name is None or isinstance(name, str)):
        raise bad(f"{where}.name must be a string", f"{where}.name")
    if role == "tool":
        if not isinstance(message.get("tool_call_id"), str):
            raise bad(f"{where}.tool_call_id is required for role 'tool'", f"{where}.tool_call_id")
    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        if not isinstance(tool_calls, list):
            raise bad(f"{where}.tool_calls must be an array", f"{where}.tool_calls")
        for j, call in enumerate(tool_calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if not (isinstance(fn, dict) and isinstance(fn.get("name"), str) and isinstance(call.get("id"), str)):
                raise bad(f"{where}.tool_calls[{j}] needs an id and function.name", f"{where}.tool_calls[{j}]")


def _validate_passthrough(body: dict) -> None:
    """Types of the parameters the gateway passes on or keys on (`user` picks the rollout bucket,
    `metadata` is logged): a wrong one would otherwise fail at a provider as an opaque error."""
    user = body.get("user")
    if not (user is None or isinstance(user, str)):
        raise bad("'user' must be a string", "user")
    metadata = body.get("metadata")
    if not (metadata is None or (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values()))):
        raise bad("'metadata' must be an object whose values are strings", "metadata")
    seed = body.get("seed")
    if not (seed is None or is_int(seed)):
        raise bad("'seed' must be an integer", "seed")
    for name in ("logprobs", "parallel_tool_calls"):
        value = body.get(name)
        if not (value is None or isinstance(value, bool)):
            raise bad(f"'{name}' must be a boolean", name)
    top = body.get("top_logprobs")
    if not (top is None or (is_int(top) and 0 <= top <= 20)):
        raise bad("'top_logprobs' must be an integer from 0 to 20", "top_logprobs")
    bias = body.get("logit_bias")
    if not (bias is None or (isinstance(bias, dict) and all(is_number(v) for v in bias.values()))):
        raise bad("'logit_bias' must be an object mapping token ids to numbers", "logit_bias")


def validate_chat_request(body: Any, max_messages: int = DEFAULT_MAX_MESSAGES, encodable: bool = False) -> dict:
    """Check a chat-completions body; raise InvalidRequest naming the parameter that is wrong. `encodable`: the
    caller knows it holds no NaN, infinity or lone surrogate (it was parsed as strict JSON), so no walk looks."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", "body")
    if not (isinstance(body.get("model"), str) and body["model"] != ""):
        raise bad("you must provide a model parameter naming a route (GET /v1/models lists them)", "model")
    messages = body.get("messages")
    if messages is None:
        raise bad("'messages' is a required parameter", "messages")
    if not (isinstance(messages, list) and len(messages) > 0):
        raise bad("'messages' must be a non-empty array", "messages")
    if len(messages) > max_messages:
        raise bad(
            f"'messages' has {len(messages)} messages, more than this gateway's limit of {max_messages}", "messages"
        )
    if not encodable:
        check_encodable(body)
    for i, message in enumerate(messages):
        _validate_message(i, message)
    stream = body.get("stream", False)
    if not (stream is None or isinstance(stream, bool)):
        raise bad("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise bad("'stream_options' must be an object", "stream_options")
        if not stream:
            raise bad("'stream_options' is only allowed when 'stream' is true", "stream_options")
    n = body.get("n")
    if not (n is None or (is_int(n) and 1 <= n <= 128)):
        raise bad("'n' must be an integer from 1 to 128", "n")
    for name, low, high in (
        ("temperature", 0, 2),
        ("top_p", 0, 1),
        ("presence_penalty", -2, 2),
        ("frequency_penalty", -2, 2),
    ):
        value = body.get(name)
        if not (value is None or (is_number(value) and low <= value <= high)):
            raise bad(f"'{name}' must be a number from {low} to {high}", name)
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if not (value is None or (is_int(value) and 0 < value <= MAX_TOKENS_LIMIT)):
            raise bad(f"'{name}' must be a positive integer no larger than {MAX_TOKENS_LIMIT}", name)
    _validate_passthrough(body)
    stop = body.get("stop")
    if not (
        stop is None
        or isinstance(stop, str)
        or (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop))
    ):
        raise bad("'stop' must be a string or an array of at most 4 strings", "stop")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise bad("'tools' must be an array", "tools")
        for i, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not (isinstance(fn, dict) and tool.get("type") == "function" and isinstance(fn.get("name"), str)):
                raise bad(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}", f"tools[{i}]")
            strict = fn.get("strict")
            if not (strict is None or isinstance(strict, bool)):
                raise bad(f"tools[{i}].function.strict must be a boolean", f"tools[{i}].function.strict")
    choice = body.get("tool_choice")
    if choice is not None:
        function = choice.get("function") if isinstance(choice, dict) else None
        named = isinstance(function, dict) and isinstance(function.get("name"), str)
        if not (named or (isinstance(choice, str) and choice in TOOL_CHOICES)):
            raise bad(
                "'tool_choice' must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}",
                "tool_choice",
            )
    fmt = body.get("response_format")
    if fmt is not None:
        if not (isinstance(fmt, dict) and isinstance(fmt.get("type"), str) and fmt["type"] in RESPONSE_FORMATS):
            raise bad("'response_format.type' must be one of text, json_object, json_schema", "response_format")
    return body


def max_tokens_of(body: dict) -> int | None:
    return body.get("max_completion_tokens") or body.get("max_tokens")


def estimate_prompt_tokens(body: dict) -> int:
    """A chat request's prompt in tokens, roughly: its characters / 4 (messages, tool calls, tools). Cheap
    enough for every request, without a tokenizer: what a quota reserves and what a context window is
    checked against."""
    chars = 0
    for message in body.get("messages") or ():
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(part.get("text") or "") for part in content if isinstance(part, dict))
        chars += sum(len(json.dumps(call)) for call in message.get("tool_calls") or ())
    if body.get("tools"):
        chars += len(json.dumps(body["tools"]))
    return math.ceil(chars / 4)


def estimate_tokens(body: dict, default_max_tokens: int) -> int:
    """What a request may use at most, roughly: its prompt's characters / 4 plus the completion it allows."""
    completion = (max_tokens_of(body) or default_max_tokens) * (body.get("n") or 1)
    return estimate_prompt_tokens(body) + completion


def stop_list(body: dict) -> list[str]:
    stop = body.get("stop")
    return [stop] if isinstance(stop, str) else list(stop or [])


def usage(
    prompt: int,
    completion: int,
    cached: int | None = None,
    cache_write: int | None = None,
    reasoning: int | None = None,
) -> dict:
    """OpenAI's usage: `prompt` includes the cached tokens, read (`cached`) and written (`cache_write`, as
    `cache_creation_input_tokens`, where the provider reports them); `reasoning` tokens are in `completion`."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    if cache_write:
        out["cache_creation_input_tokens"] = cache_write
    if reasoning:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out


def whole_answer_request(body: dict) -> dict:
    """The same request asking for one whole answer: what a replay off the request path (shadow, judge) sends."""
    request = {k: v for k, v in body.items() if k != "stream_options"}
    request["stream"] = False
    return request


def reasoning_text(source: dict) -> str:
    """The reasoning a message or a delta carries (`reasoning_content`, or `reasoning` as vLLM and OpenRouter
    name it), "" when it has none."""
    for key in ("reasoning_content", "reasoning"):
        if isinstance(source.get(key), str) and source[key]:
            return source[key]
    return ""


def answer_text(answer: dict | None) -> str | None:
    """What a person or a judge reads of an answer: the first choice's text, or its tool calls as JSON."""
    choices = (answer or {}).get("choices") or []
    message = (choices[0].get("message") or {}) if choices else {}
    if message.get("content"):
        return message["content"]
    return json.dumps(message["tool_calls"], separators=(",", ":")) if message.get("tool_calls") else None


def completion(id: str, model: str, message: dict, finish_reason: str | None, usage: dict | None) -> dict:
    return {
        "id": id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage,
    }


def chunk(
    id: str,
    model: str,
    delta: dict | None = None,
    finish_reason: str | None = None,
    usage: dict | None = None,
    created: int | None = None,
) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
    out = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created or int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        out["usage"] = usage
    return out


def tool_call(id: str, name: str, arguments: Any) -> dict:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": id, "type": "function", "function": {"name": name, "arguments": args}}


def parse_arguments(arguments: str | None) -> Any:
    """Tool-call arguments arrive as a JSON string; providers that take objects get the decoded value."""
    if not arguments:
        return {}
    try:
        return json.loads(arguments)
    except ValueError:
        raise InvalidRequest(
            f"tool call arguments are not valid JSON: {arguments[:100]!r}",
            param="messages",
            code="invalid_tool_arguments",
        ) from None


class StreamAssembler:
    """Rebuilds the whole answer from a stream's chunks, so logs and plugins see streams like any response."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.model: str | None = None
        self.created: int | None = None
        self.choices: dict[int, dict] = {}
        self.usage: dict | None = None

    def add(self, chunk: dict) -> None:
        self.id = self.id or chunk.get("id")
        self.model = self.model or chunk.get("model")
        self.created = self.created or chunk.get("created")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            slot = self.choices.setdefault(
                choice.get("index", 0),
                {"content": [], "tools": {}, "finish": None, "role": "assistant", "reasoning": [], "thinking": []},
            )
            delta = choice.get("delta") or {}
            if delta.get("content"):
                slot["content"].append(delta["content"])
            if delta.get("reasoning_content"):
                slot["reasoning"].append(delta["reasoning_content"])
            slot["thinking"].extend(delta.get("thinking_blocks") or ())
            for call in delta.get("tool_calls") or ():
                entry = slot["tools"].setdefault(call.get("index", 0), {"id": None, "name": "", "arguments": []})
                entry["id"] = call.get("id") or entry["id"]
                fn = call.get("function") or {}
                entry["name"] += fn.get("name") or ""
                entry["arguments"].append(fn.get("arguments") or "")
            if choice.get("finish_reason"):
                slot["finish"] = choice["finish_reason"]

    def result(self) -> dict:
        choices = []
        for index in sorted(self.choices):
            slot = self.choices[index]
            message: dict[str, Any] = {"role": "assistant", "content": "".join(slot["content"]) or None}
            if slot["tools"]:
                message["tool_calls"] = [
                    tool_call(t["id"], t["name"], "".join(t["arguments"])) for _, t in sorted(slot["tools"].items())
                ]
            # thinking: its text pieces joined; the whole blocks (with signatures) as they ended, in order
            reasoning = "".join(slot["reasoning"]) or "\n\n".join(
                b["thinking"] for b in slot["thinking"] if b.get("type") == "thinking" and b.get("thinking")
            )
            if reasoning:
                message["reasoning_content"] = reasoning
            if slot["thinking"]:
                message["thinking_blocks"] = list(slot["thinking"])
            choices.append({"index": index, "message": message, "finish_reason": slot["finish"], "logprobs": None})
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage,
        }


def completion_to_chunks(answer: dict) -> Iterator[dict]:
    """Replay a whole chat.completion as a stream (for answers that did not come from a live stream)."""
    id, model, created = answer.get("id", ""), answer.get("model", ""), answer.get("created")
    for choice in answer.get("choices", ()):
        message = choice.get("message") or {}
        index = choice.get("index", 0)
        thought = (
            {"thinking_blocks": message["thinking_blocks"]}
            if message.get("thinking_blocks")
            else ({"reasoning_content": message["reasoning_content"]} if message.get("reasoning_content") else None)
        )
        if thought is not None:  # the reasoning first, whole blocks with their signatures, as a live stream ends them
            c = chunk(id, model, {"role": "assistant", "content": "", **thought}, created=created)
            c["choices"][0]["index"] = index
            yield c
        first = {"role": "assistant", "content": message.get("content") or ""}
        if message.get("tool_calls"):
            first["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        c = chunk(id, model, first, created=created)
        c["choices"][0]["index"] = index
        yield c
        c = chunk(id, model, {}, choice.get("finish_reason"), created=created)
        c["choices"][0]["index"] = index
        yield c
    if answer.get("usage"):
        yield chunk(id, model, usage=answer["usage"], created=created)
