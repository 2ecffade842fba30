"""OpenAI chat, seen as the content-block conversations that Anthropic and Bedrock both speak.

Both APIs take a separate system prompt, alternating user/assistant turns made of blocks (text,
image, document, thinking, tool use, tool result), and stream content-block events. This module
does the shared part of the translation once; each backend only renders blocks in its own keys.

Shared decisions (the parameter table in `params` lists them per kind):
- Thinking: `reasoning_effort` becomes a thinking budget (`params.REASONING_BUDGETS`) or the API's own
  effort level; an explicit `thinking` goes as given. With thinking on, Claude takes temperature 1
  only, top_p from 0.95, no top_k and no forced tool: anything else is refused by name, and
  max_tokens is raised above the budget (budget + the answer's own allowance).
- An assistant message's `thinking_blocks` go back first in its turn, unchanged; answers carry
  `reasoning_content` (the thinking texts joined with a blank line) and `thinking_blocks`; streams
  send `reasoning_content` pieces and, when a block ends, `thinking_blocks: [the whole block]`. A
  bare `reasoning_content` (no blocks) is not sent back: Claude takes back only signed blocks.
- JSON answers (`response_format` json_schema or json_object) through a forced tool: its input is
  the answer's content (a JSON string), and finish_reason is stop when no other tool was called.
- `cache_control` on a part, a system part, a tool, a tool call or a tool message marks that block.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..chat import chunk, max_tokens_of, parse_arguments, usage
from ..errors import InvalidRequest
from .params import EFFORT_LEVELS, REASONING_BUDGETS, refusal

ANSWER_TOKENS = 4096  # the answer's own allowance beside a thinking budget when the caller set no max_tokens
EFFORTS = ("none", *REASONING_BUDGETS)
JSON_TOOL = "json_answer"  # the forced tool's name for json_object (json_schema uses the schema's name)


@dataclass
class Text:
    text: str
    cache: dict | None = None  # the part's cache_control, when it marks a cache point


@dataclass
class Image:
    media_type: str | None  # set when `data` holds the bytes (base64), None for a URL
    data: str | None = None
    url: str | None = None
    cache: dict | None = None
    where: str = "messages"  # the part in the caller's request (`messages[1].content[0]`), for its errors


@dataclass
class Document:
    media_type: str
    data: str  # base64
    name: str | None = None
    cache: dict | None = None
    where: str = "messages"


@dataclass
class Thinking:
    thinking: str
    signature: str


@dataclass
class RedactedThinking:
    data: str


@dataclass
class ToolCall:
    id: str
    name: str
    input: Any
    cache: dict | None = None


@dataclass
class ToolResult:
    tool_call_id: str
    content: list[Text | Image | Document]
    is_error: bool = False
    cache: dict | None = None

    @property
    def text(self) -> str:
        return "".join(b.text for b in self.content if isinstance(b, Text))


Block = Text | Image | Document | Thinking | RedactedThinking | ToolCall | ToolResult


@dataclass
class Turn:
    role: str  # "user" or "assistant"
    blocks: list[Block] = field(default_factory=list)


_DATA_URL = re.compile(r"data:(?P<type>[\w/+.-]+);base64,(?P<data>.*)", re.DOTALL)


def _cache(item: dict, where: str) -> dict | None:
    marker = item.get("cache_control")
    if marker is None:
        return None
    if not (isinstance(marker, dict) and marker.get("type") == "ephemeral"):
        raise InvalidRequest(
            f"{where}.cache_control must be {{'type': 'ephemeral'}} (with an optional 'ttl')",
            param=f"{where}.cache_control",
            code="invalid_value",
        )
    return marker


def _data_url(url: str, where: str) -> re.Match | None:
    m = _DATA_URL.match(url)
    if m:
        try:
            base64.b64decode(m.group("data")[:64] + "==", validate=False)
        except ValueError:
            raise InvalidRequest(f"{where} is not valid base64 data", param=where) from None
    return m


def _part(part: dict, where: str) -> Text | Image | Document:
    kind = part.get("type")
    cache = _cache(part, where)
    if kind == "text":
        return Text(part.get("text", ""), cache)
    if kind == "image_url":
        url = (part.get("image_url") or {}).get("url", "")
        if m := _data_url(url, where):
            return Image(media_type=m.group("type"), data=m.group("data"), cache=cache, where=where)
        return Image(media_type=None, url=url, cache=cache, where=where)
    if kind == "file":
        file = part.get("file") or {}
        m = _data_url(file.get("file_data") or "", where)
        if m is None:
            raise InvalidRequest(
                f"{where}: a file part needs its content inline as a base64 data URL in "
                "file.file_data (the gateway serves no Files API)",
                param=f"{where}.file",
                code="unsupported_content",
            )
        return Document(m.group("type"), m.group("data"), file.get("filename"), cache, where)
    raise InvalidRequest(
        f"{where}: content parts of type '{kind}' are not supported by this backend",
        param=where,
        code="unsupported_content",
    )


def _content_blocks(content: Any, where: str) -> list[Text | Image | Document]:
    if content is None:
        return []
    if isinstance(content, str):
        return [Text(content)] if content else []
    return [_part(part, f"{where}.content[{i}]") for i, part in enumerate(content)]


def _system_blocks(content: Any, where: str) -> list[Text]:
    if content is None:
        return []
    if isinstance(content, str):
        return [Text(content)]
    return [
        Text(p.get("text", ""), _cache(p, f"{where}.content[{i}]"))
        for i, p in enumerate(content)
        if p.get("type") == "text"
    ]


def _thinking_blocks(message: dict, where: str) -> list[Block]:
    blocks: list[Block] = []
    for j, block in enumerate(message.get("thinking_blocks") or ()):
        at = f"{where}.thinking_blocks[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if (
            kind == "thinking"
            and isinstance(block.get("thinking"), str)
            and isinstance(block.get("signature", ""), str)
        ):
            blocks.append(Thinking(block["thinking"], block.get("signature", "")))
        elif kind == "redacted_thinking" and isinstance(block.get("data"), str):
            blocks.append(RedactedThinking(block["data"]))
        else:
            raise InvalidRequest(
                f"{at} must be {{'type': 'thinking', 'thinking', 'signature'}} or "
                "{'type': 'redacted_thinking', 'data'}, as the answer gave it",
                param=at,
                code="invalid_value",
            )
    return blocks


def to_turns(messages: list[dict]) -> tuple[list[Text], list[Turn]]:
    """Split OpenAI messages into system blocks and alternating turns (consecutive same-role turns merged)."""
    system: list[Text] = []
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
            system.extend(_system_blocks(message.get("content"), where))
        elif role == "user":
            add("user", _content_blocks(message.get("content"), where))
        elif role == "assistant":
            blocks = _thinking_blocks(message, where) + _content_blocks(message.get("content"), where)
            for j, call in enumerate(message.get("tool_calls") or ()):
                fn = call["function"]
                blocks.append(
                    ToolCall(
                        call["id"],
                        fn["name"],
                        parse_arguments(fn.get("arguments")),
                        _cache(call, f"{where}.tool_calls[{j}]"),
                    )
                )
            add("assistant", blocks)
        elif role in ("tool", "function"):
            call_id = message.get("tool_call_id") or message.get("name") or ""
            add(
                "user",
                [
                    ToolResult(
                        call_id,
                        _content_blocks(message.get("content"), where),
                        bool(message.get("is_error")),
                        _cache(message, where),
                    )
                ],
            )
    if turns and turns[0].role != "user":
        raise InvalidRequest(
            "the conversation must start with a user message for this backend",
            param="messages",
            code="invalid_conversation",
        )
    return system, turns


def has_tool_blocks(conversation: list[Turn]) -> bool:
    return any(isinstance(b, (ToolCall, ToolResult)) for t in conversation for b in t.blocks)


@dataclass
class ToolSpec:
    name: str
    description: str | None
    parameters: dict
    cache: dict | None = None
    strict: bool | None = None  # the tool's input must follow its schema exactly (function.strict)


def tool_specs(body: dict) -> list[ToolSpec]:
    return [
        ToolSpec(
            t["function"]["name"],
            t["function"].get("description"),
            t["function"].get("parameters") or {"type": "object", "properties": {}},
            _cache(t, f"tools[{i}]"),
            t["function"].get("strict"),
        )
        for i, t in enumerate(body.get("tools") or ())
    ]


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


# --- JSON answers through a forced tool ---------------------------------------------------------------


def json_schema(body: dict) -> dict | None:
    """response_format's json_schema object (name, schema, ...), when it asks for one."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") != "json_schema":
        return None
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise InvalidRequest(
            "'response_format.json_schema' must be an object with a 'name' and a 'schema'",
            param="response_format",
            code="invalid_value",
        )
    return spec


