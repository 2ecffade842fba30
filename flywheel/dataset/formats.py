"""Fine-tuning file formats: turning a conversation into a provider's record, and checking records.

A conversation here is `{"system": str | None, "messages": [{"role": "user" | "assistant",
"content": str}, ...]}`, text only. Two formats, each checked against its provider's documented
rules (the limits are fields, so a newer model's can be passed in):

- `openai`: OpenAI chat fine-tuning, one `{"messages": [...]}` per line (a system message first
  when there is one). Every example needs an assistant message; only known keys and roles; a
  training file needs at least 10 examples; an example must fit the model's training context
  (65,536 tokens for gpt-4o-mini and gpt-4.1; 16,385 for gpt-3.5-turbo).
- `bedrock`: Amazon Bedrock's conversation format for Anthropic Claude (3 Haiku) fine-tuning,
  `{"system": "...", "messages": [...]}`: `system` optional, at least two messages, user first,
  assistant last, the two alternating, no other keys. A training file holds 32 to 10,000
  records, a validation file 32 to 1,000; a record's input and output together at most 32,000
  tokens, and Bedrock counts a record's characters against 6 per token.

Tokens are estimated from characters (no tokenizer is shipped for either provider's models):
`chars_per_token` 4 for OpenAI (its rule of thumb), 6 for Bedrock (its own quota rule).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

SPLITS = ("train", "validation", "test")


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
        }


def _characters(record: dict[str, Any]) -> int:
    total = len(record.get("system") or "") if isinstance(record.get("system"), str) else 0
    for message in record.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        total += len(content) if isinstance(content, str) else len(json.dumps(content or ""))
    return total


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


_OPENAI_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_OPENAI_MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call"}
_OPENAI_RECORD_KEYS = {"messages", "tools", "functions", "parallel_tool_calls"}


class OpenAIChat(ChatFormat):
    def __init__(self, max_tokens_per_record: int = 65_536):
        super().__init__("openai", max_tokens_per_record, chars_per_token=4, min_records={"train": 10}, max_records={})

    def convert(self, conversation: dict[str, Any]) -> dict[str, Any]:
        system = [{"role": "system", "content": conversation["system"]}] if conversation.get("system") else []
        return {"messages": system + [{"role": m["role"], "content": m["content"]} for m in conversation["messages"]]}

    def shape_problems(self, record: Any) -> list[str]:
        if not isinstance(record, dict):
            return [f"a record must be a JSON object, got {type(record).__name__}"]
        problems = [f"unknown key '{key}'" for key in record if key not in _OPENAI_RECORD_KEYS]
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            return problems + ["'messages' must be a non-empty list"]
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
        if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
            problems.append("no assistant message to learn from")
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
        messages = record.get("messages")
        if not isinstance(messages, list) or len(messages) < 2:
            return problems + ["'messages' must be a list of at least two messages"]
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(message, dict):
                problems.append(f"{where} must be an object")
                continue
            problems += [
                f"{where}: unknown key '{key}' (only 'role' and 'content')"
                for key in message
                if key not in ("role", "content")
            ]
            expected = "user" if i % 2 == 0 else "assistant"
            if message.get("role") != expected:
                problems.append(
                    f"{where}: role must be '{expected}' (user first, then alternating), got {message.get('role')!r}"
                )
            if not _is_text(message.get("content")):
                problems.append(f"{where}: 'content' must be non-empty text")
        if isinstance(messages[-1], dict) and messages[-1].get("role") != "assistant":
            problems.append("the last message must be the assistant's")
        return problems


def make_format(name: str, max_tokens_per_record: int | None = None) -> ChatFormat:
    """The format called `name` (openai, bedrock), with a model's own token limit when given."""
    kinds = {"openai": OpenAIChat, "bedrock": BedrockConversation}
    if name not in kinds:
        raise ValueError(f"unknown format '{name}' (known: {', '.join(kinds)})")
    return kinds[name]() if max_tokens_per_record is None else kinds[name](max_tokens_per_record)


FORMAT_NAMES = ("openai", "bedrock")


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
