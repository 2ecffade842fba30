"""The `anthropic` kind: Anthropic's Messages API (POST /v1/messages), translated to and from OpenAI chat.

The conversation-level translation (system prompt, turns, tool calls and results) lives in
`turns`, shared with Bedrock; this module only renders blocks in Anthropic's keys and reads
Anthropic's answers and stream events.
"""
from __future__ import annotations

import json
from typing import Any, AsyncIterator

from .. import chat
from ..errors import UpstreamError
from . import turns
from .base import BackendSettings
from .http import HttpBackend, iter_sse

# Stream error types that are the provider's momentary trouble, worth another try.
RETRYABLE_STREAM_ERRORS = frozenset({"overloaded_error", "api_error"})


class AnthropicSettings(BackendSettings):
    base_url: str = "https://api.anthropic.com"
    api_key: str | None = None
    anthropic_version: str = "2023-06-01"
    max_tokens_default: int = 4096  # Anthropic requires max_tokens; OpenAI callers often leave it out
    headers: dict[str, str] = {}


def render_block(block: turns.Block) -> dict[str, Any]:
    """One content block in the Messages API's shape."""
    if isinstance(block, turns.Text):
        return {"type": "text", "text": block.text}
    if isinstance(block, turns.Image):
        source = ({"type": "base64", "media_type": block.media_type, "data": block.data} if block.data is not None
                  else {"type": "url", "url": block.url})
        return {"type": "image", "source": source}
    if isinstance(block, turns.ToolCall):
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    return {"type": "tool_result", "tool_use_id": block.tool_call_id, "content": block.content}


def _tool_choice(body: dict) -> dict | None:
    """OpenAI's tool_choice and parallel_tool_calls, which Anthropic folds into one object."""
    choice = turns.tool_choice(body)
    if choice is None:
        if body.get("parallel_tool_calls") is False:
            return {"type": "auto", "disable_parallel_tool_use": True}
        return None
    kind, name = choice
    out: dict[str, Any] = {"type": kind} if name is None else {"type": "tool", "name": name}
    if body.get("parallel_tool_calls") is False and kind != "none":  # 'none' takes no such flag
        out["disable_parallel_tool_use"] = True
    return out


def to_messages_request(body: dict, max_tokens_default: int) -> dict[str, Any]:
    """The Messages request for an OpenAI chat body (already checked by `turns.unsupported`)."""
    system, conversation = turns.to_turns(body["messages"])
    request: dict[str, Any] = {
        "model": body["model"],
        "max_tokens": chat.max_tokens_of(body) or max_tokens_default,
        # Anthropic rejects empty text blocks, which OpenAI callers sometimes send.
        "messages": [{"role": t.role, "content": [render_block(b) for b in t.blocks
                                                  if not (isinstance(b, turns.Text) and not b.text)]}
                     for t in conversation],
    }
    system_text = "\n\n".join(s for s in system if s)
    if system_text:
        request["system"] = system_text
    if body.get("temperature") is not None:
        request["temperature"] = min(float(body["temperature"]), 1.0)  # OpenAI allows up to 2, Anthropic 1
    if body.get("top_p") is not None:
        request["top_p"] = body["top_p"]
    if stop := chat.stop_list(body):
        request["stop_sequences"] = stop
    if specs := turns.tool_specs(body):
        request["tools"] = [{"name": s.name, **({"description": s.description} if s.description else {}),
                             "input_schema": s.parameters} for s in specs]
        if (choice := _tool_choice(body)) is not None:  # the API refuses tool_choice without tools
            request["tool_choice"] = choice
    if isinstance(body.get("user"), str) and body["user"]:
        request["metadata"] = {"user_id": body["user"]}
    return request


def _prompt_tokens(usage: dict) -> int:
    """Anthropic counts cached input apart; OpenAI's prompt_tokens includes it."""
    return ((usage.get("input_tokens") or 0) + (usage.get("cache_creation_input_tokens") or 0)
            + (usage.get("cache_read_input_tokens") or 0))