def output_tool(body: dict, backend: str, kind: str, native: bool = False) -> ToolSpec | None:
    """The tool a JSON answer is forced through (None for text answers, and json_schema when `native`)."""
    fmt = (body.get("response_format") or {}).get("type", "text")
    if fmt == "json_object":
        spec = ToolSpec(
            JSON_TOOL,
            "Give your answer as this tool's input: a JSON object.",
            {"type": "object", "additionalProperties": True},
        )
    elif fmt == "json_schema" and not native:
        schema = json_schema(body)
        spec = ToolSpec(
            schema.get("name") or JSON_TOOL,
            schema.get("description") or "Give your answer as this tool's input, in this JSON schema.",
            schema.get("schema") or {"type": "object"},
        )
    elif fmt in ("text", "json_schema"):
        return None
    else:
        raise refusal("response_format", backend, kind, f"response_format '{fmt}' is not one it knows")
    if any(s.name == spec.name for s in tool_specs(body)):
        raise refusal(
            "response_format",
            backend,
            kind,
            f"the answer's schema is named '{spec.name}' like one of the request's tools: rename the schema",
        )
    return spec


def choose_tool(body: dict, output: ToolSpec | None) -> tuple[str, str | None] | None:
    """tool_choice, with a JSON answer's tool: forced alone, or 'any' (it or a caller's tool) beside tools."""
    choice = tool_choice(body)
    if output is None:
        return choice
    if not body.get("tools") or (choice and choice[0] == "none"):
        return "tool", output.name
    if choice is None or choice[0] == "auto":
        return "any", None
    return choice


