"""What every inbound dialect provides to the one request path (gateway/proxy.py).

A dialect turns a caller's request into the gateway's chat form (the OpenAI chat-completions body
that plugins and backends read), and turns the gateway's answer, a `chat.completion` or a stream
of `chat.completion.chunk`s, back into what that caller's SDK parses, errors included. Everything
between (authentication, quotas, rollout, shadow, cache, the traffic log, judging, metrics,
tracing) runs once, on the chat form, whatever dialect came in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from aiohttp import web

from ..context import dumps_bytes
from ..errors import GatewayError

if TYPE_CHECKING:
    from ..context import RequestContext
    from ..gateway import Gateway


class StreamEncoder(ABC):
    """One streamed answer in a dialect's server-sent events: the bytes to write for each step."""

    def start(self) -> bytes:
        """What goes out before the first chunk (an opening event)."""
        return b""

    @abstractmethod
    def chunk(self, chunk: dict) -> bytes:
        """The events for one chat.completion.chunk (possibly none)."""

    @abstractmethod
    def finish(self, error: GatewayError | None) -> bytes:
        """The closing events: the end of the answer, or the error that broke the stream."""


class EventStream(StreamEncoder):
    """A dialect's stream translator (`start`, `feed`, `finish`, each a list of `(event, data)` pairs) as
    server-sent events (`event: <type>` and its JSON); `failed` gives a broken stream's closing events."""

    def __init__(self, translator: Any):
        self.translator = translator

    @staticmethod
    def _sse(events: list[tuple[str, dict]]) -> bytes:
        return b"".join(sse(dumps_bytes(data), event=kind) for kind, data in events)

    def start(self) -> bytes:
        return self._sse(self.translator.start())

    def chunk(self, chunk: dict) -> bytes:
        return self._sse(self.translator.feed(chunk))

    def finish(self, error: GatewayError | None) -> bytes:
        return self._sse(self.translator.finish() if error is None else self.failed(error))

    @abstractmethod
    def failed(self, error: GatewayError) -> list[tuple[str, dict]]:
        """The events that end a stream broken by `error`."""


class Endpoint(ABC):
    """One API callers speak: what the request path needs of any of them."""

    #: Recorded with each exchange (the traffic log's `annotations.dialect`), so datasets can pick a dialect.
    name: ClassVar[str]

    def route_of(self, body: dict) -> Any:
        """The route the caller names: the `model` parameter in every dialect so far."""
        return body.get("model")

    @abstractmethod
    def error_body(self, error: GatewayError) -> dict:
        """An error in this dialect's own shape (the status stays the error's)."""


class Dialect(Endpoint):
    """A conversational API: translated into the chat form, so that every plugin applies to it."""

    @abstractmethod
    async def to_chat(self, ctx: RequestContext, gateway: Gateway) -> tuple[dict, list[str]]:
        """(`ctx.body`, as the caller sent it, in the chat form; the parameters accepted but ignored).

        InvalidRequest names a bad parameter. The request path then checks the chat form as it
        checks any chat request."""

    @abstractmethod
    def answer(self, completion: dict, ctx: RequestContext) -> dict:
        """A whole answer in this dialect."""

    @abstractmethod
    def encoder(self, ctx: RequestContext) -> StreamEncoder:
        """A fresh encoder for one streamed answer."""

    async def answered(self, ctx: RequestContext, gateway: Gateway) -> None:
        """The answer (`ctx.response`) is complete and about to be finished: a dialect with server-side
        state stores it here, before the caller can send the turn that refers to it."""


DIALECT = web.RequestKey("dialect", Endpoint)  # the dialect of the endpoint a request came to (for its errors)


def sse(data: str | bytes, event: str | None = None) -> bytes:
    """One server-sent event (`data` as text, or as UTF-8 bytes)."""
    head = f"event: {event}\n".encode() if event else b""
    return b"%sdata: %s\n\n" % (head, data if type(data) is bytes else data.encode())