def from_message(message: dict) -> dict[str, Any]:
    """A chat.completion for a Messages API answer."""
    blocks: list[turns.Block] = []
    for block in message.get("content") or ():
        if block.get("type") == "text":
            blocks.append(turns.Text(block.get("text", "")))
        elif block.get("type") == "tool_use":
            blocks.append(turns.ToolCall(block["id"], block["name"], block.get("input") or {}))
    usage = message.get("usage") or {}
    return chat.completion(id=message.get("id", ""), model=message.get("model", ""),
                           message=turns.message_from_blocks(blocks),
                           finish_reason=turns.finish_reason(message.get("stop_reason")),
                           usage=chat.usage(_prompt_tokens(usage), usage.get("output_tokens") or 0,
                                            usage.get("cache_read_input_tokens")))


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

    def _request(self, body: dict) -> dict[str, Any]:
        turns.unsupported(body, self.name, self.kind)
        return to_messages_request(self.upstream_body(body), self.settings.max_tokens_default)

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        request = self._request(body)
        async with self.post(self._url, request) as resp:
            return from_message(await self.json_body(resp))

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        request = {**self._request(body), "stream": True}
        builder: turns.ChunkBuilder | None = None
        async with self.post(self._url, request) as resp:
            async for event, data in iter_sse(resp.content):
                try:
                    payload = json.loads(data)
                except ValueError:
                    raise UpstreamError(f"backend '{self.name}' sent a stream event that is not JSON",
                                        retryable=True) from None
                kind = payload.get("type") or event
                if kind == "error":
                    error = payload.get("error") or {}
                    raise UpstreamError(f"backend '{self.name}' failed mid-stream: {error.get('type', 'error')}: "
                                        f"{error.get('message') or 'no message'}",
                                        retryable=error.get("type") in RETRYABLE_STREAM_ERRORS)
                if kind == "message_start":
                    message = payload.get("message") or {}
                    builder = turns.ChunkBuilder(message.get("id", ""), message.get("model", self.model))
                    builder.prompt_tokens = _prompt_tokens(message.get("usage") or {})
                    builder.cached_tokens = (message.get("usage") or {}).get("cache_read_input_tokens") or 0
                    builder.completion_tokens = (message.get("usage") or {}).get("output_tokens") or 0
                    yield builder.start()
                    continue
                if builder is None:
                    if kind == "ping":
                        continue
                    raise UpstreamError(f"backend '{self.name}' sent '{kind}' before message_start", retryable=True)
                if kind == "content_block_start":
                    block = payload.get("content_block") or {}
                    if block.get("type") == "tool_use":
                        yield builder.tool_start(payload["index"], block["id"], block["name"])
                    elif block.get("type") == "text" and block.get("text"):
                        yield builder.text(block["text"])
                elif kind == "content_block_delta":
                    delta = payload.get("delta") or {}
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        yield builder.text(delta["text"])
                    elif delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                        yield builder.tool_arguments(payload["index"], delta["partial_json"])
                elif kind == "message_delta":
                    usage = payload.get("usage") or {}
                    if usage.get("output_tokens") is not None:  # cumulative, so the last one counts
                        builder.completion_tokens = usage["output_tokens"]
                    if usage.get("input_tokens") is not None:  # newer API versions repeat input counts here
                        builder.prompt_tokens = _prompt_tokens(usage)
                        builder.cached_tokens = usage.get("cache_read_input_tokens") or builder.cached_tokens
                    stop_reason = (payload.get("delta") or {}).get("stop_reason")
                    if stop_reason is not None:
                        yield builder.finish(stop_reason)
                elif kind == "message_stop":
                    yield builder.usage()
                    return
                # ping, content_block_stop and event types added later carry nothing to pass on
        raise UpstreamError(f"backend '{self.name}' ended the stream before message_stop", retryable=True)