# --- reasoning --------------------------------------------------------------------------------------------


@dataclass
class Reasoning:
    thinking: dict | None = None  # Anthropic's thinking object, as sent
    effort: str | None = None  # the API's own effort level, as sent

    @property
    def on(self) -> bool:
        return self.thinking is not None and self.thinking.get("type") != "disabled"

    @property
    def budget(self) -> int | None:
        if self.thinking and self.thinking.get("type") == "enabled":
            budget = self.thinking.get("budget_tokens")
            return budget if isinstance(budget, int) else None
        return None


def reasoning(body: dict, backend: str, kind: str, effort_as: str = "budget_tokens") -> Reasoning:
    """What `reasoning_effort` and `thinking` ask of Claude (see the module docstring)."""
    effort, thinking = body.get("reasoning_effort"), body.get("thinking")
    if effort is not None and effort not in EFFORTS:
        raise InvalidRequest(
            f"'reasoning_effort' must be one of {', '.join(EFFORTS)}, got {effort!r}",
            param="reasoning_effort",
            code="invalid_value",
        )
    if thinking is not None and not (isinstance(thinking, dict) and isinstance(thinking.get("type"), str)):
        raise InvalidRequest(
            "'thinking' must be an object with a 'type' (enabled with budget_tokens, disabled, adaptive)",
            param="thinking",
            code="invalid_value",
        )
    out = Reasoning(thinking=thinking)
    if effort in (None, "none"):
        return out
    if thinking is not None or effort_as == "effort":
        out.effort = EFFORT_LEVELS[effort]
    else:
        out.thinking = {"type": "enabled", "budget_tokens": REASONING_BUDGETS[effort]}
    return out


def check_thinking(body: dict, r: Reasoning, backend: str, kind: str, output: ToolSpec | None) -> None:
    """Refuse, by name, what Claude does not take beside thinking."""
    if not r.on:
        return
    asked = "'thinking'" if body.get("thinking") is not None else "'reasoning_effort'"

    def refuse(name: str, why: str) -> InvalidRequest:
        return refusal(name, backend, kind, f"{why} while thinking is on ({asked})")

    temperature, top_p = body.get("temperature"), body.get("top_p")
    if temperature is not None and min(float(temperature), 1.0) != 1.0:
        raise refuse("temperature", "Claude takes no temperature but 1")
    if top_p is not None and top_p < 0.95:
        raise refuse("top_p", "Claude takes no top_p below 0.95")
    if body.get("top_k") is not None:
        raise refuse("top_k", "Claude takes no top_k")
    choice = tool_choice(body)
    if choice and choice[0] in ("any", "tool"):
        raise refuse("tool_choice", "Claude cannot be made to call a tool")
    if output is not None:
        raise refuse(
            "response_format",
            "a JSON answer is a forced tool call, which Claude refuses (a backend with "
            "`structured_output: native` takes json_schema)",
        )


def max_tokens(body: dict, default: int | None, r: Reasoning) -> int | None:
    """The caller's max_tokens (else `default`), raised above the thinking budget as Claude requires."""
    limit = max_tokens_of(body) or default
    budget = r.budget if r.on else None
    if budget and (limit is None or limit <= budget):
        limit = budget + (limit or ANSWER_TOKENS)
    return limit


# --- answers ----------------------------------------------------------------------------------------------

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
    "model_context_window_exceeded": "length",
}


def finish_reason(stop_reason: str | None, message: dict | None = None) -> str | None:
    """OpenAI's finish_reason; a tool-use stop that called only the JSON answer's tool is a plain stop."""
    if stop_reason is None:
        return None
    reason = FINISH_REASONS.get(stop_reason, "stop")
    if reason == "tool_calls" and message is not None and not message.get("tool_calls"):
        return "stop"
    return reason


