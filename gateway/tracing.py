"""Spans around the request's life, as wrappers the core puts in its few chokepoints.

The tracing plugin hands the gateway an OpenTelemetry tracer (the `register_tracer` hook); when
none does, `gateway.hooks.tracer` is None and every helper here is skipped by one `is None`
check, so tracing costs nothing when it is off. The spans: one SERVER span per request (its
parent the caller's W3C `traceparent`), a child per plugin hook implementation (HookRunner), a
CLIENT span per backend attempt (the proxy), and linked spans for off-path work (shadow, judge).
The current span travels in contextvars, so a backend injects `traceparent` into what it sends.

Attributes name routes, backends, models, statuses and token counts: never headers, keys or bodies.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator

from aiohttp import web
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .context import REQUEST_CONTEXT, RequestContext

if TYPE_CHECKING:
    from .backends.base import Backend

W3C = TraceContextTextMapPropagator()
HOOK_SPAN_MIN_SECONDS = 0.0005  # a hook call that neither answered nor failed gets a span from this long on
UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes would drown the traces


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add `traceparent` for the current span (nothing when no span is current); returns `headers`."""
    if trace.get_current_span().get_span_context().is_valid:
        W3C.inject(headers)
    return headers


def in_trace() -> bool:
    return trace.get_current_span().get_span_context().is_valid


def current_link() -> Link | None:
    """A link to the current span, for work that happens later and elsewhere (a shadow call, a judgement)."""
    context = trace.get_current_span().get_span_context()
    return Link(context) if context.is_valid else None


def usage_attributes(usage: dict[str, Any] | None) -> dict[str, int]:
    usage = usage or {}
    out = {}
    if isinstance(usage.get("prompt_tokens"), int):
        out["gen_ai.usage.input_tokens"] = usage["prompt_tokens"]
    if isinstance(usage.get("completion_tokens"), int):
        out["gen_ai.usage.output_tokens"] = usage["completion_tokens"]
    return out


def fail(span, status: int | None, error_type: str) -> None:
    """Mark a span failed by status and error type; the message stays out (it may quote a provider)."""
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR))


def server_middleware(tracer: trace.Tracer):
    """A SERVER span per request, continuing the caller's trace when it sent a `traceparent`."""

    @web.middleware
    async def traced(request: web.Request, handler) -> web.StreamResponse:
        if request.path in UNTRACED_PATHS:
            return await handler(request)
        parent = W3C.extract(request.headers)
        span = tracer.start_span(
            f"{request.method} {request.path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "url.path": request.path},
        )
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                response = await handler(request)
        except BaseException as exc:
            fail(span, None, type(exc).__name__)
            span.end()
            raise
        span.set_attribute("http.response.status_code", response.status)
        if response.status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        ctx = request.get(REQUEST_CONTEXT)
        if ctx is not None:
            _describe(span, ctx)
        span.end()
        return response

    return traced


def _describe(span, ctx: "RequestContext") -> None:
    attributes: dict[str, Any] = {
        "llmgate.request_id": ctx.request_id,
        "llmgate.route": ctx.route_name,
        "llmgate.stream": ctx.stream,
        **usage_attributes(ctx.usage),
    }
    for key, value in (
        ("llmgate.variant", ctx.variant),
        ("llmgate.served_by", ctx.served_by),
        ("llmgate.cost_usd", ctx.cost_usd),
        ("llmgate.overhead_ms", ctx.overhead_ms),
        ("llmgate.upstream_ms", ctx.upstream_ms),
        ("llmgate.ttft_ms", ctx.ttft_ms),
        ("error.type", ctx.error.type if ctx.error else None),
    ):
        if value is not None:
            attributes[key] = value
    span.set_attributes(attributes)


@contextmanager
def upstream_span(tracer: trace.Tracer | None, backend: "Backend", route: str) -> Iterator[Any]:
    """A CLIENT span for one backend attempt, current while the backend sends (so it injects traceparent).

    Yields the span (None when tracing is off); the caller ends it with `finish_upstream`, which
    for a stream happens when the stream ends. A failure ends it here."""
    if tracer is None:
        yield None
        return
    span = tracer.start_span(
        f"chat {backend.model}",
        kind=SpanKind.CLIENT,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": backend.model,
            "llmgate.backend": backend.name,
            "llmgate.backend.kind": backend.kind,
            "llmgate.route": route,
        },
    )
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield span
    except BaseException as exc:
        fail(
            span,
            getattr(exc, "upstream_status", None) or getattr(exc, "status", None),
            getattr(exc, "type", None) or type(exc).__name__,
        )
        span.end()
        raise


def finish_upstream(span, answer: dict[str, Any] | None) -> None:
    if span is None:
        return
    span.set_attribute("http.response.status_code", 200)
    span.set_attributes(usage_attributes((answer or {}).get("usage")))
    span.end()


class StreamSpan:
    """A stream's chunks passed on, its attempt's span ended (with the usage chunk's tokens) when it closes.

    A class rather than an async generator: `aclose()` must close the backend's stream and end the
    span even when the caller never started iterating (the caller left before the first write)."""

    def __init__(self, chunks: AsyncIterator[dict], span):
        self._chunks, self._span, self._usage, self._ended = chunks, span, None, False

    def __aiter__(self) -> "StreamSpan":
        return self

    async def __anext__(self) -> dict:
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            raise
        except BaseException as exc:
            fail(self._span, getattr(exc, "upstream_status", None), getattr(exc, "type", None) or type(exc).__name__)
            raise
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        return chunk

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()
        finally:
            if not self._ended:
                self._ended = True
                self._span.set_attributes(usage_attributes(self._usage))
                self._span.end()


@contextmanager
def linked_span(tracer: trace.Tracer | None, name: str, link: Link | None, **attributes: Any) -> Iterator[Any]:
    """A span of its own trace for off-path work, linked to the request it came from (None when off)."""
    if tracer is None:
        yield None
        return
    span = tracer.start_span(
        name,
        context=Context(),
        kind=SpanKind.INTERNAL,
        links=[link] if link is not None else None,
        attributes={k: v for k, v in attributes.items() if v is not None},
    )
    with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
        yield span


def record_hook(
    tracer: trace.Tracer, hook_name: str, plugin: str, started_ns: int, *, answered: bool, error: str | None
) -> None:
    """A child span (of the current one) for one plugin's implementation of a hook that did work."""
    span = tracer.start_span(
        f"{hook_name} {plugin}",
        start_time=started_ns,
        attributes={"llmgate.hook": hook_name, "llmgate.plugin": plugin, "llmgate.hook.answered": answered},
    )
    if error is not None:
        fail(span, None, error)
    span.end()
