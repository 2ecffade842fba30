"""POST /v1/messages (and /v1/messages/count_tokens): the Anthropic Messages API, as the `anthropic`
SDK and Claude Code speak it.

The request becomes the chat form, with what that form lacks carried under conventions every
backend reads (gateway/backends/params.py says what each kind does with them):

- thinking: an assistant message's `thinking` / `redacted_thinking` blocks are kept, as given, in
  its `thinking_blocks` (so their signatures go back unchanged), their text in `reasoning_content`;
  a stream chunk's delta carries `reasoning_content` pieces and, when a thinking block ends,
  `thinking_blocks: [the whole block, with its signature]`.
- the request's `thinking` and `top_k` keep their names; `metadata.user_id` becomes `user` (the
  rollout's sticky user); `cache_control` stays on the parts, tools and system parts it marks;
  a tool result's `is_error` stays on its tool message.

Answers come back as a Message, or as the Messages stream events (message_start, content blocks of
text, thinking and tool_use with their deltas, message_delta with the usage, message_stop; ping
first), and errors as `{"type": "error", "error": {"type", "message"}}`.
"""
from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from ..chat import parse_arguments
from ..context import RequestContext, dumps
from ..errors import GatewayError, InvalidRequest
from ..gateway import GATEWAY
from ..proxy import read_json
from .base import DIALECT, Dialect, StreamEncoder, sse

ROLES = ("user", "assistant", "system")  # a system message mid-conversation, as Claude Code sends its environment
# Hints without effect on the answer: accepted and reported as ignored.
IGNORED = ("service_tier", "context_management")
KNOWN = frozenset({"model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature",
                   "top_p", "top_k", "tools", "tool_choice", "metadata", "thinking", "output_config", *IGNORED})
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "max": "high"}  # output_config.effort -> reasoning
# Tools the provider runs itself: nothing here can run them, so a request that needs one is refused.
SERVER_TOOL_PREFIXES = ("web_search", "web_fetch", "code_execution", "bash_", "text_editor_", "computer_",
                        "memory", "tool_search", "mcp")
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
               529: "overloaded_error"}


def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _require(condition: bool, message: str, param: str) -> None:
    if not condition:
        raise _bad(message, param)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- the request ---------------------------------------------------------------------------------------

def _source_url(source: Any, where: str, kinds: tuple[str, ...]) -> str:
    """A base64 or url source as a URL the chat form carries (a data URL for bytes)."""
    _require(isinstance(source, dict) and source.get("type") in kinds,
             f"{where}.source.type must be one of {', '.join(kinds)}", f"{where}.source")
    if source["type"] == "url":
        _require(isinstance(source.get("url"), str), f"{where}.source.url must be a string", f"{where}.source.url")
        return source["url"]
    _require(isinstance(source.get("media_type"), str) and isinstance(source.get("data"), str),
             f"{where}.source needs media_type and data", f"{where}.source")
    return f"data:{source['media_type']};base64,{source['data']}"


def _marked(part: dict, block: dict) -> dict:
    if "cache_control" in block:
        part["cache_control"] = block["cache_control"]
    return part


def _part(block: dict, where: str) -> dict:
    """A text, image or document block as a chat content part."""
    kind = block["type"]
    if kind == "text":
        _require(isinstance(block.get("text"), str), f"{where}.text must be a string", f"{where}.text")
        return _marked({"type": "text", "text": block["text"]}, block)
    if kind == "image":
        url = _source_url(block.get("source"), where, ("base64", "url"))
        return _marked({"type": "image_url", "image_url": {"url": url}}, block)
    if kind == "document":
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "text":
            _require(isinstance(source.get("data"), str), f"{where}.source.data must be a string",
                     f"{where}.source.data")
            return _marked({"type": "text", "text": source["data"]}, block)
        url = _source_url(source, where, ("base64", "url", "text"))
        file: dict[str, Any] = {"file_data": url} if url.startswith("data:") else {"file_url": url}
        if isinstance(block.get("title"), str):
            file["filename"] = block["title"]
        return _marked({"type": "file", "file": file}, block)
    raise _bad(f"{where}.type '{kind}' is not a content block this gateway translates (text, image, document, "
               "tool_use, tool_result, thinking, redacted_thinking)", f"{where}.type", "unsupported_content")


