"""The OpenAI chat-completions shapes: validating a request, building answers, assembling streams.

Validation is hand-written rather than schema-driven because it runs on every request; it checks
what a backend could not recover from, names the offending parameter, and passes unknown
parameters through for backends that understand them.
"""
from __future__ import annotations

import json
import time
from typing import Any, Iterator

from .errors import InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
TOOL_CHOICES = frozenset({"none", "auto", "required"})
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})


def _require(condition: bool, message: str, param: str) -> None:
    if not condition:
        raise InvalidRequest(message, param=param, code="invalid_value")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_message(i: int, message: Any) -> None:
    where = f"messages[{i}]"
    _require(isinstance(message, dict), f"{where} must be an object", where)
    role = message.get("role")
    _require(role in ROLES, f"{where}.role must be one of {', '.join(sorted(ROLES))}, got {role!r}", f"{where}.role")
    content = message.get("content")
    if role == "assistant" and content is None:
        _require(bool(message.get("tool_calls") or message.get("function_call")),
                 f"{where}.content is required unless the message has tool_calls", f"{where}.content")
    else:
        _require(isinstance(content, (str, list)), f"{where}.content must be a string or an array of content parts",
                 f"{where}.content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            _require(isinstance(part, dict) and isinstance(part.get("type"), str),
                     f"{where}.content[{j}] must be an object with a 'type'", f"{where}.content[{j}]")
    if role == "tool":
        _require(isinstance(message.get("tool_call_id"), str), f"{where}.tool_call_id is required for role 'tool'",
                 f"{where}.tool_call_id")
    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        _require(isinstance(tool_calls, list), f"{where}.tool_calls must be an array", f"{where}.tool_calls")
        for j, call in enumerate(tool_calls):
            fn = call.get("function") if isinstance(call, dict) else None
            _require(isinstance(fn, dict) and isinstance(fn.get("name"), str) and isinstance(call.get("id"), str),
                     f"{where}.tool_calls[{j}] needs an id and function.name", f"{where}.tool_calls[{j}]")


def validate_chat_request(body: Any) -> dict:
    """Check a chat-completions body; raise InvalidRequest naming the parameter that is wrong."""
    _require(isinstance(body, dict), "the request body must be a JSON object", "body")
    _require(isinstance(body.get("model"), str) and body["model"] != "",
             "you must provide a model parameter naming a route (GET /v1/models lists them)", "model")
    messages = body.get("messages")
    _require(messages is not None, "'messages' is a required parameter", "messages")
    _require(isinstance(messages, list) and len(messages) > 0, "'messages' must be a non-empty array", "messages")
    for i, message in enumerate(messages):
        _validate_message(i, message)
    stream = body.get("stream", False)
    _require(stream is None or isinstance(stream, bool), "'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None:
        _require(isinstance(options, dict), "'stream_options' must be an object", "stream_options")
        _require(bool(stream), "'stream_options' is only allowed when 'stream' is true", "stream_options")
    n = body.get("n")
    _require(n is None or (_is_int(n) and 1 <= n <= 128), "'n' must be an integer from 1 to 128", "n")
    for name, low, high in (("temperature", 0, 2), ("top_p", 0, 1), ("presence_penalty", -2, 2),
                            ("frequency_penalty", -2, 2)):
        value = body.get(name)
        _require(value is None or (_is_number(value) and low <= value <= high),
                 f"'{name}' must be a number from {low} to {high}", name)
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        _require(value is None or (_is_int(value) and value > 0), f"'{name}' must be a positive integer", name)
    stop = body.get("stop")
    _require(stop is None or isinstance(stop, str) or
             (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop)),
             "'stop' must be a string or an array of at most 4 strings", "stop")
    tools = body.get("tools")
    if tools is not None:
        _require(isinstance(tools, list), "'tools' must be an array", "tools")
        for i, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, dict) else None
            _require(isinstance(fn, dict) and tool.get("type") == "function" and isinstance(fn.get("name"), str),
                     f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}", f"tools[{i}]")
    choice = body.get("tool_choice")
    if choice is not None:
        named = isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str)
        _require(named or (isinstance(choice, str) and choice in TOOL_CHOICES),
                 "'tool_choice' must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}",
                 "tool_choice")
    fmt = body.get("response_format")
    if fmt is not None:
        _require(isinstance(fmt, dict) and fmt.get("type") in RESPONSE_FORMATS,
                 "'response_format.type' must be one of text, json_object, json_schema", "response_format")
    return body


def max_tokens_of(body: dict) -> int | None:
    return body.get("max_completion_tokens") or body.get("max_tokens")


def stop_list(body: dict) -> list[str]:
    stop = body.get("stop")
    return [stop] if isinstance(stop, str) else list(stop or [])


def usage(prompt: int, completion: int, cached: int | None = None) -> dict:
    out = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def whole_answer_request(body: dict) -> dict:
    """The same request asking for one whole answer: what a replay off the request path (shadow, judge) sends."""
    request = {k: v for k, v in body.items() if k != "stream_options"}
    request["stream"] = False
    return request


def answer_text(answer: dict | None) -> str | None:
    """What a person or a judge reads of an answer: the first choice's text, or its tool calls as JSON."""
    choices = (answer or {}).get("choices") or []
    message = (choices[0].get("message") or {}) if choices else {}
    if message.get("content"):
        return message["content"]
    return json.dumps(message["tool_calls"], separators=(",", ":")) if message.get("tool_calls") else None


def completion(id: str, model: str, message: dict, finish_reason: str | None, usage: dict | None) -> dict:
    return {"id": id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage}


def chunk(id: str, model: str, delta: dict | None = None, finish_reason: str | None = None,
          usage: dict | None = None, created: int | None = None) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
    out = {"id": id, "object": "chat.completion.chunk", "created": created or int(time.time()), "model": model,
           "choices": choices}
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
        raise InvalidRequest(f"tool call arguments are not valid JSON: {arguments[:100]!r}",
                             param="messages", code="invalid_tool_arguments") from None


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
            slot = self.choices.setdefault(choice.get("index", 0), {"content": [], "tools": {}, "finish": None, "role": "assistant"})
            delta = choice.get("delta") or {}
            if delta.get("content"):
                slot["content"].append(delta["content"])
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
                message["tool_calls"] = [tool_call(t["id"], t["name"], "".join(t["arguments"]))
                                         for _, t in sorted(slot["tools"].items())]
            choices.append({"index": index, "message": message, "finish_reason": slot["finish"], "logprobs": None})
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage}


def completion_to_chunks(answer: dict) -> Iterator[dict]:
    """Replay a whole chat.completion as a stream (for answers that did not come from a live stream)."""
    id, model, created = answer.get("id", ""), answer.get("model", ""), answer.get("created")
    for choice in answer.get("choices", ()):
        message = choice.get("message") or {}
        index = choice.get("index", 0)
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
