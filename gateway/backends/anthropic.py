"""The `anthropic` kind: Anthropic's Messages API (POST /v1/messages), translated to and from OpenAI chat.

The conversation-level translation (system prompt, turns, tool calls and results) lives in
`turns`, shared with Bedrock; this module only renders blocks in Anthropic's keys and reads
Anthropic's answers and stream events.
"""

from __future__ import annotations

import base64
from typing import Any, AsyncIterator, Literal

from .. import chat
from ..bodies import loads
from ..errors import InvalidRequest, UpstreamError
from . import turns
from .base import BackendSettings
from .http import HttpBackend, iter_sse
from .params import check_parameters, reasoning_effort_setting, structured_output_setting

# Stream error types that are the provider's momentary trouble, worth another try.
RETRYABLE_STREAM_ERRORS = frozenset({"overloaded_error", "api_error"})


class AnthropicSettings(BackendSettings):
    base_url: str = "https://api.anthropic.com"
    api_key: str | None = None
    anthropic_version: str = "2023-06-01"
    max_tokens_default: int = 4096  # Anthropic requires max_tokens; OpenAI callers often leave it out
    headers: dict[str, str] = {}
    structured_output: Literal["tool", "native"] = structured_output_setting("output_config.format")
    reasoning_effort_as: Literal["budget_tokens", "effort"] = reasoning_effort_setting("output_config.effort")


def _cached(rendered: dict[str, Any], block: Any) -> dict[str, Any]:
    if getattr(block, "cache", None) is not None:
        rendered["cache_control"] = block.cache
    return rendered


def _document(block: turns.Document) -> dict[str, Any]:
    media = block.media_type.lower()
    if media == "application/pdf":
        source = {"type": "base64", "media_type": "application/pdf", "data": block.data}
    elif media == "text/plain":
        try:
            text = base64.b64decode(block.data, validate=True).decode("utf-8")
        except ValueError:
            raise InvalidRequest(
                f"{block.where}: a text/plain file part's data is not base64 UTF-8 text",
                param=block.where,
                code="invalid_value",
            ) from None
        source = {"type": "text", "media_type": "text/plain", "data": text}
    else:
        raise InvalidRequest(
            f"{block.where}: the Messages API takes PDF and plain-text documents, not {block.media_type}",
            param=block.where,
            code="unsupported_content",
        )
    out: dict[str, Any] = {"type": "document", "source": source}
    if block.name:
        out["title"] = block.name
    return out


