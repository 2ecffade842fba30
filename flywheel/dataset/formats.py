"""Fine-tuning file formats: turning a conversation into a provider's record, and checking records.

A conversation here is `{"system": str | None, "tools": [OpenAI tool definitions] | None,
"messages": [...]}`: user and assistant turns with text `content`, an assistant turn may carry
`tool_calls` (OpenAI's shape) and a `tool` turn answers one by `tool_call_id`. Each format is
checked against its provider's documented rules (the limits are fields, so a newer model's can be
passed in); a format that cannot hold a conversation (tool use, several turns) says why with
Unfit, and the builder drops it for that reason.

- `openai`: OpenAI chat fine-tuning, `{"messages": [...], "tools"?: [...]}` per line (a system
  message first when there is one); tool-use examples keep the assistant's `tool_calls`, the
  `tool` answers and the `tools` offered. Every example needs an assistant message; only known
  keys and roles; a training file at least 10 examples; an example must fit the model's training
  context (65,536 tokens for gpt-4o-mini and gpt-4.1).
- `bedrock`: Claude 3 Haiku on Bedrock (the bedrock-2023-05-31 messages shape),
  `{"system"?: "...", "messages": [...]}`: at least two messages, user first, assistant last,
  alternating, text only, no other keys; 32 to 10,000 training and 32 to 1,000 validation records;
  at most 32,000 tokens a record, counted at 6 characters a token (Bedrock's quota rule).
- `nova`: Amazon Nova (Micro, Lite, Pro) on Bedrock, `{"schemaVersion": "bedrock-conversation-2024",
  "system"?: [{"text"}], "messages": [{"role", "content": [{"text"}]}]}`: user first, assistant
  last, alternating, several turns allowed; the reserved words User:, Bot:, Assistant:, System:,
  <image>, <video> and [EOS] nowhere in a prompt; tool use is not trained by Bedrock's Nova
  fine-tuning, so tool exchanges are left out; 8 to 20,000 training and at most 1,000 validation
  records, 32,000 tokens a record.
- `titan`, `llama`: Amazon Titan Text (G1 Express, Lite, Premier) and Meta Llama on Bedrock,
  `{"prompt": "...", "completion": "..."}`: one turn (the system prompt joins the prompt); input
  and output together at most 4,096 tokens at batch size 1, 6 characters a token; at most 10,000
  training and 1,000 validation records (the default quotas).

Tokens are estimated from characters (no tokenizer is shipped for these models).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

SPLITS = ("train", "validation", "test")


class Unfit(ValueError):
    """A conversation this format cannot hold: `reason` is the builder's drop reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass
class Report:
    """What validating one file found: its record count and every problem, `line N: ...` first."""

    records: int = 0
    problems: list[str] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class ChatFormat:
    name: str
    max_tokens_per_record: int
    chars_per_token: float
    min_records: dict[str, int]
    max_records: dict[str, int]
    supports_tools: bool = False  # tool-use examples (tool calls and their answers) can be trained
    multi_turn: bool = True

    def fit(self, conversation: dict[str, Any]) -> dict[str, Any]:
        """The record for `conversation`, or Unfit when the format cannot hold it."""
        if not self.supports_tools and _uses_tools(conversation):
            raise Unfit("tools_unsupported_by_format", f"{self.name} fine-tuning takes no tool-use examples")
        if not self.multi_turn and sum(m["role"] == "user" for m in conversation["messages"]) > 1:
            raise Unfit("multi_turn_unsupported_by_format", f"{self.name} records hold one prompt and its completion")
        return self.convert(conversation)

    def estimate_tokens(self, record: dict[str, Any]) -> int:
        return math.ceil(_characters(record) / self.chars_per_token)

    def convert(self, conversation: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def shape_problems(self, record: Any) -> list[str]:
        raise NotImplementedError

    def record_problems(self, record: Any) -> list[str]:
        """Everything wrong with one record, each a sentence; empty when the provider would accept it."""
        problems = self.shape_problems(record)
        if not problems:
            tokens = self.estimate_tokens(record)
            if tokens > self.max_tokens_per_record:
                problems.append(f"about {tokens} tokens, more than the {self.max_tokens_per_record} a record may hold")
        return problems

    def file_problems(self, records: int, split: str | None) -> list[str]:
        """Limits on a whole file of `split` (train, validation; test files are ours, not the provider's)."""
        problems = []
        if split in self.min_records and records < self.min_records[split]:
            problems.append(f"{records} records: a {self.name} {split} file needs at least {self.min_records[split]}")
        if split in self.max_records and records > self.max_records[split]:
            problems.append(f"{records} records: a {self.name} {split} file may hold at most {self.max_records[split]}")
        return problems

    def limits(self) -> dict[str, Any]:
        return {
            "max_tokens_per_record": self.max_tokens_per_record,
            "chars_per_token": self.chars_per_token,
            "min_records": self.min_records,
            "max_records": self.max_records,
            "supports_tools": self.supports_tools,
            "multi_turn": self.multi_turn,
        }


def _uses_tools(conversation: dict[str, Any]) -> bool:
    return bool(conversation.get("tools")) or any(
        m.get("tool_calls") or m["role"] == "tool" for m in conversation["messages"]
    )


_NOT_COUNTED = {"role", "type", "schemaVersion", "id", "tool_call_id"}


def _characters(record: Any) -> int:
    """The characters a provider counts: every string value but the record's structure (roles, ids)."""
    if isinstance(record, str):
        return len(record)
    if isinstance(record, dict):
        return sum(_characters(v) for k, v in record.items() if k not in _NOT_COUNTED)
    if isinstance(record, list):
        return sum(_characters(v) for v in record)
    return 0


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


_OPENAI_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_OPENAI_MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call"}
_OPENAI_RECORD_KEYS = {"messages", "tools", "functions", "parallel_tool_calls"}


class OpenAIChat(ChatFormat):
    def __init__(self, max_tokens_per_record: int = 65_536):
        super().__init__(
            "openai",
            max_tokens_per_record,
            chars_per_token=4,
            min_records={"train": 10},
            max_records={},
            supports_tools=True,
        )

    def convert(self, conversation: dict[str, Any]) -> dict[str, Any]:
        system = [{"role": "system", "content": conversation["system"]}] if conversation.get("system") else []
        messages = []
        for m in conversation["messages"]:
            message = {"role": m["role"]}
            if m.get("content") or not m.get("tool_calls"):
                message["content"] = m.get("content")
            for key in ("tool_calls", "tool_call_id"):
                if m.get(key):
                    message[key] = m[key]
            messages.append(message)
        record: dict[str, Any] = {"messages": system + messages}
        if conversation.get("tools"):
            record["tools"] = conversation["tools"]
        return record

    def shape_problems(self, record: Any) -> list[str]:
        if not isinstance(record, dict):
            return [f"a record must be a JSON object, got {type(record).__name__}"]
        problems = [f"unknown key '{key}'" for key in record if key not in _OPENAI_RECORD_KEYS]
        offered, problems = _openai_tools(record.get("tools"), problems)
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            return problems + ["'messages' must be a non-empty list"]
        called: set[str] = set()
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(message, dict):
                problems.append(f"{where} must be an object")
                continue
            problems += [f"{where}: unknown key '{key}'" for key in message if key not in _OPENAI_MESSAGE_KEYS]
            role = message.get("role")
            if role not in _OPENAI_ROLES:
                problems.append(f"{where}: unknown role {role!r}")
            content = message.get("content")
            if not (
                _is_text(content)
                or (role == "assistant" and (message.get("tool_calls") or message.get("function_call")))
            ):
                problems.append(f"{where}: 'content' must be non-empty text")
            if "weight" in message and (role != "assistant" or message["weight"] not in (0, 1)):
                problems.append(f"{where}: 'weight' is allowed on assistant messages only, as 0 or 1")
            if message.get("tool_calls") is not None:
                problems += _tool_call_problems(where, message, offered, called)
            if role == "tool" and message.get("tool_call_id") not in called:
                problems.append(f"{where}: a tool message must answer an earlier tool call by its 'tool_call_id'")
        if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
            problems.append("no assistant message to learn from")
        return problems


def _openai_tools(tools: Any, problems: list[str]) -> tuple[set[str] | None, list[str]]:
    """The function names a record offers (None: no `tools` key), with the problems of the list."""
    if tools is None:
        return None, problems
    if not isinstance(tools, list):
        return set(), problems + ["'tools' must be a list"]
    names = set()
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            problems.append(f"tools[{i}]: must be {{'type': 'function', 'function': {{...}}}}")
        elif not _is_text(function.get("name")):
            problems.append(f"tools[{i}]: the function needs a 'name'")
        else:
            names.add(function["name"])
    return names, problems


def _tool_call_problems(where: str, message: dict, offered: set[str] | None, called: set[str]) -> list[str]:
    calls = message["tool_calls"]
    if message.get("role") != "assistant" or not isinstance(calls, list) or not calls:
        return [f"{where}: 'tool_calls' must be a non-empty list on an assistant message"]
    problems = []
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or not _is_text(call.get("id")) or not isinstance(function, dict):
            problems.append(f"{at}: needs an 'id' and a 'function'")
            continue
        called.add(call["id"])
        if offered is not None and function.get("name") not in offered:
            problems.append(f"{at}: calls {function.get('name')!r}, which 'tools' does not offer")
        try:
            json.loads(function.get("arguments"))
        except (TypeError, ValueError):
            problems.append(f"{at}: 'arguments' must be a JSON text")
    return problems


class BedrockConversation(ChatFormat):
    def __init__(self, max_tokens_per_record: int = 32_000):
        super().__init__(
            "bedrock",
            max_tokens_per_record,
            chars_per_token=6,
            min_records={"train": 32, "validation": 32},
            max_records={"train": 10_000, "validation": 1_000},
        )

    def convert(self, conversation: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = {}
        if conversation.get("system"):
            record["system"] = conversation["system"]
        record["messages"] = [{"role": m["role"], "content": m["content"]} for m in conversation["messages"]]
        return record

    def shape_problems(self, record: Any) -> list[str]:
        if not isinstance(record, dict):
            return [f"a record must be a JSON object, got {type(record).__name__}"]
        problems = [
            f"unknown key '{key}' (only 'system' and 'messages')" for key in record if key not in ("system", "messages")
        ]
        if "system" in record and not isinstance(record["system"], str):
            problems.append("'system' must be text")
        return problems + _turn_problems(record.get("messages"), _claude_message)


def _claude_message(where: str, message: dict) -> list[str]:
    problems = [
        f"{where}: unknown key '{key}' (only 'role' and 'content')" for key in message if key not in ("role", "content")
    ]
    return problems + ([] if _is_text(message.get("content")) else [f"{where}: 'content' must be non-empty text"])


def _turn_problems(messages: Any, message_problems) -> list[str]:
    """The turns Bedrock's conversation records share: user first, assistant last, alternating."""
    if not isinstance(messages, list) or len(messages) < 2:
        return ["'messages' must be a list of at least two messages"]
    problems = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            problems.append(f"{where} must be an object")
            continue
        problems += _alternation(where, i, message) + message_problems(where, message)
    if isinstance(messages[-1], dict) and messages[-1].get("role") != "assistant":
        problems.append("the last message must be the assistant's")
    return problems


NOVA_SCHEMA = "bedrock-conversation-2024"
NOVA_RESERVED = ("User:", "Bot:", "Assistant:", "System:", "<image>", "<video>", "[EOS]")


class NovaConversation(ChatFormat):
    def __init__(self, max_tokens_per_record: int = 32_000):
        super().__init__(
            "nova",
            max_tokens_per_record,
            chars_per_token=6,
            min_records={"train": 8},
            max_records={"train": 20_000, "validation": 1_000},
        )

    def convert(self, conversation: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = {"schemaVersion": NOVA_SCHEMA}
        if conversation.get("system"):
            record["system"] = [{"text": conversation["system"]}]
        record["messages"] = [
            {"role": m["role"], "content": [{"text": m["content"]}]} for m in conversation["messages"]
        ]
        return record

    def shape_problems(self, record: Any) -> list[str]:
        if not isinstance(record, dict):
            return [f"a record must be a JSON object, got {type(record).__name__}"]
        problems = [
            f"unknown key '{key}' (only 'schemaVersion', 'system' and 'messages')"
            for key in record
            if key not in ("schemaVersion", "system", "messages")
        ]
        if not isinstance(record.get("schemaVersion"), str):
            problems.append(f"'schemaVersion' must be text ({NOVA_SCHEMA!r})")
        system = record.get("system", [])
        if not isinstance(system, list) or not all(isinstance(b, dict) and _is_text(b.get("text")) for b in system):
            problems.append("'system' must be a list of {'text': ...} blocks")
        else:
            problems += _reserved("system", " ".join(b["text"] for b in system))
        return problems + _turn_problems(record.get("messages"), _nova_message)


def _nova_message(where: str, message: dict) -> list[str]:
    content = message.get("content")
    if (
        not isinstance(content, list)
        or not content
        or not all(isinstance(b, dict) and set(b) == {"text"} and _is_text(b["text"]) for b in content)
    ):
        return [f"{where}: 'content' must be a non-empty list of {{'text': ...}} blocks"]
    return _reserved(where, " ".join(b["text"] for b in content)) if message.get("role") == "user" else []


def _reserved(where: str, text: str) -> list[str]:
    found = [word for word in NOVA_RESERVED if word in text]
    return [f"{where}: holds the reserved word{'s' if len(found) > 1 else ''} {', '.join(found)}"] if found else []


def _alternation(where: str, i: int, message: dict) -> list[str]:
    expected = "user" if i % 2 == 0 else "assistant"
    if message.get("role") != expected:
        return [f"{where}: role must be '{expected}' (user first, then alternating), got {message.get('role')!r}"]
    return []


class PromptCompletion(ChatFormat):
    """Titan Text and Llama on Bedrock: one prompt, one completion."""

    def __init__(self, name: str, max_tokens_per_record: int = 4_096):
        super().__init__(
            name,
            max_tokens_per_record,
            chars_per_token=6,
            min_records={},
            max_records={"train": 10_000, "validation": 1_000},
            multi_turn=False,
        )

    def convert(self, conversation: dict[str, Any]) -> dict[str, Any]:
        user, answer = conversation["messages"][-2:]
        prompt = "\n\n".join(t for t in (conversation.get("system"), user["content"]) if t)
        return {"prompt": prompt, "completion": answer["content"]}

    def shape_problems(self, record: Any) -> list[str]:
        if not isinstance(record, dict):
            return [f"a record must be a JSON object, got {type(record).__name__}"]
        problems = [
            f"unknown key '{key}' (only 'prompt' and 'completion')"
            for key in record
            if key not in ("prompt", "completion")
        ]
        return problems + [
            f"'{key}' must be non-empty text" for key in ("prompt", "completion") if not _is_text(record.get(key))
        ]


FORMATS = {
    "openai": OpenAIChat,
    "bedrock": BedrockConversation,
    "nova": NovaConversation,
    "titan": lambda *limit: PromptCompletion("titan", *limit),
    "llama": lambda *limit: PromptCompletion("llama", *limit),
}
FORMAT_NAMES = tuple(FORMATS)


def make_format(name: str, max_tokens_per_record: int | None = None) -> ChatFormat:
    """The format called `name` (openai, bedrock, nova, titan, llama), with a model's own token limit when given."""
    if name not in FORMATS:
        raise ValueError(f"unknown format '{name}' (known: {', '.join(FORMATS)})")
    return FORMATS[name]() if max_tokens_per_record is None else FORMATS[name](max_tokens_per_record)


def split_of(path: str | Path) -> str | None:
    """train / validation / test from a file's name (train.jsonl), else None (no count limits)."""
    stem = Path(path).name.split(".", 1)[0]
    return stem if stem in SPLITS else None


def validate_lines(lines: Iterable[str], fmt: ChatFormat, split: str | None = None) -> Report:
    """Check every line of a JSONL file; each bad line gets its own `line N: ...` problem."""
    report = Report()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            report.problems.append(f"line {number}: empty line")
            report.bad_lines.append(number)
            continue
        report.records += 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems = [f"not valid JSON ({exc.msg} at column {exc.colno})"]
        else:
            problems = fmt.record_problems(record)
        if problems:
            report.bad_lines.append(number)
            report.problems.append(f"line {number}: {'; '.join(problems)}")
    report.problems += [f"file: {p}" for p in fmt.file_problems(report.records, split)]
    return report


def validate_file(path: str | Path, fmt: ChatFormat, split: str | None = None) -> Report:
    with open(path, encoding="utf-8") as f:
        return validate_lines((line.rstrip("\n") for line in f), fmt, split)
