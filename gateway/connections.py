"""The daemon's sockets under limits: a slow client's headers or body, a client that stopped reading its
answer, an idle keep-alive, and too many connections (in all or from one address) cannot hold the
process's descriptors.

aiohttp reads a request lazily and times only idle keep-alives, so each connection's handler here notes
when its request head began and the bytes it received; one sweep a tick closes those past their limits.
Past the connection cap a connection may only ask a health probe, and past the probes' headroom it is
closed as it is accepted, so the process never reaches its descriptor limit (where every client,
probes included, would be refused)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import resource
from collections import Counter
from typing import Any, Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from .config import ServerSettings

log = logging.getLogger("llmgate.connections")
PROBES = frozenset({"/healthz", "/readyz"})
LINGER_BYTES = 64 * 1024  # a refused body larger is not read to its end
RESERVED_DESCRIPTORS = 64  # the process's own: listening sockets, log, state store, traffic log
EVICT_AFTER = 1.0  # seconds a connection waiting for a request must have waited to make room for a new one


def descriptor_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_cap(settings: ServerSettings, limit: int) -> int:
    """The cap `max_connections` means under a descriptor limit of `limit`; one past what the limit holds is
    lowered (with a warning), since at the limit every new client would be refused."""
    fits = max(1, limit - RESERVED_DESCRIPTORS - settings.probe_connections)
    if settings.max_connections == "auto":
        return max(1, limit // 2 - settings.probe_connections)
    if settings.max_connections > fits:
        log.warning(
            "server.max_connections %d does not fit the descriptor limit %d (ulimit -n): serving at most %d",
            settings.max_connections,
            limit,
            fits,
        )
        return fits
    return settings.max_connections


def refusal(status: int, message: str, code: str, retry_after: int = 1) -> web.Response:
    """An answer in OpenAI's error shape that ends its connection."""
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    response = web.Response(
        body=json.dumps(body).encode(),
        status=status,
        content_type="application/json",
        headers={"Retry-After": str(retry_after)},
    )
    response.force_close()
    return response


def raw_answer(status: int, reason: str, message: str, code: str) -> bytes:
    """The same answer as bytes, for a connection that never got as far as a request."""
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}})
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "Connection: close\r\n\r\n" + body).encode()