def render_block(block: turns.Block) -> dict[str, Any]:
    """One content block in the Messages API's shape."""
    if isinstance(block, turns.Text):
        return _cached({"type": "text", "text": block.text}, block)
    if isinstance(block, turns.Image):
        source = (
            {"type": "base64", "media_type": block.media_type, "data": block.data}
            if block.data is not None
            else {"type": "url", "url": block.url}
        )
        return _cached({"type": "image", "source": source}, block)
    if isinstance(block, turns.Document):
        return _cached(_document(block), block)
    if isinstance(block, turns.Thinking):
        return {"type": "thinking", "thinking": block.thinking, "signature": block.signature}
    if isinstance(block, turns.RedactedThinking):
        return {"type": "redacted_thinking", "data": block.data}
    if isinstance(block, turns.ToolCall):
        return _cached({"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}, block)
    content: Any = block.text
    if any(not isinstance(b, turns.Text) or b.cache is not None for b in block.content):
        content = [render_block(b) for b in block.content if not (isinstance(b, turns.Text) and not b.text)]
    out = {"type": "tool_result", "tool_use_id": block.tool_call_id, "content": content}
    if block.is_error:
        out["is_error"] = True
    return _cached(out, block)


def _tool_choice(body: dict, choice: tuple[str, str | None] | None) -> dict | None:
    """OpenAI's tool_choice and parallel_tool_calls, which Anthropic folds into one object."""
    if choice is None:
        if body.get("parallel_tool_calls") is False:
            return {"type": "auto", "disable_parallel_tool_use": True}
        return None
    kind, name = choice
    out: dict[str, Any] = {"type": kind} if name is None else {"type": "tool", "name": name}
    if body.get("parallel_tool_calls") is False and kind != "none":  # 'none' takes no such flag
        out["disable_parallel_tool_use"] = True
    return out


def _system(system: list[turns.Text]) -> str | list[dict] | None:
    """The system prompt: one string, or blocks when a part marks a cache point."""
    if any(s.cache is not None for s in system):
        return [render_block(s) for s in system if s.text]
    return "\n\n".join(s.text for s in system if s.text) or None


def to_messages_request(
    body: dict,
    max_tokens_default: int,
    *,
    backend: str = "anthropic",
    structured_output: str = "tool",
    reasoning_effort_as: str = "budget_tokens",
) -> dict[str, Any]:
    """The Messages request for an OpenAI chat body (its parameters already checked by `params`)."""
    system, conversation = turns.to_turns(body["messages"])
    reasoning = turns.reasoning(body, backend, "anthropic", reasoning_effort_as)
    output = turns.output_tool(body, backend, "anthropic", native=structured_output == "native")
    turns.check_thinking(body, reasoning, backend, "anthropic", output)
    request: dict[str, Any] = {
        "model": body["model"],
        "max_tokens": turns.max_tokens(body, max_tokens_default, reasoning),
        # Anthropic rejects empty text blocks, which OpenAI callers sometimes send.
        "messages": [
            {
                "role": t.role,
                "content": [render_block(b) for b in t.blocks if not (isinstance(b, turns.Text) and not b.text)],
            }
            for t in conversation
        ],
    }
    if (system_prompt := _system(system)) is not None:
        request["system"] = system_prompt
    if reasoning.thinking is not None:
        request["thinking"] = reasoning.thinking
    if reasoning.effort is not None:
        request.setdefault("output_config", {})["effort"] = reasoning.effort
    if structured_output == "native" and (schema := turns.json_schema(body)) is not None:
        request.setdefault("output_config", {})["format"] = {
            "type": "json_schema",
            "schema": schema.get("schema") or {"type": "object"},
        }
    if body.get("temperature") is not None:
        request["temperature"] = min(float(body["temperature"]), 1.0)  # OpenAI allows up to 2, Anthropic 1
    if body.get("top_p") is not None:
        request["top_p"] = body["top_p"]
    if body.get("top_k") is not None:
        request["top_k"] = body["top_k"]
    if stop := chat.stop_list(body):
        request["stop_sequences"] = stop
    specs = turns.tool_specs(body) + ([output] if output else [])
    if specs:
        request["tools"] = [
            _cached(
                {
                    "name": s.name,
                    **({"description": s.description} if s.description else {}),
                    "input_schema": s.parameters,
                    **({"strict": s.strict} if s.strict is not None else {}),
                },
                s,
            )
            for s in specs
        ]
        if (choice := _tool_choice(body, turns.choose_tool(body, output))) is not None:
            request["tool_choice"] = choice  # the API refuses tool_choice without tools
    user = next((body[k] for k in ("safety_identifier", "user") if isinstance(body.get(k), str) and body[k]), None)
    if user:
        request["metadata"] = {"user_id": user}
    return request


def _prompt_tokens(usage: dict) -> int:
    """Anthropic counts cached input apart; OpenAI's prompt_tokens includes it."""
    return (
        (usage.get("input_tokens") or 0)
        + (usage.get("cache_creation_input_tokens") or 0)
        + (usage.get("cache_read_input_tokens") or 0)
    )


def _usage(usage: dict) -> dict:
    return chat.usage(
        _prompt_tokens(usage),
        usage.get("output_tokens") or 0,
        usage.get("cache_read_input_tokens"),
        cache_write=usage.get("cache_creation_input_tokens"),
    )


def from_message(message: dict, output: str | None = None) -> dict[str, Any]:
    """A chat.completion for a Messages API answer (`output`: the JSON answer's tool, if one was forced)."""
    blocks: list[turns.Block] = []
    for block in message.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            blocks.append(turns.Text(block.get("text", "")))
        elif kind == "tool_use":
            blocks.append(turns.ToolCall(block["id"], block["name"], block.get("input") or {}))
        elif kind == "thinking":
            blocks.append(turns.Thinking(block.get("thinking", ""), block.get("signature", "")))
        elif kind == "redacted_thinking":
            blocks.append(turns.RedactedThinking(block.get("data", "")))
    reply = turns.message_from_blocks(blocks, output)
    return chat.completion(
        id=message.get("id", ""),
        model=message.get("model", ""),
        message=reply,
        finish_reason=turns.finish_reason(message.get("stop_reason"), reply),
        usage=_usage(message.get("usage") or {}),
    )


class AnthropicBackend(HttpBackend):
    kind = "anthropic"
    Settings = AnthropicSettings
    secret_fields = ("api_key",)

    def _headers(self) -> dict[str, str]:
        s = self.settings
        headers = {**s.headers, "anthropic-version": s.anthropic_version, "content-type": "application/json"}
        if s.api_key:
            headers["x-api-key"] = s.api_key
        return headers

    async def start(self) -> None:
        await super().start()
        self._url = self.settings.base_url.rstrip("/") + "/v1/messages"

    def _request(self, body: dict) -> tuple[dict[str, Any], str | None, dict[str, str]]:
        """The Messages request, the name of the tool a JSON answer is forced through (if any), and the
        request's own headers (a Messages caller's `anthropic-beta`)."""
        extra = chat.native(body, self.kind)
        body = self.upstream_body(body)
        check_parameters(body, self.name, self.kind)
        s = self.settings
        request = to_messages_request(
            body,
            s.max_tokens_default,
            backend=self.name,
            structured_output=s.structured_output,
            reasoning_effort_as=s.reasoning_effort_as,
        )
        output = turns.output_tool(body, self.name, self.kind, native=s.structured_output == "native")
        return request, output.name if output else None, self._native(request, extra)

    def _native(self, request: dict[str, Any], extra: dict | None) -> dict[str, str]:
        """A Messages caller's fields the chat form lacks, put back as they came (top-level fields, tool
        fields such as defer_loading); its `anthropic-beta` joins the backend's own."""
        if extra is None:
            return {}
        request.update(extra["params"])
        for tool in request.get("tools", ()):
            tool.update(extra["tools"].get(tool["name"], {}))
        betas = [b for b in (self.settings.headers.get("anthropic-beta"), extra["headers"].get("anthropic-beta")) if b]
        return {"anthropic-beta": ",".join(betas)} if betas else {}

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        request, output, headers = self._request(body)
        async with self.post(self._url, request, headers) as resp:
            return from_message(await self.json_body(resp), output)

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        request, output, headers = self._request(body)
        request["stream"] = True
        builder: turns.ChunkBuilder | None = None
        async with self.post(self._url, request, headers) as resp:
            async for event, data in iter_sse(resp.content):
                try:
                    payload = loads(data)
                except ValueError:
                    raise UpstreamError(
                        f"backend '{self.name}' sent a stream event that is not JSON", retryable=True
                    ) from None
                kind = payload.get("type") or event
                if kind == "error":
                    error = payload.get("error") or {}
                    raise UpstreamError(
                        f"backend '{self.name}' failed mid-stream: {error.get('type', 'error')}: "
                        f"{error.get('message') or 'no message'}",
                        retryable=error.get("type") in RETRYABLE_STREAM_ERRORS,
                    )
                if kind == "message_start":
                    message = payload.get("message") or {}
                    builder = turns.ChunkBuilder(message.get("id", ""), message.get("model", self.model), output)
                    _count(builder, message.get("usage") or {})
                    yield builder.start()
                    continue
                if builder is None:
                    if kind == "ping":
                        continue
                    raise UpstreamError(f"backend '{self.name}' sent '{kind}' before message_start", retryable=True)
                if (out := _event(builder, kind, payload)) is not None:
                    yield out
                if kind == "message_stop":
                    yield builder.usage()
                    return
        raise UpstreamError(f"backend '{self.name}' ended the stream before message_stop", retryable=True)


def _count(builder: turns.ChunkBuilder, usage: dict) -> None:
    """Usage from message_start, or a message_delta that repeats the input counts (newer API versions)."""
    if usage.get("output_tokens") is not None:  # cumulative, so the last one counts
        builder.completion_tokens = usage["output_tokens"]
    if usage.get("input_tokens") is not None:
        builder.prompt_tokens = _prompt_tokens(usage)
        builder.cached_tokens = usage.get("cache_read_input_tokens") or builder.cached_tokens
        builder.cache_write_tokens = usage.get("cache_creation_input_tokens") or builder.cache_write_tokens


def _event(builder: turns.ChunkBuilder, kind: str, payload: dict) -> dict | None:
    """The chunk for one stream event after message_start, if it has one to send."""
    index = payload.get("index", 0)
    if kind == "content_block_start":
        block = payload.get("content_block") or {}
        if block.get("type") == "tool_use":
            return builder.tool_start(index, block["id"], block["name"])
        if block.get("type") == "text" and block.get("text"):
            return builder.text(block["text"])
        if block.get("type") == "thinking":
            return builder.thinking_start(index, block.get("thinking") or "", block.get("signature") or "")
        if block.get("type") == "redacted_thinking":
            builder.redacted_thinking(index, block.get("data") or "")
    elif kind == "content_block_delta":
        delta = payload.get("delta") or {}
        if delta.get("type") == "text_delta" and delta.get("text"):
            return builder.text(delta["text"])
        if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
            return builder.tool_arguments(index, delta["partial_json"])
        if delta.get("type") == "thinking_delta":
            return builder.thinking_text(index, delta.get("thinking") or "")
        if delta.get("type") == "signature_delta":
            builder.thinking_signature(index, delta.get("signature") or "")
    elif kind == "content_block_stop":
        return builder.block_stop(index)
    elif kind == "message_delta":
        _count(builder, payload.get("usage") or {})
        stop_reason = (payload.get("delta") or {}).get("stop_reason")
        if stop_reason is not None:
            return builder.finish(stop_reason)
    return None  # ping, and event types added later, carry nothing to pass on
