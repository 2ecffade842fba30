"""OpenAI chat, seen as the content-block conversations that Anthropic and Bedrock both speak.

Both APIs take a separate system prompt, alternating user/assistant turns made of blocks (text,
image, tool use, tool result), and stream content-block events. This module does the shared part
of the translation once; each backend only renders blocks in its own keys.
"""
from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..chat import chunk, parse_arguments, usage
from ..errors import InvalidRequest


@dataclass
class Text:
    text: str


@dataclass
class Image:
    media_type: str | None  # set when `data` holds the bytes (base64), None for a URL
    data: str | None = None
    url: str | None = None


@dataclass
class ToolCall:
    id: str
    name: str
    input: Any


@dataclass
class ToolResult:
    tool_call_id: str
    content: str


Block = Text | Image | ToolCall | ToolResult


@dataclass
class Turn:
    role: str  # "user" or "assistant"
    blocks: list[Block] = field(default_factory=list)


_DATA_URL = re.compile(r"data:(?P<type>[\w/+.-]+);base64,(?P<data>.*)", re.DOTALL)


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


def _content_blocks(content: Any, where: str) -> list[Block]:
    if content is None:
        return []
    if isinstance(content, str):
        return [Text(content)] if content else []
    blocks: list[Block] = []
    for i, part in enumerate(content):
        kind = part.get("type")
        if kind == "text":
            blocks.append(Text(part.get("text", "")))
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            m = _DATA_URL.match(url)
            if m:
                try:
                    base64.b64decode(m.group("data")[:64] + "==", validate=False)
                except ValueError:
                    raise InvalidRequest(f"{where}.content[{i}] is not valid base64 image data", param=where) from None
                blocks.append(Image(media_type=m.group("type"), data=m.group("data")))
            else:
                blocks.append(Image(media_type=None, url=url))
        else:
            raise InvalidRequest(f"{where}.content[{i}]: content parts of type '{kind}' are not supported "
                                 "by this backend",
                                 param=f"{where}.content[{i}]", code="unsupported_content")
    return blocks


def to_turns(messages: list[dict]) -> tuple[list[str], list[Turn]]:
    """Split OpenAI messages into system texts and alternating turns (consecutive same-role turns merged)."""
    system: list[str] = []
    turns: list[Turn] = []

    def add(role: str, blocks: list[Block]) -> None:
        if not blocks:
            return
        if turns and turns[-1].role == role:
            turns[-1].blocks.extend(blocks)
        else:
            turns.append(Turn(role, blocks))

    for i, message in enumerate(messages):
        role, where = message["role"], f"messages[{i}]"
        if role in ("system", "developer"):
            system.append(_text_of(message.get("content")))
        elif role == "user":
            add("user", _content_blocks(message.get("content"), where))
        elif role == "assistant":
            blocks = _content_blocks(message.get("content"), where)
            for call in message.get("tool_calls") or ():
                fn = call["function"]
                blocks.append(ToolCall(call["id"], fn["name"], parse_arguments(fn.get("arguments"))))
            add("assistant", blocks)
        elif role in ("tool", "function"):
            call_id = message.get("tool_call_id") or message.get("name") or ""
            add("user", [ToolResult(call_id, _text_of(message.get("content")))])
    if turns and turns[0].role != "user":
        raise InvalidRequest("the conversation must start with a user message for this backend", param="messages",
                             code="invalid_conversation")
    return system, turns


@dataclass
class ToolSpec:
    name: str
    description: str | None
    parameters: dict


def tool_specs(body: dict) -> list[ToolSpec]:
    return [ToolSpec(t["function"]["name"], t["function"].get("description"),
                     t["function"].get("parameters") or {"type": "object", "properties": {}})
            for t in body.get("tools") or ()]


def tool_choice(body: dict) -> tuple[str, str | None] | None:
    """('auto' | 'any' | 'none' | 'tool', tool name) from OpenAI's tool_choice; None when unset."""
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if choice == "required":
        return "any", None
    if isinstance(choice, str):
        return choice, None
    return "tool", choice["function"]["name"]


def unsupported(body: dict, backend: str, kind: str) -> None:
    """Refuse parameters this kind of backend cannot honour, rather than silently ignoring them."""
    if (body.get("n") or 1) > 1:
        raise InvalidRequest(f"backend '{backend}' ({kind}) returns one choice per request: 'n' must be 1",
                             param="n", code="unsupported_parameter")
    fmt = (body.get("response_format") or {}).get("type", "text")
    if fmt != "text":
        raise InvalidRequest(f"backend '{backend}' ({kind}) does not support response_format '{fmt}'",
                             param="response_format", code="unsupported_parameter")


FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                  "pause_turn": "stop", "refusal": "content_filter", "guardrail_intervened": "content_filter",
                  "content_filtered": "content_filter", "model_context_window_exceeded": "length"}


def finish_reason(stop_reason: str | None) -> str | None:
    return None if stop_reason is None else FINISH_REASONS.get(stop_reason, "stop")


def message_from_blocks(blocks: list[Block]) -> dict:
    """An OpenAI assistant message from the answer's text and tool-use blocks."""
    text = "".join(b.text for b in blocks if isinstance(b, Text))
    calls = [{"id": b.id, "type": "function", "function": {"name": b.name, "arguments": _json(b.input)}}
             for b in blocks if isinstance(b, ToolCall)]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class ChunkBuilder:
    """Turns content-block stream events into OpenAI chat.completion.chunk dicts."""

    def __init__(self, id: str, model: str):
        self.id, self.model = id, model
        self._tool_index: dict[int, int] = {}  # content-block index -> tool_calls index
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0

    def _chunk(self, delta: dict | None = None, finish: str | None = None, usage_: dict | None = None) -> dict:
        return chunk(self.id, self.model, delta, finish, usage_)

    def start(self) -> dict:
        return self._chunk({"role": "assistant", "content": ""})

    def text(self, text: str) -> dict:
        return self._chunk({"content": text})

    def tool_start(self, block: int, id: str, name: str) -> dict:
        index = self._tool_index.setdefault(block, len(self._tool_index))
        return self._chunk({"tool_calls": [{"index": index, "id": id, "type": "function",
                                            "function": {"name": name, "arguments": ""}}]})

    def tool_arguments(self, block: int, partial_json: str) -> dict:
        index = self._tool_index.setdefault(block, len(self._tool_index))
        return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": partial_json}}]})

    def finish(self, stop_reason: str | None) -> dict:
        return self._chunk({}, finish_reason(stop_reason))

    def usage(self) -> dict:
        return self._chunk(usage_=usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens or None))
