"""Answer filters: rewriting an answer on its way to the caller, whole or chunk by chunk.

A plugin's `answer_filter(ctx)` hook returns one (`gateway.hookspecs`); the request path applies
them in plugin order to a whole chat.completion, or to each chat.completion.chunk of a stream and
then to what they held back at its end. They are synchronous: they run on every chunk of every
stream, so they must be cheap (no I/O).
"""

from __future__ import annotations

from typing import Protocol

from .errors import GatewayError


class AnswerFilter(Protocol):
    def completion(self, answer: dict) -> dict:
        """A whole answer (a chat.completion), rewritten."""

    def chunk(self, chunk: dict) -> dict:
        """One chunk of a stream, rewritten; text may be held back for a later chunk."""

    def finish(self) -> dict | None:
        """A last chunk with what was held back, or None; the stream ends after it."""


class AnswerRefused(GatewayError):
    """A filter ended an answer on purpose: the backend did nothing wrong (its breaker is not told)."""

    status, type = 502, "answer_refused"
    retry = False


class Filters:
    """The filters of one request, applied in order."""

    __slots__ = ("filters",)

    def __init__(self, filters: list[AnswerFilter]):
        self.filters = filters

    def completion(self, answer: dict) -> dict:
        for f in self.filters:
            answer = f.completion(answer)
        return answer

    def chunk(self, chunk: dict) -> dict:
        for f in self.filters:
            chunk = f.chunk(chunk)
        return chunk

    def finish(self) -> list[dict]:
        """The chunks the filters held back, each passed through the filters after it."""
        out: list[dict] = []
        for i, f in enumerate(self.filters):
            last = f.finish()
            if last is not None:
                for later in self.filters[i + 1 :]:
                    last = later.chunk(last)
                out.append(last)
        return out
