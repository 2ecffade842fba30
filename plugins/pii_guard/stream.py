"""Redacting a streamed answer: a value split across chunks is still found, and never sent.

Each text field of a choice (content, reasoning, each tool call's arguments) keeps the text it has
not sent yet. A chunk adds to it; what lies more than `holdback` characters before its end is sent,
redacted, unless a value found in the whole pending text straddles that point (the cut then moves to
the value's start). A value no longer than `holdback` can therefore never be half sent. What is left
goes out, redacted, with the choice's finish_reason, when another field of the choice starts (so the
dialects' encoders see the fields in their order), or at the stream's end.
"""

from __future__ import annotations

from typing import Callable

from gateway.text.pii import find, redact

Spans = list[tuple[int, int, str]]
# A field of a choice: ("content",), ("reasoning_content",) or ("tool", index).
Field = tuple


class StreamRedactor:
    """The pending text of every field of a stream, and what was found in it."""

    def __init__(self, kinds: frozenset[str], holdback: int, found: Callable[[Spans], None]):
        self.kinds = kinds
        self.holdback = holdback
        self.found = found  # told of every value before any of it is sent (counts it, or refuses)
        self.pending: dict[tuple[int, Field], str] = {}

    def chunk(self, chunk: dict) -> dict:
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            delta = choice.get("delta")
            if delta is None:
                delta = choice["delta"] = {}
            fed = self._fed_fields(delta)
            done = choice.get("finish_reason") is not None
            out: dict[Field, str] = {}
            for key in [k for k in self.pending if k[0] == index and k[1] not in fed and (done or fed)]:
                out[key[1]] = self._release(key)  # another field began, or the choice ended
            for field, text in fed.items():
                out[field] = self._feed((index, field), text, final=done)
            _write(delta, out)
        return chunk

    def finish(self) -> dict | None:
        if not self.pending:
            return None
        by_choice: dict[int, dict[Field, str]] = {}
        for key in list(self.pending):
            by_choice.setdefault(key[0], {})[key[1]] = self._release(key)
        choices = []
        for index, out in sorted(by_choice.items()):
            delta: dict = {}
            _write(delta, out)
            if delta:
                choices.append({"index": index, "delta": delta, "finish_reason": None})
        return {"object": "chat.completion.chunk", "choices": choices} if choices else None

    def _fed_fields(self, delta: dict) -> dict[Field, str]:
        fed: dict[Field, str] = {}
        for name in ("reasoning_content", "content"):
            if isinstance(delta.get(name), str) and delta[name]:
                fed[(name,)] = delta[name]
        for call in delta.get("tool_calls") or ():
            arguments = (call.get("function") or {}).get("arguments")
            if isinstance(arguments, str) and arguments:
                fed[("tool", call.get("index", 0))] = arguments
        return fed

    def _feed(self, key: tuple[int, Field], text: str, final: bool) -> str:
        buffer = self.pending.pop(key, "") + text
        spans = find(buffer, self.kinds)
        cut = len(buffer) if final else len(buffer) - self.holdback
        for start, end, _ in spans:
            if start < cut < end:
                cut = start
        if cut <= 0:
            self.pending[key] = buffer
            return ""
        sent = [span for span in spans if span[1] <= cut]
        if sent:
            self.found(sent)
        if cut < len(buffer):
            self.pending[key] = buffer[cut:]
        return redact(buffer[:cut], sent)

    def _release(self, key: tuple[int, Field]) -> str:
        return self._feed(key, self.pending.pop(key), final=True)


def _write(delta: dict, out: dict[Field, str]) -> None:
    """Put each field's text to send into the chunk's delta (a field with nothing to send is left out)."""
    calls = {call.get("index", 0): call for call in delta.get("tool_calls") or ()}
    for field, text in out.items():
        if field[0] == "tool":
            call = calls.setdefault(field[1], {"index": field[1]})
            function = call.setdefault("function", {})
            if text:
                function["arguments"] = text
            else:
                function.pop("arguments", None)
        elif text:
            delta[field[0]] = text
        else:
            delta.pop(field[0], None)
    if calls:
        kept = [call for _, call in sorted(calls.items()) if _carries(call)]
        if kept:
            delta["tool_calls"] = kept
        else:
            delta.pop("tool_calls", None)


def _carries(call: dict) -> bool:
    """Whether a tool call delta still says something (its id, its name, or arguments)."""
    function = call.get("function") or {}
    return bool(call.get("id") or function.get("name") or function.get("arguments"))
