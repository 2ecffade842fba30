"""A minimal HTTP/1.1 client over asyncio protocols, for the load generator.

On a 2-core machine the generator shares the CPU with the system it measures: aiohttp's client
costs about 0.4 ms of CPU a request, which at 1,000 RPS is 40% of a core taken from the proxy.
This client does only what the generator needs (keep-alive POSTs; a body by Content-Length or
chunked transfer coding, handed over line by line for streams), at a fraction of that. Anything
it does not understand is a connection error, never a silent success.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit


class ConnectionFailed(Exception):
    """The connection broke, or the answer was not HTTP/1.1 as this client reads it."""


class _Exchange(asyncio.Protocol):
    """One keep-alive connection; one request at a time on it."""

    def __init__(self, pool: RawHttpPool):
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.on_line: Callable[[bytes], None] | None = None
        self.status = 0
        self.body = bytearray()
        self.head_done = False
        self.length: int | None = None  # Content-Length, or None for chunked
        self.chunk_left = -1  # bytes left of the current chunk (-1: a size line is next)
        self.line = bytearray()  # a stream's partial line
        self.closing = False
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionFailed(str(exc or "closed by the server")))

    def send(self, request: bytes, on_line: Callable[[bytes], None] | None) -> asyncio.Future:
        self.waiter = asyncio.get_running_loop().create_future()
        self.on_line, self.status, self.head_done = on_line, 0, False
        self.body.clear()
        self.length, self.chunk_left, self.closing = None, -1, False
        self.line.clear()
        self.transport.write(request)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            if not self.head_done and not self._head():
                return
            self._body()
        except (ValueError, IndexError) as exc:
            self._fail(f"unreadable answer: {exc}")

    def _head(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = bytes(self.buffer[:end]).split(b"\r\n")
        del self.buffer[: end + 4]
        self.status = int(lines[0].split(b" ", 2)[1])
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                self.length = int(value)
            elif name == b"transfer-encoding":
                chunked = value == b"chunked"
            elif name == b"connection":
                self.closing = value == b"close"
        if self.length is None and not chunked:
            raise ValueError("neither Content-Length nor chunked")
        self.head_done = True
        return True

    def _take(self, data: bytes) -> None:
        if self.on_line is None:
            self.body += data
            return
        self.line += data
        while (cut := self.line.find(b"\n")) >= 0:
            self.on_line(bytes(self.line[: cut + 1]))
            del self.line[: cut + 1]

    def _body(self) -> None:
        if self.length is not None:
            take = min(self.length, len(self.buffer))
            self._take(bytes(self.buffer[:take]))
            del self.buffer[:take]
            self.length -= take
            if self.length == 0:
                self._done()
            return
        while True:
            if self.chunk_left < 0:
                cut = self.buffer.find(b"\r\n")
                if cut < 0:
                    return
                size = int(bytes(self.buffer[:cut]).split(b";")[0], 16)
                del self.buffer[: cut + 2]
                if size == 0:
                    self.chunk_left = -2  # the trailer's empty line is next
                else:
                    self.chunk_left = size
            if self.chunk_left == -2:
                if len(self.buffer) < 2:
                    return
                del self.buffer[:2]
                self._done()
                return
            if len(self.buffer) < self.chunk_left + 2:
                if self.on_line is not None and len(self.buffer) > 0:  # hand a stream over as it comes
                    take = min(self.chunk_left, len(self.buffer))
                    self._take(bytes(self.buffer[:take]))
                    del self.buffer[:take]
                    self.chunk_left -= take
                return
            self._take(bytes(self.buffer[: self.chunk_left]))
            del self.buffer[: self.chunk_left + 2]
            self.chunk_left = -1

    def _done(self) -> None:
        if self.line and self.on_line is not None:
            self.on_line(bytes(self.line))
        waiter, self.waiter = self.waiter, None
        if self.closing or self.buffer:
            self.transport.close()
        else:
            self.pool.idle.append(self)
        if waiter is not None and not waiter.done():
            waiter.set_result((self.status, bytes(self.body)))

    def _fail(self, why: str) -> None:
        self.transport.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionFailed(why))


class RawHttpPool:
    """Keep-alive connections to one origin, opened as needed and never limited (open loop)."""

    def __init__(self, url: str, headers: dict[str, str]):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        fixed = {"Host": f"{self.host}:{self.port}", "Content-Type": "application/json", **headers}
        self.head = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode()
        self.idle: list[_Exchange] = []

    async def _connection(self) -> _Exchange:
        while self.idle:
            exchange = self.idle.pop()
            if not exchange.lost:
                return exchange
        loop = asyncio.get_running_loop()
        _, exchange = await loop.create_connection(lambda: _Exchange(self), self.host, self.port)
        return exchange

    async def post(self, body: bytes, on_line: Callable[[bytes], None] | None = None) -> tuple[int, bytes]:
        """(status, body) of a POST of `body`; a stream's body goes line by line to `on_line` instead."""
        exchange = await self._connection()
        request = b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
            self.path.encode(),
            self.head,
            len(body),
            body,
        )
        try:
            return await exchange.send(request, on_line)
        except BaseException:
            if exchange.transport is not None:
                exchange.transport.close()  # a cancelled or failed exchange leaves the connection unusable
            raise

    def close(self) -> None:
        for exchange in self.idle:
            exchange.transport.close()
        self.idle.clear()