class Guard:
    """The limits and the live connections one serving process shares."""

    def __init__(
        self,
        settings: ServerSettings,
        limit: int | None = None,
        may_send_body: Callable[[web.BaseRequest], Awaitable[bool]] | None = None,
    ):
        self.limit = descriptor_limit() if limit is None else limit
        self.may_send_body = may_send_body  # whether a request's headers authenticate it (Expect: 100-continue)
        self.configure(settings)
        self.handlers: set[GuardedHandler] = set()
        self.serving = 0  # admitted connections that are not probes-only
        self.probing = 0
        self.by_address: Counter[str] = Counter()
        self.waiting: dict[GuardedHandler, float] = {}  # serving connections between requests, oldest first
        self.closed: Counter[str] = Counter()  # why connections were closed or refused, since the start
        self._logged: Counter[str] = Counter()  # what the sweep's log line has said of them

    def configure(self, settings: ServerSettings) -> None:
        """Take a (reloaded) config's limits; connections already open keep their counts."""
        self.settings = settings
        self.cap = connection_cap(settings, self.limit)
        self.trusted = [ipaddress.ip_network(net, strict=False) for net in settings.trusted_proxies]
        self.tick = min(1.0, settings.header_timeout / 4)

    def is_trusted(self, address: str | None) -> bool:
        if address is None or not self.trusted:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        ip = getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:10.0.0.1 on a dual-stack socket is 10.0.0.1
        return any(ip in net for net in self.trusted)

    def client_address(self, peer: str | None, forwarded: list[str]) -> str | None:
        """The client behind a trusted proxy: the nearest X-Forwarded-For hop that is not a trusted proxy."""
        hops = [hop.strip() for header in forwarded for hop in header.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self.is_trusted(hop):
                return hop
        return hops[0] if hops else peer

    def admit(self, handler: GuardedHandler) -> str:
        """'serve', 'probes' (past the cap: health probes only), or why it is refused."""
        per_client = self.settings.max_connections_per_client
        address = handler.address
        if per_client is not None and address is not None and not self.is_trusted(address):
            if self.by_address[address] >= per_client:
                return "per_client"
        if self.serving >= self.cap:
            self._evict(handler._loop.time())
        if self.serving < self.cap:
            self.serving += 1
            kind = "serve"
        elif self.probing < self.settings.probe_connections:
            self.probing += 1
            kind = "probes"
        else:
            return "cap"
        if per_client is not None and address is not None and not self.is_trusted(address):
            self.by_address[address] += 1
            handler.holds = address
        self.handlers.add(handler)
        return kind

    def _evict(self, now: float) -> None:
        """Make room by closing the connection that has waited longest for a request (a slow-loris's, or an
        idle keep-alive), if it has waited EVICT_AFTER: at the cap, a new client is served, not a stalled one."""
        oldest = next(iter(self.waiting), None)
        if oldest is not None and now - self.waiting[oldest] >= EVICT_AFTER:
            self.closed["evicted"] += 1
            self.release(oldest)
            oldest.force_close()

    def release(self, handler: GuardedHandler) -> None:
        if handler not in self.handlers:
            return
        self.handlers.discard(handler)
        self.waiting.pop(handler, None)
        if handler.probes_only:
            self.probing -= 1
        else:
            self.serving -= 1
        if handler.holds is not None:
            self._release_address(handler.holds)

    def _release_address(self, address: str) -> None:
        self.by_address[address] -= 1
        if self.by_address[address] <= 0:
            del self.by_address[address]

    async def held_by_client(self, request: web.BaseRequest, handle) -> web.StreamResponse:
        """A proxied request, counted against the client X-Forwarded-For names for as long as it is served."""
        client = self.client_address(request.remote, request.headers.getall("X-Forwarded-For", []))
        if client is None:
            return await handle(request)
        if self.by_address[client] >= self.settings.max_connections_per_client:
            self.closed["per_client"] += 1
            return refusal(429, "too many connections from your address: retry once one ends", "too_many_connections")
        self.by_address[client] += 1
        try:
            return await handle(request)
        finally:
            self._release_address(client)

    def sweep(self, now: float) -> None:
        for handler in list(self.handlers):
            why = handler.overdue(now)
            if why is not None:
                self.closed[why] += 1
                handler.time_out(why)
        fresh = self.closed - self._logged
        if fresh:
            log.warning(
                "closed or refused connections: %s",
                ", ".join(f"{n} {REASONS[why]}" for why, n in sorted(fresh.items())),
            )
            self._logged = self.closed.copy()

    def figures(self) -> list[tuple[str, str, dict, float]]:
        """The connections as metric figures (name, help, labels, value): open ones by kind, the cap, and
        those closed or refused since the start by reason, so a slow-loris wave shows on a dashboard."""
        found = [
            ("llmgate_connections_open", "Client connections open now.", {"kind": "serve"}, self.serving),
            ("llmgate_connections_open", "Client connections open now.", {"kind": "probes"}, self.probing),
            ("llmgate_connections_limit", "Connections served at most at once (server.max_connections).", {}, self.cap),
        ]
        for why in REASONS:
            found.append(
                (
                    "llmgate_connections_closed_total",
                    "Client connections the gateway closed or refused, by reason.",
                    {"reason": why},
                    self.closed[why],
                )
            )
        return found

    async def run(self) -> None:
        """Sweep every tick until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick)
            self.sweep(loop.time())


REASONS = {
    "head": "whose request headers were not complete in time (server.header_timeout)",
    "body": "whose request body came slower than server.body_min_rate",
    "write": "that took none of their answer for server.write_timeout",
    "cap": "past the connection cap and the probes' headroom (server.max_connections, probe_connections)",
    "per_client": "past one address's cap (server.max_connections_per_client)",
    "evicted": "waiting longest for a request, to make room at the cap (server.max_connections)",
}


class GuardedHandler(RequestHandler):
    """aiohttp's connection handler, noting what the sweep needs and closing a refused body's connection."""

    __slots__ = (
        "guard",
        "address",
        "holds",
        "probes_only",
        "admitted",
        "head_since",
        "received",
        "body_clock",
        "write_clock",
    )

    def __init__(self, manager: Server, *, guard: Guard, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self.guard = guard
        self.address: str | None = None
        self.holds: str | None = None  # the address this connection counts against
        self.probes_only = False
        self.admitted = False
        self.head_since: float | None = None
        self.received = 0
        self.body_clock: tuple[float, int] | None = None
        self.write_clock: tuple[float, int] | None = None  # (since, bytes sent) while the client takes none

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.address = peer[0] if isinstance(peer, tuple) else None
        kind = self.guard.admit(self)
        if kind not in ("serve", "probes"):
            self.guard.closed[kind] += 1
            if kind == "per_client":
                message = "too many connections from your address"
                transport.write(raw_answer(429, "Too Many Requests", message, "too_many_connections"))
            transport.close()  # "cap": nothing written, the descriptor back at once
            return
        self.admitted = True
        self.probes_only = kind == "probes"
        app_handle = self._request_handler
        if self.probes_only:
            self._request_handler = self._probe
        elif self.guard.settings.max_connections_per_client is not None and self.guard.is_trusted(self.address):
            self._request_handler = lambda request: self.guard.held_by_client(request, app_handle)
        self.head_since = self._loop.time()
        if not self.probes_only:
            self.guard.waiting[self] = self.head_since
        super().connection_made(transport)

    async def _probe(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "GET" and request.path in PROBES:
            response = await self._manager.request_handler(request)
            response.force_close()  # a probe's connection does not keep the headroom
            return response
        self.guard.closed["cap"] += 1
        return refusal(503, "the gateway is at its connection limit: retry shortly", "too_many_connections")

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.admitted:
            return
        self.guard.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        if self.head_since is None and not self._request_in_progress:
            self.head_since = self._loop.time()
        self.received += len(data)
        super().data_received(data)
        if self._messages:
            self.head_since = None
            self.guard.waiting.pop(self, None)

    def overdue(self, now: float) -> str | None:
        """'head', 'body' or 'write' when this connection is past a limit, else None."""
        settings = self.guard.settings
        if self._write_stalled(now, settings.write_timeout):
            return "write"
        if not self._request_in_progress:
            self.body_clock = None
            if self.head_since is not None and now - self.head_since > settings.header_timeout:
                return "head"
            return None
        request = self._current_request
        if request is None or settings.body_min_rate == 0 or request.content.is_eof() or self._reading_paused:
            self.body_clock = None  # no body on its way, or the gateway (not the client) is the one waiting
            return None
        if self.body_clock is None:
            self.body_clock = (now, self.received)
            return None
        since, received = self.body_clock
        elapsed = now - since
        if elapsed > settings.body_grace and self.received - received < settings.body_min_rate * elapsed:
            return "body"
        return None

    def _write_stalled(self, now: float, timeout: float) -> bool:
        """Whether no byte of the answer has reached the kernel for `timeout` seconds while some wait to.
        Sampled once a sweep as the bytes written less those unsent (aiohttp's writer counts the first): a
        stream refills its buffer as the client reads, so the unsent bytes alone do not show progress."""
        unsent = self.transport.get_write_buffer_size() if self.transport is not None and timeout else 0
        if not unsent:
            self.write_clock = None
            return False
        writer = getattr(self._current_request, "_payload_writer", None)
        sent = getattr(writer, "output_size", 0) - unsent  # once the handler is done: only the unsent fall
        if self.write_clock is None or sent > self.write_clock[1]:
            self.write_clock = (now, sent)
            return False
        return now - self.write_clock[0] > timeout

    def time_out(self, why: str) -> None:
        """Answer 408 and close: the client learns why, the descriptor is free at once. A client that stopped
        reading gets nothing more: the unsent answer is dropped with the connection."""
        if why == "write":
            if self.transport is not None:
                self.transport.abort()
            return
        if self.transport is not None:
            if why == "head":
                message = f"the request headers did not arrive within {self.guard.settings.header_timeout:g} s"
            else:
                message = f"the request body arrived slower than {self.guard.settings.body_min_rate} bytes a second"
            self.transport.write(raw_answer(408, "Request Timeout", message, "request_timeout"))
        self.force_close()

    async def _handle_request(self, request: web.BaseRequest, start_time: float | None, request_handler):
        # aiohttp answers "100 Continue" before any handler runs, which asks for the body; withheld from a
        # request its headers do not authenticate, its client sends no body before the 401.
        if request.headers.get("Expect", "").lower() == "100-continue" and self.guard.may_send_body is not None:
            if not await self.guard.may_send_body(request):
                headers = request.headers.copy()
                del headers["Expect"]
                request = request.clone(headers=headers)
        return await super()._handle_request(request, start_time, request_handler)

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None):
        # A refusal (401, 413, ...) of a body not read: close rather than read the rest to throw it away (up
        # to LINGER_BYTES aiohttp still reads it, so that a client that reads no answer before it has sent
        # its whole body, as urllib, still gets its 401).
        if getattr(resp, "status", 0) >= 400 and not request.content.is_eof():
            resp.force_close()
            if request.content_length is None or request.content_length > LINGER_BYTES:
                self._lingering_time = 0.0
        answered = await super().finish_response(request, resp, start_time)
        kept = answered[0].keep_alive and not (self._close or self._force_close or self._messages)
        if kept and not self.probes_only and self in self.guard.handlers:
            self.guard.waiting.pop(self, None)
            self.guard.waiting[self] = self._loop.time()  # waiting again, the newest
        return answered


class GuardedServer(Server):
    """aiohttp's Server, making GuardedHandlers."""

    def __init__(self, server: Server, guard: Guard):
        super().__init__(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
        self.guard = guard

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, loop=self._loop, guard=self.guard, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server is guarded."""

    def __init__(self, app: web.Application, guard: Guard, **kwargs: Any):
        super().__init__(app, keepalive_timeout=guard.settings.keepalive_timeout, **kwargs)
        self.guard = guard

    async def _make_server(self) -> Server:
        return GuardedServer(await super()._make_server(), self.guard)