def _blocks(content: Any, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    _require(isinstance(content, list), f"{where} must be a string or an array of content blocks", where)
    for j, block in enumerate(content):
        _require(isinstance(block, dict) and isinstance(block.get("type"), str),
                 f"{where}[{j}] must be an object with a 'type'", f"{where}[{j}]")
    return content


def _joined(parts: list[dict]) -> str | list[dict]:
    """Parts as the chat form's content: one string when they are plain text, else the parts."""
    if all(p["type"] == "text" and "cache_control" not in p for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _tool_message(block: dict, where: str) -> dict:
    _require(isinstance(block.get("tool_use_id"), str), f"{where}.tool_use_id must be a string",
             f"{where}.tool_use_id")
    content = block.get("content", "")
    if isinstance(content, list):
        parts = [_part(b, f"{where}.content[{k}]") for k, b in enumerate(_blocks(content, f"{where}.content"))]
        content = _joined(parts) if parts else ""
    else:
        _require(isinstance(content, str), f"{where}.content must be a string or blocks", f"{where}.content")
    message: dict[str, Any] = {"role": "tool", "tool_call_id": block["tool_use_id"], "content": content}
    if block.get("is_error"):
        message["is_error"] = True
    return message


def _user_messages(blocks: list[dict], where: str) -> list[dict]:
    """Tool results first (each answers the assistant's call just before), then the rest as one user message."""
    results, parts = [], []
    for j, block in enumerate(blocks):
        if block["type"] == "tool_result":
            results.append(_tool_message(block, f"{where}[{j}]"))
        else:
            parts.append(_part(block, f"{where}[{j}]"))
    return results + ([{"role": "user", "content": _joined(parts)}] if parts else [])


def _assistant_message(blocks: list[dict], where: str) -> dict:
    parts, calls, thinking = [], [], []
    for j, block in enumerate(blocks):
        at = f"{where}[{j}]"
        if block["type"] == "tool_use":
            _require(isinstance(block.get("id"), str) and isinstance(block.get("name"), str),
                     f"{at} needs an id and a name", at)
            _require(isinstance(block.get("input", {}), dict), f"{at}.input must be an object", f"{at}.input")
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": dumps(block.get("input", {}))}})
        elif block["type"] in ("thinking", "redacted_thinking"):
            thinking.append(block)
        else:
            parts.append(_part(block, at))
    message: dict[str, Any] = {"role": "assistant", "content": _joined(parts) if parts else None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["thinking_blocks"] = thinking
        message["reasoning_content"] = "".join(b.get("thinking", "") for b in thinking)
    if message["content"] is None and not calls:
        message["content"] = ""
    return message


def _system(system: Any) -> dict:
    if isinstance(system, str):
        return {"role": "system", "content": system}
    parts = [_part(b, f"system[{i}]") for i, b in enumerate(_blocks(system, "system"))]
    _require(all(p["type"] == "text" for p in parts), "system blocks must be text blocks", "system")
    return {"role": "system", "content": _joined(parts)}


def _tools(tools: Any) -> list[dict]:
    _require(isinstance(tools, list), "'tools' must be an array", "tools")
    out = []
    for i, tool in enumerate(tools):
        _require(isinstance(tool, dict), f"tools[{i}] must be an object", f"tools[{i}]")
        kind = tool.get("type")
        if isinstance(kind, str) and kind != "custom" and kind.startswith(SERVER_TOOL_PREFIXES):
            raise _bad(f"tools[{i}] is the provider-run tool '{kind}', which no backend of this gateway runs: "
                       "give the model a custom tool (name, input_schema) instead", f"tools[{i}].type",
                       "unsupported_tool")
        _require(kind in (None, "custom"), f"tools[{i}].type must be 'custom' or absent", f"tools[{i}].type")
        _require(isinstance(tool.get("name"), str), f"tools[{i}].name must be a string", f"tools[{i}].name")
        function: dict[str, Any] = {"name": tool["name"],
                                    "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append(_marked({"type": "function", "function": function}, tool))
    return out


def _deferred(tools: list) -> bool:
    """Whether a tool is marked `defer_loading` (a hint for the provider's tool search; every tool is sent)."""
    return any(isinstance(tool, dict) and "defer_loading" in tool for tool in tools)


def _user(user_id: str) -> str:
    """The sticky user of `metadata.user_id`. Claude Code sends a JSON object naming the device, the account
    and the session: the account (else the device) keeps one person in one bucket across sessions."""
    if user_id.startswith("{"):
        try:
            named = json.loads(user_id)
        except ValueError:
            return user_id
        if isinstance(named, dict):
            return str(named.get("account_uuid") or named.get("device_id") or user_id)
    return user_id


def _output_config(config: Any, chat: dict) -> None:
    _require(isinstance(config, dict), "'output_config' must be an object", "output_config")
    effort = config.get("effort")
    if effort is not None:
        _require(effort in EFFORTS, f"'output_config.effort' must be one of {', '.join(EFFORTS)}",
                 "output_config.effort")
        chat["reasoning_effort"] = EFFORTS[effort]
    fmt = config.get("format")
    if fmt is not None:
        _require(isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict),
                 "'output_config.format' must be {'type': 'json_schema', 'schema': {...}}", "output_config.format")
        chat["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}
    unknown = sorted(set(config) - {"effort", "format"})
    if unknown:
        raise _bad(f"'output_config.{unknown[0]}' is not an output setting this gateway serves",
                   f"output_config.{unknown[0]}", "unknown_parameter")


def _tool_choice(choice: Any, chat: dict) -> None:
    _require(isinstance(choice, dict) and choice.get("type") in ("auto", "any", "tool", "none"),
             "'tool_choice.type' must be auto, any, tool or none", "tool_choice")
    kind = choice["type"]
    if kind == "tool":
        _require(isinstance(choice.get("name"), str), "'tool_choice.name' must name a tool", "tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    if choice.get("disable_parallel_tool_use"):
        chat["parallel_tool_calls"] = False


def to_chat_request(body: dict) -> tuple[dict, list[str]]:
    """A Messages request as the chat form, and the parameters accepted but ignored."""
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise _bad(f"'{unknown[0]}' is not a Messages API parameter this gateway serves", unknown[0],
                   "unknown_parameter")
    _require(isinstance(body.get("model"), str) and body["model"] != "", "'model' must name a route", "model")
    _require(_is_int(body.get("max_tokens")) and body["max_tokens"] > 0,
             "'max_tokens' is required: a positive integer", "max_tokens")
    messages = body.get("messages")
    _require(isinstance(messages, list) and messages, "'messages' must be a non-empty array", "messages")
    chat_messages: list[dict] = [] if body.get("system") in (None, "", []) else [_system(body["system"])]
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        _require(isinstance(message, dict) and message.get("role") in ROLES,
                 f"{where}.role must be user, assistant or system", f"{where}.role")
        if message["role"] == "system":
            chat_messages.append(_system(message.get("content")))
            continue
        blocks = _blocks(message.get("content"), f"{where}.content")
        if message["role"] == "user":
            chat_messages.extend(_user_messages(blocks, f"{where}.content"))
        else:
            chat_messages.append(_assistant_message(blocks, f"{where}.content"))
    chat: dict[str, Any] = {"model": body["model"], "messages": chat_messages, "max_tokens": body["max_tokens"]}
    for name in ("temperature", "top_p", "top_k", "thinking"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("temperature") is not None:
        value = body["temperature"]
        _require(isinstance(value, (int, float)) and 0 <= value <= 1, "'temperature' must be from 0 to 1",
                 "temperature")
    if body.get("stop_sequences"):
        stops = body["stop_sequences"]
        _require(isinstance(stops, list) and all(isinstance(s, str) for s in stops),
                 "'stop_sequences' must be an array of strings", "stop_sequences")
        chat["stop"] = stops
    ignored = [name for name in IGNORED if name in body]
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
        if _deferred(body["tools"]):
            ignored.append("tools.defer_loading")
    if body.get("output_config") is not None:
        _output_config(body["output_config"], chat)
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], chat)
    metadata = body.get("metadata")
    if metadata is not None:
        _require(isinstance(metadata, dict), "'metadata' must be an object", "metadata")
        if isinstance(metadata.get("user_id"), str) and metadata["user_id"]:
            chat["user"] = _user(metadata["user_id"])
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # the final message_delta carries the usage
    return chat, ignored


# --- the answer -----------------------------------------------------------------------------------------

def usage_of(usage: dict | None) -> dict:
    """The chat form's usage as the Messages API counts it: cached input apart from the rest."""
    usage = usage or {}
    read = ((usage.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0
    written = usage.get("cache_creation_input_tokens") or 0
    return {"input_tokens": max(0, (usage.get("prompt_tokens") or 0) - read - written),
            "output_tokens": usage.get("completion_tokens") or 0,
            "cache_creation_input_tokens": written, "cache_read_input_tokens": read}


def thinking_of(message: dict) -> list[dict]:
    if message.get("thinking_blocks"):
        return list(message["thinking_blocks"])
    if message.get("reasoning_content"):
        return [{"type": "thinking", "thinking": message["reasoning_content"], "signature": ""}]
    return []


def from_chat_completion(answer: dict, *, model: str, message_id: str) -> dict:
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content = thinking_of(message)
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        arguments = (call.get("function") or {}).get("arguments")
        try:
            given = parse_arguments(arguments) if arguments else {}
        except InvalidRequest:
            given = {}
        content.append({"type": "tool_use", "id": call.get("id") or "", "name": call["function"]["name"],
                        "input": given if isinstance(given, dict) else {"value": given}})
    return {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": STOP_REASONS.get(choice.get("finish_reason"), "end_turn"), "stop_sequence": None,
            "usage": usage_of(answer.get("usage"))}


def error_body(error: GatewayError) -> dict:
    kind = ERROR_TYPES.get(error.status, "api_error" if error.status >= 500 else "invalid_request_error")
    body = error.body()["error"]
    return {"type": "error", "error": {"type": kind, "message": body["message"]}}


class MessagesStream(StreamEncoder):
    """Chat chunks in, Messages stream events out: one content block at a time, indexes in order."""

    def __init__(self, model: str, message_id: str):
        self.model, self.message_id = model, message_id
        self.index = -1
        self.open: str | None = None        # the kind of the block being streamed: text, thinking, tool_use
        self.tools: dict[int, int] = {}     # chat tool-call index -> content block index
        self.stop_reason = "end_turn"
        self.usage: dict | None = None

    def _event(self, kind: str, **data: Any) -> bytes:
        return sse(dumps({"type": kind, **data}), event=kind)

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return self._event("content_block_stop", index=self.index)

    def _begin(self, kind: str, block: dict) -> bytes:
        out = self._close()
        self.index += 1
        self.open = kind
        return out + self._event("content_block_start", index=self.index, content_block=block)

    def _delta(self, delta: dict) -> bytes:
        return self._event("content_block_delta", index=self.index, delta=delta)

    def start(self) -> bytes:
        message = {"id": self.message_id, "type": "message", "role": "assistant", "model": self.model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 0, "output_tokens": 0}}
        return self._event("message_start", message=message) + self._event("ping")

    def chunk(self, chunk: dict) -> bytes:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        out = b""
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                if self.open != "thinking":
                    out += self._begin("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                out += self._delta({"type": "thinking_delta", "thinking": delta["reasoning_content"]})
            for block in delta.get("thinking_blocks") or ():
                if block.get("type") == "redacted_thinking":
                    out += self._begin("redacted_thinking", dict(block)) + self._close()
                    continue
                if self.open != "thinking":  # a whole block that was not streamed piece by piece
                    out += self._begin("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                    if block.get("thinking"):
                        out += self._delta({"type": "thinking_delta", "thinking": block["thinking"]})
                if block.get("signature"):
                    out += self._delta({"type": "signature_delta", "signature": block["signature"]})
                out += self._close()
            if delta.get("content"):
                if self.open != "text":
                    out += self._begin("text", {"type": "text", "text": ""})
                out += self._delta({"type": "text_delta", "text": delta["content"]})
            for call in delta.get("tool_calls") or ():
                position = call.get("index", 0)
                function = call.get("function") or {}
                if position not in self.tools:
                    out += self._begin("tool_use", {"type": "tool_use", "id": call.get("id") or "",
                                                    "name": function.get("name") or "", "input": {}})
                    self.tools[position] = self.index
                if function.get("arguments"):
                    out += self._event("content_block_delta", index=self.tools[position],
                                       delta={"type": "input_json_delta", "partial_json": function["arguments"]})
            if choice.get("finish_reason"):
                self.stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return out

    def finish(self, error: GatewayError | None) -> bytes:
        if error is not None:
            return sse(dumps(error_body(error)), event="error")
        usage = usage_of(self.usage)
        return (self._close()
                + self._event("message_delta", delta={"stop_reason": self.stop_reason, "stop_sequence": None},
                              usage=usage)
                + self._event("message_stop"))


class AnthropicMessages(Dialect):
    name = "messages"

    async def to_chat(self, ctx: RequestContext, gateway) -> tuple[dict, list[str]]:
        return to_chat_request(ctx.body)

    def answer(self, completion: dict, ctx: RequestContext) -> dict:
        return from_chat_completion(completion, model=ctx.route_name, message_id=f"msg_{ctx.request_id}")

    def encoder(self, ctx: RequestContext) -> StreamEncoder:
        return MessagesStream(ctx.route_name, f"msg_{ctx.request_id}")

    def error_body(self, error: GatewayError) -> dict:
        return error_body(error)


def estimated_tokens(chat: dict) -> int:
    """An estimate of a request's input tokens (about four characters a token), for count_tokens."""
    return max(1, math.ceil(len(json.dumps(chat["messages"], ensure_ascii=False)
                                + json.dumps(chat.get("tools") or [], ensure_ascii=False)) / 4))


MESSAGES = AnthropicMessages()


async def count_tokens(request: web.Request) -> web.Response:
    """POST /v1/messages/count_tokens: the request's input tokens, estimated (no backend is called)."""
    request[DIALECT] = MESSAGES
    gateway = request.app[GATEWAY]
    await gateway.authenticate(request)
    body = await read_json(request, gateway.config.server.max_body_bytes)
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_json")
    await gateway.route_for(request, body.get("model") if isinstance(body.get("model"), str) else "")
    chat, _ = to_chat_request({"max_tokens": 1, **{k: v for k, v in body.items() if k != "max_tokens"}})
    return web.json_response({"input_tokens": estimated_tokens(chat)})