def thinking_dicts(blocks: list[Block]) -> list[dict]:
    return [
        {"type": "thinking", "thinking": b.thinking, "signature": b.signature}
        if isinstance(b, Thinking)
        else {"type": "redacted_thinking", "data": b.data}
        for b in blocks
        if isinstance(b, (Thinking, RedactedThinking))
    ]


def message_from_blocks(blocks: list[Block], output: str | None = None) -> dict:
    """An OpenAI assistant message from the answer's thinking, text and tool-use blocks; a call of the
    JSON answer's tool `output` is the message's content."""
    text = "".join(b.text for b in blocks if isinstance(b, Text))
    answers = [b for b in blocks if isinstance(b, ToolCall) and b.name == output]
    if answers:
        text = json.dumps(answers[0].input, ensure_ascii=False)
    calls = [
        {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": _json(b.input)}}
        for b in blocks
        if isinstance(b, ToolCall) and b.name != output
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    if thinking := thinking_dicts(blocks):
        message["reasoning_content"] = "\n\n".join(b.thinking for b in blocks if isinstance(b, Thinking) and b.thinking)
        message["thinking_blocks"] = thinking
    return message


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class ChunkBuilder:
    """Turns content-block stream events into OpenAI chat.completion.chunk dicts.

    Thinking text streams as `reasoning_content`; when a thinking block stops, its whole block (with the
    signature, which only ends it) goes in `thinking_blocks`. The JSON answer's tool (`output`) streams as
    content. Methods return None when an event has nothing to send yet.
    """

    def __init__(self, id: str, model: str, output: str | None = None):
        self.id, self.model, self.output = id, model, output
        self._tool_index: dict[int, int] = {}  # content-block index -> tool_calls index
        self._answer_blocks: set[int] = set()  # blocks that are the JSON answer's tool
        self._thinking: dict[int, dict] = {}  # open thinking blocks: index -> the block so far
        self._thought = False  # a thinking block has had text (the next one starts a paragraph)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.cache_write_tokens = 0

    def _chunk(self, delta: dict | None = None, finish: str | None = None, usage_: dict | None = None) -> dict:
        return chunk(self.id, self.model, delta, finish, usage_)

    def start(self) -> dict:
        return self._chunk({"role": "assistant", "content": ""})

    def text(self, text: str) -> dict:
        return self._chunk({"content": text})

    def thinking_start(self, block: int, text: str = "", signature: str = "") -> dict | None:
        self._thinking[block] = {"type": "thinking", "thinking": "", "signature": signature or "", "pieces": 0}
        return self.thinking_text(block, text) if text else None

    def thinking_text(self, block: int, text: str) -> dict | None:
        entry = self._thinking.get(block)
        if entry is None:
            self.thinking_start(block)
            entry = self._thinking[block]
        if not text:
            return None
        piece = text
        if entry["pieces"] == 0 and self._thought:
            piece = "\n\n" + text
        entry["pieces"] += 1
        entry["thinking"] += text
        self._thought = True
        return self._chunk({"reasoning_content": piece})

    def thinking_signature(self, block: int, signature: str) -> None:
        if block not in self._thinking:
            self.thinking_start(block)
        self._thinking[block]["signature"] += signature or ""

    def redacted_thinking(self, block: int, data: str) -> None:
        entry = self._thinking.setdefault(block, {"type": "redacted_thinking", "data": ""})
        entry["data"] = entry.get("data", "") + (data or "")

    def block_stop(self, block: int) -> dict | None:
        entry = self._thinking.pop(block, None)
        if entry is None:
            return None
        if entry["type"] == "thinking":
            whole = {"type": "thinking", "thinking": entry["thinking"], "signature": entry["signature"]}
        else:
            whole = {"type": "redacted_thinking", "data": entry["data"]}
        return self._chunk({"thinking_blocks": [whole]})

    def tool_start(self, block: int, id: str, name: str) -> dict | None:
        if self.output is not None and name == self.output:
            self._answer_blocks.add(block)
            return None
        index = self._tool_index.setdefault(block, len(self._tool_index))
        return self._chunk(
            {
                "tool_calls": [
                    {"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}
                ]
            }
        )

    def tool_arguments(self, block: int, partial_json: str) -> dict | None:
        if block in self._answer_blocks:
            return self.text(partial_json) if partial_json else None
        index = self._tool_index.setdefault(block, len(self._tool_index))
        return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": partial_json}}]})

    def finish(self, stop_reason: str | None) -> dict:
        called = {"tool_calls": True} if self._tool_index else {}
        return self._chunk({}, finish_reason(stop_reason, called))

    def usage(self) -> dict:
        return self._chunk(
            usage_=usage(
                self.prompt_tokens,
                self.completion_tokens,
                self.cached_tokens or None,
                cache_write=self.cache_write_tokens or None,
            )
        )
