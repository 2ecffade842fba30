"""One request's life: what the caller sent, what the gateway decided, what came back.

Plugins read and annotate it; `record()` turns it into the traffic-log row every sink stores.
REQUEST_ID and REQUEST_CONTEXT are where the request handler leaves the request's id and its
context on the aiohttp request, for the access log and the server span: here, below both the
handler (proxy.py) and its readers (app.py, tracing.py), so that none imports another for them.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from .config import RouteSettings
    from .errors import GatewayError


def caller_key(request: web.Request) -> str | None:
    """The caller's API key: `Authorization: Bearer <key>` (the OpenAI SDKs) or `x-api-key` (the Anthropic SDK)."""
    value = request.headers.get("Authorization", "")
    if value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return request.headers.get("x-api-key", "").strip() or None


def stable_hash(*parts: str) -> str:
    """A hash that is the same in every process and on every replica (unlike Python's salted `hash`)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def sampled(rate: float, *key: str) -> bool:
    """Deterministic per key (salt it with the sampler's name), so every replica, a replay and a test agree
    on what a `rate` share samples."""
    return int(stable_hash(*key)[:8], 16) / 2**32 < rate


@dataclass
class Attempt:
    backend: str  # the chain's name for it: a backend, or a pool (the variant)
    status: int
    latency_ms: float
    error: str | None = None
    member: str | None = None  # the pool's member the try went to

    def row(self) -> dict[str, Any]:
        """As the traffic log keeps it: `member` only where the try went to a pool's member."""
        row = dict(self.__dict__)
        if row["member"] is None:
            del row["member"]
        return row

    @property
    def target(self) -> str:
        """Where the try went, as x-llmgate-tried names it: the backend, or pool/member."""
        return self.backend if self.member is None else f"{self.backend}/{self.member}"


@dataclass
class RequestContext:
    request_id: str
    route_name: str
    route: "RouteSettings"
    body: dict[str, Any]
    headers: Mapping[str, str] = field(repr=False)  # carries the caller's key: kept out of reprs (hook traces)
    api_key: str | None = field(default=None, repr=False)
    tenant: str | None = None
    received_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    variant: str | None = None  # the backend the router chose
    served_by: str | None = None  # the backend (or plugin) whose answer the caller got
    response: dict[str, Any] | None = None
    status: int = 200
    error: "GatewayError | None" = None
    first_token_at: float | None = None
    finished_at: float | None = None
    cost_usd: float | None = None
    # waiting on backends (attempts, retry backoff; a stream's up to its first chunk)
    upstream_ms: float = 0.0
    overhead_ms: float | None = None  # the gateway's own time before the answer started: x-llmgate-overhead-ms
    attempts: list[Attempt] = field(default_factory=list)
    annotations: dict[str, Any] = field(default_factory=dict)  # plugins' notes, logged with the record
    # Plugins' working data for this request, keyed by plugin name: never logged, gone with the request.
    state: dict[str, Any] = field(default_factory=dict, repr=False)
    # The gateway.Generation (config and backends) the request runs on, kept through a reload mid-request.
    generation: Any = field(default=None, repr=False)
    dialect: str = "chat"  # the API the caller speaks (gateway/dialects/); `body` is always in the chat form
    inbound: dict[str, Any] | None = field(default=None, repr=False)  # the request as the caller's dialect sent it
    response_headers: dict[str, str] = field(default_factory=dict)  # headers plugins add to the caller's answer

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def sticky_key(self) -> str:
        """Who this request is for, for sticky assignment: `user`, then x-llmgate-user, then the API key,
        then the request."""
        user = self.body.get("user")
        if isinstance(user, str) and user:
            return f"user:{user}"
        header = self.headers.get("x-llmgate-user")
        if header:
            return f"user:{header}"
        if self.api_key:
            return f"key:{self.api_key}"
        return f"request:{self.request_id}"

    @property
    def affinity_key(self) -> str | None:
        """The sticky key when it names someone (a user, an API key), for a pool's affinity; None when it is
        only this request's own."""
        key = self.sticky_key
        return None if key.startswith("request:") else key

    @property
    def conversational(self) -> bool:
        """A conversation (chat, messages, responses): `body` has messages. Embeddings are not: a plugin
        that mirrors, caches or judges answers leaves them alone."""
        return self.dialect != "embeddings"

    @property
    def usage(self) -> dict[str, Any]:
        return (self.response or {}).get("usage") or {}

    @property
    def latency_ms(self) -> float | None:
        return None if self.finished_at is None else (self.finished_at - self.started) * 1000

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token_at is None else (self.first_token_at - self.started) * 1000

    def record(self, bodies: bool = True) -> dict[str, Any]:
        """The traffic-log row for this exchange; no secret goes in (the sticky key is hashed)."""
        usage = self.usage
        return {
            "request_id": self.request_id,
            "ts": self.received_at,
            "route": self.route_name,
            "variant": self.variant,
            "served_by": self.served_by,
            "status": self.status,
            "error_type": self.error.type if self.error else None,
            "error_message": self.error.message if self.error else None,
            "stream": self.stream,
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "cost_usd": self.cost_usd,
            "sticky_hash": stable_hash(self.route_name, self.sticky_key)[:16],
            "tenant": self.tenant,
            "attempts": [a.row() for a in self.attempts],
            # the dialect is noted where it is not chat completions (records written before dialects are chat)
            "annotations": self.annotations
            if self.dialect == "chat"
            else {**self.annotations, "dialect": self.dialect},
            "request": self.body if bodies else None,
            "response": self.response if bodies else None,
        }


REQUEST_ID = web.RequestKey("request_id", str)
CLIENT_REQUEST_ID = web.RequestKey("client_request_id", str)  # the caller's x-request-id: correlation only
REQUEST_CONTEXT = web.RequestKey("request_context", RequestContext)  # for the access log and the server span


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def dumps_bytes(value: Any) -> bytes:
    """`dumps(value)` as UTF-8 bytes, made by orjson (about ten times faster on an answer) where it can: what
    it refuses (an integer past 64 bits, a key that is not a string, a lone surrogate, nesting past its
    limit) goes the standard library's way, to the same text or the same error as before."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError
        return dumps(value).encode()


def dumps_encodable(value: Any) -> bytes:
    """`dumps_bytes(value)`, or, where no UTF-8 can hold it (a lone surrogate, which an upstream's JSON may
    carry into a judge's prompt or a stored row), ASCII JSON whose escapes read back as it was: for what
    must always be written, an upstream request or a traffic-log row."""
    try:
        return dumps_bytes(value)
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()
