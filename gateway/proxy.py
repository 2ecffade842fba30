"""The request path for every dialect (chat completions, messages, responses), as a short visible pipeline:

`authenticate` (before the body is read) → read, translate into the chat form (gateway/dialects/)
and validate → `authorize` → `guard_request` (may rewrite or refuse) → `before_route` plugins
(may answer) → `choose_variant` → backend chain (retries on retryable errors, then the route's
fallbacks) → `answer_filter`s → write the answer in the caller's dialect (JSON or SSE), with
`before_answer_end` plugins just before its last bytes → `after_response` plugins, once they are out.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import Counter
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from aiohttp import web

from . import tracing
from .backends.base import Backend
from .bodies import parse_json
from .breaker import CLOSED, CircuitBreaker, CircuitOpen
from .chat import (
    NATIVE,
    StreamAssembler,
    completion_to_chunks,
    estimate_prompt_tokens,
    max_tokens_of,
    validate_chat_request,
)
from .config import RouteSettings
from .context import CLIENT_REQUEST_ID, REQUEST_CONTEXT, REQUEST_ID, Attempt, RequestContext, caller_key, dumps_bytes
from .dialects.base import DIALECT, Dialect, Endpoint, StreamEncoder
from .errors import (
    CONTEXT_LENGTH_EXCEEDED,
    NO_KEYS_HINT,
    BodyTooLarge,
    GatewayError,
    InvalidRequest,
    MissingCredentials,
    UnsupportedMediaType,
    UpstreamError,
    UpstreamTimeout,
)
from .filters import AnswerRefused, Filters
from .gateway import GATEWAY, Gateway, Generation
from .plugins import answer
from .pools import MEMBER, Pool

log = logging.getLogger("llmgate.proxy")
T = TypeVar("T")
IN_FLIGHT = web.AppKey("in_flight", Counter)  # route -> chat requests being served now (GET /metrics)
OVERHEAD_HEADER = "x-llmgate-overhead-ms"
TRIED_HEADER = "x-llmgate-tried"  # every backend the request was sent to (or skipped for), in order
IGNORED_HEADER = "x-llmgate-ignored-params"  # parameters accepted but without effect (hints, on this path)
# Whether the body was strict JSON (bodies.parse_json): then no walk looks for what only lax JSON can hold.
STRICT_JSON = web.RequestKey("strict_json", bool)


async def read_json(request: web.Request, max_bytes: int) -> Any:
    content_type = request.headers.get("Content-Type")
    if (
        content_type is not None
        and request.content_type != "application/json"
        and not request.content_type.endswith("+json")
    ):
        raise UnsupportedMediaType(
            f"the body must be JSON sent as application/json, not {request.content_type!r}",
            code="unsupported_media_type",
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(
            f"the request body is larger than this gateway's limit of {max_bytes} bytes", code="body_too_large"
        ) from None
    if not raw:
        raise InvalidRequest("the request body is empty: send a JSON object", code="invalid_json")
    body, request[STRICT_JSON] = parse_json(raw)  # refused at MAX_DEPTH before anything else reads it
    return body


def backend_chain(ctx: RequestContext) -> list[str]:
    """The chosen variant, then the baseline (if a candidate was chosen), then the route's fallbacks."""
    order = [ctx.variant, ctx.route.baseline, *ctx.route.fallback]
    return list(dict.fromkeys(order))


def context_chain(ctx: RequestContext) -> list[str]:
    """Where a prompt too long for a backend goes on: the route's `context_fallback`, less the backends
    the request already went to (or was skipped for)."""
    tried = {attempt.backend for attempt in ctx.attempts}
    return [name for name in dict.fromkeys(ctx.route.context_fallback) if name not in tried]


def does_not_fit(ctx: RequestContext, backend: Backend) -> UpstreamError | None:
    """The too-long error `backend` would answer, known before calling it: its configured context window
    cannot hold the prompt (estimated at 4 characters a token, its system prompt included) and max_tokens."""
    window = backend.settings.context_window
    if window is None or not ctx.conversational:
        return None
    body = backend.upstream_body(ctx.body)
    prompt, answer = estimate_prompt_tokens(body), max_tokens_of(body) or 0
    if prompt + answer <= window:
        return None
    asked = f"the prompt (about {prompt} tokens)" + (f" and max_tokens {answer} do" if answer else " does")
    return UpstreamError(
        f"backend '{backend.name}' was skipped: {asked} not fit its context window of {window} tokens",
        status=400,
        type="invalid_request_error",
        code=CONTEXT_LENGTH_EXCEEDED,
        too_long=True,
    )


RETRY_AFTER_CAP = 2.0  # the longest a provider's Retry-After is waited for on the same backend; longer cools it down


def _backoff(attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(retry_after, RETRY_AFTER_CAP)
    return random.uniform(0, min(2.0, 0.1 * 2**attempt))  # full jitter


class DeadlineExceeded(UpstreamTimeout):
    """The request's deadline passed: no time is left for another try, retry or fallback."""


def deadline_of(ctx: RequestContext) -> float | None:
    """When the request must have its answer (perf_counter): its route's `deadline`, else the gateway's."""
    seconds = ctx.route.deadline
    if seconds is None and ctx.generation is not None:
        seconds = ctx.generation.config.settings.deadline
    return None if seconds is None else ctx.started + seconds


def past_deadline(ctx: RequestContext, deadline: float) -> DeadlineExceeded:
    seconds = deadline - ctx.started
    return DeadlineExceeded(
        f"route '{ctx.route_name}' did not answer within its deadline of {seconds:g}s "
        "(every try, retry and fallback included)"
    )


def until(deadline: float | None) -> asyncio.Timeout:
    """A timeout at `deadline` (perf_counter), or none: what is left of the request's time, for one try."""
    return asyncio.timeout(None if deadline is None else deadline - time.perf_counter())


async def _within(ctx: RequestContext, deadline: float | None, call: Callable[[Backend], Awaitable[T]], backend) -> T:
    """One try, given what is left of the request's deadline; cut there as DeadlineExceeded."""
    if deadline is None:
        return await call(backend)
    timer = until(deadline)
    try:
        async with timer:
            return await call(backend)
    except TimeoutError:
        if timer.expired():
            raise past_deadline(ctx, deadline) from None
        raise


class _Untried(Exception):
    """A backend's breaker let no try through: the chain moves on without a failure of its own."""


async def call_chain(
    ctx: RequestContext, generation: Generation, call: Callable[[Backend], Awaitable[T]], settle: bool = True
) -> T:
    """Run `call` on each backend of the chain until one succeeds.

    A retryable failure is retried on the same backend `route.retries` times; a failure that is
    the backend's (5xx, 429, timeout, missing credentials) moves on to the next backend; a failure
    that is the caller's (4xx) ends the chain at once, except a prompt too long for the backend (its
    upstream said so, or its configured `context_window` cannot hold it, when it is skipped without a
    call): that moves the request to the route's `context_fallback` and along it, or, without one, is
    the caller's 400. A backend whose circuit breaker is open is skipped; when every backend was
    skipped so, the caller gets a 503 `circuit_open` with Retry-After (a 429 when each is cooling down
    after a provider's Retry-After). The request's deadline bounds it all: past it, the caller's 504.
    With `settle` False a success leaves the breaker's verdict to the caller (a stream is a success only
    once it ends well).
    """
    deadline = deadline_of(ctx)
    last_error: GatewayError | None = None
    uncredentialed: list[str] = []
    open_circuits: list[CircuitBreaker] = []
    chain, position, on_context_chain = backend_chain(ctx), 0, False
    while position < len(chain):
        name, position = chain[position], position + 1
        backend = generation.backends[name]
        if (too_long := does_not_fit(ctx, backend)) is not None:
            ctx.attempts.append(Attempt(name, too_long.status, 0.0, too_long.message))
            last_error = too_long
        elif missing := backend.missing_credentials():
            uncredentialed.append(f"backend '{name}' needs {', '.join(missing)}")
            last_error = MissingCredentials(
                f"no credentials to serve route '{ctx.route_name}': {'; '.join(uncredentialed)} "
                f"set in the gateway's environment, then restart it. {NO_KEYS_HINT}",
                code="missing_credentials",
            )
            ctx.attempts.append(Attempt(name, last_error.status, 0.0, f"missing {', '.join(missing)}"))
            continue
        else:
            try:
                return await _tries(ctx, name, backend, call, open_circuits, settle, deadline)
            except _Untried:
                continue
            except UpstreamError as err:
                last_error = err
                if isinstance(err, DeadlineExceeded):
                    raise
                if not err.too_long:
                    if err.status < 500 and err.status != 429:
                        raise
                    continue
        if not on_context_chain:  # too long here: what is left to try is the context fallback
            chain, position, on_context_chain = context_chain(ctx), 0, True
    if last_error is None:
        names = ", ".join(f"'{b.backend}'" for b in open_circuits)
        retry_after = min((b.retry_after() for b in open_circuits), default=1.0)
        if open_circuits and all(b.cooling() for b in open_circuits):
            seconds = max(1, math.ceil(retry_after))
            raise UpstreamError(
                f"route '{ctx.route_name}' cannot be served now: every backend it may use asked for a pause "
                f"(Retry-After: {names}); retry after {seconds}s",
                status=429,
                type="rate_limit_error",
                retryable=True,
                retry_after=retry_after,
                headers={"Retry-After": str(seconds)},
            )
        raise CircuitOpen(
            f"route '{ctx.route_name}' cannot be served now: the circuit breaker of every backend "
            f"it may use is open after repeated failures ({names}); retry after "
            f"{max(1, math.ceil(retry_after))}s",
            retry_after,
        )
    raise last_error


async def _tries(
    ctx: RequestContext,
    name: str,
    target: Backend,
    call: Callable[[Backend], Awaitable[T]],
    open_circuits: list[CircuitBreaker],
    settle: bool = True,
    deadline: float | None = None,
) -> T:
    """`call` on one backend of the chain, tried again `route.retries` times after a retryable failure (a
    pool's next try on another member): its answer, else its last failure raised (`_Untried` when no
    try got through: an open breaker, a pool without a healthy member)."""
    last_error: UpstreamError | None = None
    tried: list[str] = []
    for attempt in range(ctx.route.retries + 1):
        if deadline is not None and time.perf_counter() >= deadline:
            raise past_deadline(ctx, deadline)
        backend = target.pick(ctx.affinity_key, tried)
        if backend is None:  # a pool whose every member is ejected: passed over as an open breaker is
            open_circuits.extend(b for b in target.breakers().values() if not b.available())
            ctx.attempts.append(Attempt(name, CircuitOpen.status, 0.0, "no healthy member"))
            break
        breaker, member = backend.breaker, (None if backend is target else backend.name)
        if not breaker.allow():
            open_circuits.append(breaker)
            if cooling := breaker.cooling():
                skipped = Attempt(name, 429, 0.0, f"cooling down for {cooling:.0f}s more (Retry-After)", member)
            else:
                skipped = Attempt(name, CircuitOpen.status, 0.0, "circuit open", member)
            ctx.attempts.append(skipped)
            break
        tried.append(backend.name)
        started = time.perf_counter()
        try:
            result = await _within(ctx, deadline, call, backend)
        except UpstreamError as err:
            if isinstance(err, DeadlineExceeded):  # cut by the request's time, not the backend's own timeouts
                breaker.released()
            else:
                breaker.record(err)
            elapsed = (time.perf_counter() - started) * 1000
            ctx.upstream_ms += elapsed
            ctx.attempts.append(Attempt(name, err.upstream_status or err.status, elapsed, err.message, member))
            last_error = err
            if isinstance(err, DeadlineExceeded):
                raise
            if err.retry_after is not None and err.retry_after > RETRY_AFTER_CAP:
                breaker.cool_down(err.retry_after)  # no retry inside the provider's window: on along the chain
                if backend is target:
                    break
                continue  # a pool: another member, at once
            if not err.retryable or attempt == ctx.route.retries:
                break
            if breaker.state != CLOSED:
                continue  # it just opened: no pause, the next turn skips to the next backend
            pause = _backoff(attempt, err.retry_after)
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.perf_counter()))
            await asyncio.sleep(pause)
            ctx.upstream_ms += pause * 1000
            continue
        except BaseException:
            breaker.released()  # cancelled, or failed inside the gateway: nothing learnt about the backend
            raise
        if settle:
            breaker.succeeded()
        elapsed = (time.perf_counter() - started) * 1000
        ctx.upstream_ms += elapsed
        ctx.attempts.append(Attempt(name, 200, elapsed, member=member))
        ctx.served_by = name
        if member is not None:
            ctx.annotations[MEMBER] = member
        return result
    if last_error is None:
        raise _Untried
    raise last_error


MAX_HELD = 16  # leading chunks that say nothing (a role) held back while a stream may still fall back


def _says_something(chunk: dict) -> bool:
    """Whether a chunk carries any of the answer: text, reasoning, a tool call, a finish (a role alone does not)."""
    for choice in chunk.get("choices") or ():
        if choice.get("finish_reason"):
            return True
        for key, value in (choice.get("delta") or {}).items():
            if value and key != "role":
                return True
    return False


def _finishes(chunk: dict) -> bool:
    return any(choice.get("finish_reason") for choice in chunk.get("choices") or ())


def truncated(backend: str) -> UpstreamError:
    """A stream that ended without a finish_reason: cut short, whatever its framing said (a clean end of the
    body, `[DONE]`, a JSON body instead of events), so never a success."""
    return UpstreamError(
        f"backend '{backend}' ended the stream before the answer was complete (no finish_reason)", retryable=True
    )


async def open_stream(backend: Backend, body: dict) -> tuple[list[dict], AsyncIterator[dict]]:
    """Start a stream and wait for its first chunk that says something (held with the role-only ones before
    it), so a failure to start, or a stream that ends before it said anything, can still fall back."""
    chunks = backend.stream(body).__aiter__()
    held: list[dict] = []
    try:
        while len(held) < MAX_HELD:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                raise truncated(backend.name) from None
            held.append(chunk)
            if _says_something(chunk):
                break
    except BaseException:
        await chunks.aclose()
        raise
    return held, chunks


def _headers(ctx: RequestContext) -> dict[str, str]:
    """The answer's headers, made as it starts: so the overhead counts everything before the first byte."""
    ctx.overhead_ms = max(0.0, (time.perf_counter() - ctx.started) * 1000 - ctx.upstream_ms)
    headers = {
        **ctx.response_headers,
        "x-request-id": ctx.request_id,  # a plugin's cannot replace the core's
        OVERHEAD_HEADER: f"{ctx.overhead_ms:.3f}",
    }
    if ctx.served_by:  # only what answered: a variant chosen but never reached names no one
        headers["x-llmgate-variant"] = ctx.served_by
    if ctx.attempts:
        headers[TRIED_HEADER] = ",".join(dict.fromkeys(attempt.target for attempt in ctx.attempts))
    if ctx.error is not None:
        headers.update(ctx.error.response_headers())
    return headers


CLIENT_CLOSED = 499  # nginx's status for a request whose caller went away before its answer ended


class CallerGone(Exception):
    """The caller closed the connection while its stream was being written."""


def client_closed() -> GatewayError:
    return GatewayError(
        "the caller closed the connection before the stream ended",
        status=CLIENT_CLOSED,
        type="client_closed_request",
        code="client_closed",
    )


def usage_so_far(answer: dict, body: dict) -> tuple[dict, bool]:
    """The usage of a stream cut short: the upstream's where it sent the completion's count, else counted
    as a context window is (4 characters a token: the text, reasoning and tool calls streamed so far, and
    the prompt); and whether it was counted here."""
    usage = dict(answer.get("usage") or {})
    if isinstance(usage.get("completion_tokens"), int) and usage["completion_tokens"] > 0:
        return usage, False
    chars = 0
    for choice in answer.get("choices") or ():
        message = choice.get("message") or {}
        chars += len(message.get("content") or "") + len(message.get("reasoning_content") or "")
        calls = message.get("tool_calls") or ()
        chars += sum(len((call.get("function") or {}).get("arguments") or "") for call in calls)
    prompt = usage.get("prompt_tokens")
    if not isinstance(prompt, int):
        prompt = estimate_prompt_tokens(body)
    completion = math.ceil(chars / 4)
    counted = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return {**usage, **counted}, True


class SseWriter:
    """Writes a stream's chunks as the caller's dialect's server-sent events, assembling the whole answer."""

    def __init__(
        self, response: web.StreamResponse, ctx: RequestContext, encoder: StreamEncoder, filters: Filters | None
    ):
        self.response = response
        self.ctx = ctx
        self.encoder = encoder
        self.filters = filters
        self.assembler = StreamAssembler()
        self.started = False

    async def send(self, chunk: dict) -> None:
        if self.filters is not None:
            chunk = self.filters.chunk(chunk)
        await self._write(chunk)

    async def release(self) -> None:
        """What the filters held back, once the stream's last chunk has come."""
        if self.filters is not None:
            for chunk in self.filters.finish():
                await self._write(chunk)

    async def _write(self, chunk: dict) -> None:
        self.assembler.add(chunk)
        if self.ctx.first_token_at is None and any(
            (c.get("delta") or {}).get("content") or (c.get("delta") or {}).get("tool_calls")
            for c in chunk.get("choices") or ()
        ):
            self.ctx.first_token_at = time.perf_counter()
        data = self.encoder.chunk(chunk)
        if not self.started:
            data, self.started = self.encoder.start() + data, True
        if data:
            await self._send(data)

    async def _send(self, data: bytes) -> None:
        try:
            await self.response.write(data)
        except ConnectionResetError:  # the caller's side: the upstream's failures come as UpstreamErrors
            raise CallerGone from None

    async def finish(self, gateway: Gateway, error: GatewayError | None) -> None:
        data = self.encoder.finish(error)
        if not self.started:
            data = self.encoder.start() + data
        await answer_ends(gateway, self.ctx)
        await self.response.write_eof(data)  # the last event and the end of the body in one write


class SseResponse(web.StreamResponse):
    """An event stream whose headers leave with its first event, in one write (aiohttp sends a stream's
    headers alone by default): a stream is prepared only once its first event is in hand, so holding
    them back delays nothing, and saves a send on the way to the first token."""

    _send_headers_immediately = False


async def _prepare_sse(request: web.Request, ctx: RequestContext) -> web.StreamResponse:
    response = SseResponse(headers={**_headers(ctx), "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    return response


async def _stream_answer(
    request: web.Request, ctx: RequestContext, generation: Generation, dialect: Dialect
) -> web.StreamResponse:
    tracer = request.app[GATEWAY].hooks.tracer

    async def start(backend: Backend) -> tuple[list[dict], AsyncIterator[dict]]:
        with tracing.upstream_span(tracer, backend, ctx.route_name) as span:
            held, chunks = await open_stream(backend, ctx.body)
        return held, chunks if span is None else tracing.StreamSpan(chunks, span)

    held, chunks = await call_chain(ctx, generation, start, settle=False)
    backend = answered_by(ctx, generation)
    breaker = backend.breaker  # told once the stream ends: a stream cut short is the backend's failure
    try:
        _served(ctx, generation)
        filters = await answer_filters(request.app[GATEWAY], ctx)
        writer = SseWriter(await _prepare_sse(request, ctx), ctx, dialect.encoder(ctx), filters)
    except BaseException:
        breaker.released()
        await chunks.aclose()
        raise
    error: GatewayError | None = None
    settled = finished = False
    deadline = deadline_of(ctx)
    timer = until(deadline)  # the rest of the request's deadline, for the stream's rest (one timer, no await)
    try:
        try:
            async with timer:
                for chunk in held:
                    finished = finished or _finishes(chunk)
                    await writer.send(chunk)
                async for chunk in chunks:
                    if not finished:
                        finished = _finishes(chunk)
                    await writer.send(chunk)
        except TimeoutError:
            if not timer.expired():
                raise
            error = past_deadline(ctx, deadline)
            _broke(ctx, error)
            raise error from None
        if not finished:  # the body ended cleanly, but the answer did not: never a silent end
            raise truncated(backend.name)
        breaker.succeeded()
        settled = True
        await writer.release()
    except CallerGone:  # the caller left: no one to tell, but the exchange is still recorded and charged
        error = client_closed()
    except AnswerRefused as err:  # a filter ended it: the backend did nothing wrong
        error = err
    except DeadlineExceeded as err:  # the request's time is up: the backend is told nothing about its health
        error = err
    except GatewayError as err:  # the stream broke after it started: tell the caller, never end silently
        error = err
        if not settled:
            breaker.record(err)
            settled = True
            _broke(ctx, err)
    except Exception:
        log.exception("request %s: the stream failed inside the gateway", ctx.request_id)
        error = GatewayError(f"the stream failed inside the gateway (request id {ctx.request_id})")
    finally:
        if not settled:
            breaker.released()
        await chunks.aclose()
        ctx.response = writer.assembler.result()
    if error is not None and error.status == CLIENT_CLOSED:
        ctx.error, ctx.status = error, error.status
        ctx.response["usage"], counted = usage_so_far(ctx.response, ctx.body)
        if counted:
            ctx.annotations["usage_counted"] = True  # not the upstream's figures: what had streamed, counted
        return writer.response  # the exchange ends in serve(): its cost, after_response (log, metrics, quotas)
    if error is not None:
        error.message = request.app[GATEWAY].scrub(error.message)
        ctx.error, ctx.status = error, error.status
    else:
        await dialect.answered(ctx, request.app[GATEWAY])
    await writer.finish(request.app[GATEWAY], error)
    return writer.response


def _broke(ctx: RequestContext, error: GatewayError) -> None:
    """The try whose stream broke after it started is logged with its failure, not as the 200 it began as."""
    attempt = ctx.attempts[-1]
    attempt.status = getattr(error, "upstream_status", None) or error.status
    attempt.error = error.message


async def answer_ends(gateway: Gateway, ctx: RequestContext) -> None:
    """The answer is complete, its last bytes not yet written: finish the exchange's record (its end,
    its cost) and let `before_answer_end` plugins keep it, so a caller who saw the answer end can
    find it logged. Whatever they raise, the answer still ends."""
    ctx.finished_at = time.perf_counter()
    ctx.cost_usd = _cost(ctx.generation, ctx)
    if not gateway.hooks.implemented("before_answer_end"):
        return
    try:
        await gateway.hooks.call("before_answer_end", ctx=ctx)
    except GatewayError as err:  # a refusal, or a fail-closed plugin's fault: too late to change the answer
        log.error("request %s: before_answer_end failed, the answer ends anyway: %s", ctx.request_id, err.message)


async def write_json(request: web.Request, ctx: RequestContext, body: dict, status: int = 200) -> web.Response:
    await answer_ends(request.app[GATEWAY], ctx)  # before the headers: the wait counts in the overhead
    response = web.Response(
        body=dumps_bytes(body), status=status, content_type="application/json", headers=_headers(ctx)
    )
    await response.prepare(request)
    await response.write_eof()
    return response


async def _replay(request: web.Request, ctx: RequestContext, answer: dict, dialect: Dialect) -> web.StreamResponse:
    """Send an answer a plugin produced, as a stream if the caller asked for one."""
    filters = await answer_filters(request.app[GATEWAY], ctx)
    if filters is not None:
        answer = filters.completion(answer)
    ctx.response = answer
    await dialect.answered(ctx, request.app[GATEWAY])
    if not ctx.stream:
        return await write_json(request, ctx, dialect.answer(answer, ctx))
    writer = SseWriter(await _prepare_sse(request, ctx), ctx, dialect.encoder(ctx), None)  # filtered whole
    for chunk in completion_to_chunks(answer):
        await writer.send(chunk)
    await writer.finish(request.app[GATEWAY], None)
    return writer.response


async def answer_filters(gateway: Gateway, ctx: RequestContext) -> Filters | None:
    """The `answer_filter`s plugins give this request, in plugin order; None (the common case) for none."""
    if not gateway.hooks.implemented("answer_filter"):
        return None
    filters = [f for f in (await gateway.hooks.call("answer_filter", ctx=ctx)).values() if f is not None]
    return Filters(filters) if filters else None


def answered_by(ctx: RequestContext, generation: Generation) -> Backend | None:
    """The backend whose answer the caller got: `served_by`'s, or the member of the pool it names."""
    backend = generation.backends.get(ctx.served_by or "")
    if isinstance(backend, Pool) and (member := backend.member(ctx.annotations.get(MEMBER, ""))) is not None:
        return member
    return backend


def _cost(generation: Generation, ctx: RequestContext) -> float | None:
    """Priced with the config the request ran on, even if a reload came in between; a pool's member by its
    own name's price where it has one, else by the pool's, else by its model's."""
    backend = answered_by(ctx, generation)
    model = backend.model if backend else None
    if backend is not None and backend.name != ctx.served_by:
        cost = generation.config.cost(backend.name, None, ctx.usage)
        if cost is not None:
            return cost
    return generation.config.cost(ctx.served_by or "", model, ctx.usage)


def endpoint(dialect: Dialect) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler of one dialect's endpoint: the same request path for each."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return await serve(request, dialect)

    return handle


Exchange = Callable[[web.Request, Gateway, Generation, RequestContext, Endpoint], Awaitable[web.StreamResponse]]


async def read_request(request: web.Request, dialect: Endpoint) -> tuple[str | None, dict, str, RouteSettings]:
    """(tenant, body, route name, route) of a request to any dialect's endpoint: authenticated before its
    body is read (a caller without a valid key costs us no more), then read, and its route found."""
    request[DIALECT] = dialect  # so that an error before the exchange starts is in the caller's shape too
    gateway = request.app[GATEWAY]
    tenant = await gateway.authenticate(request)
    body = await read_json(request, gateway.config.server.max_body_bytes)
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_json")
    route_name = dialect.route_of(body)
    if not isinstance(route_name, str) or not route_name:
        raise InvalidRequest(
            "you must provide a model parameter naming a route (GET /v1/models lists them)",
            param="model",
            code="missing_model",
        )
    return tenant, body, route_name, await gateway.route_for(request, route_name)


async def serve(request: web.Request, dialect: Endpoint, exchange: Exchange | None = None) -> web.StreamResponse:
    """Authenticate, read, route, then run the exchange (the conversational pipeline unless another is
    given: embeddings) and tell `after_response` plugins, once the answer is out. The exchange's end
    and cost are set as its answer ends (`answer_ends`) and again here, after the last byte (a caller
    that went away never got that far), as `after_response` has always seen them."""
    tenant, body, route_name, route = await read_request(request, dialect)
    gateway = request.app[GATEWAY]
    generation = gateway.generation
    ctx = RequestContext(
        request_id=request[REQUEST_ID],
        route_name=route_name,
        route=route,
        body=body,
        headers=request.headers,
        api_key=caller_key(request),
        tenant=tenant,
        generation=generation,
        dialect=dialect.name,
    )
    if CLIENT_REQUEST_ID in request:  # the caller's own id, logged beside the exchange's for its correlation
        ctx.annotations["client_request_id"] = request[CLIENT_REQUEST_ID]
    request[REQUEST_CONTEXT] = ctx
    in_flight = request.app[IN_FLIGHT]
    in_flight[route_name] += 1
    generation.enter()
    try:
        response = await _guarded(exchange or _conversation, request, gateway, generation, ctx, dialect)
    finally:
        generation.leave()
        in_flight[route_name] -= 1
        ctx.finished_at = time.perf_counter()
        ctx.cost_usd = _cost(generation, ctx)
    await gateway.hooks.call("after_response", ctx=ctx)
    return response


def _completer(tracer, ctx: RequestContext) -> Callable[[Backend], Awaitable[dict]]:
    """The non-streaming call of one attempt: the backend's own, or wrapped in a CLIENT span."""
    if tracer is None:
        return lambda backend: backend.complete(ctx.body)

    async def complete(backend: Backend) -> dict:
        with tracing.upstream_span(tracer, backend, ctx.route_name) as span:
            answer = await backend.complete(ctx.body)
        tracing.finish_upstream(span, answer)
        return answer

    return complete


def _note_ignored(ctx: RequestContext, names: list[str]) -> None:
    """Name parameters accepted without effect: in the answer's header and the traffic log."""
    names = [n for n in names if n not in ctx.annotations.get("ignored_params", ())]
    if names:
        ctx.annotations["ignored_params"] = [*ctx.annotations.get("ignored_params", ()), *names]
        ctx.response_headers[IGNORED_HEADER] = ",".join(ctx.annotations["ignored_params"])


def _served(ctx: RequestContext, generation: Generation) -> None:
    """What the backend that served ignores of the request (its kind's policy, gateway/backends/params.py)."""
    backend = answered_by(ctx, generation)
    if backend is not None:
        slot = ctx.body.get(NATIVE)
        if slot is not None and slot["kind"] != backend.kind:  # the caller's own-API fields, unsent
            _note_ignored(ctx, slot["names"])
        _note_ignored(ctx, backend.ignored_params(ctx.body))


async def _conversation(
    request: web.Request, gateway: Gateway, generation: Generation, ctx: RequestContext, dialect: Endpoint
) -> web.StreamResponse:
    """The conversational pipeline: the chat form, plugins that may answer, the variant, the backend chain."""
    ctx.inbound = ctx.body
    ctx.body, ignored = await dialect.to_chat(ctx, gateway)
    _note_ignored(ctx, ignored)
    # the caller's own body, parsed as strict JSON, holds nothing unencodable: no walk to look for it
    encodable = ctx.body is ctx.inbound and request.get(STRICT_JSON, False)
    validate_chat_request(ctx.body, gateway.config.server.max_messages, encodable=encodable)
    await gateway.hooks.call("authorize", ctx=ctx)
    await gateway.hooks.call("guard_request", ctx=ctx)
    plugin, answered = answer(await gateway.hooks.call("before_route", ctx=ctx))
    if answered is not None:
        ctx.served_by = ctx.served_by or plugin
        return await _replay(request, ctx, answered, dialect)
    _, variant = answer(await gateway.hooks.call("choose_variant", ctx=ctx))
    if variant is not None and variant not in generation.backends:
        log.warning("choose_variant named unknown backend %r for route %s; using the baseline", variant, ctx.route_name)
        variant = None
    ctx.variant = variant or ctx.route.baseline
    if ctx.stream:
        return await _stream_answer(request, ctx, generation, dialect)
    ctx.response = await call_chain(ctx, generation, _completer(gateway.hooks.tracer, ctx))
    _served(ctx, generation)
    if (filters := await answer_filters(gateway, ctx)) is not None:
        ctx.response = filters.completion(ctx.response)
    await dialect.answered(ctx, gateway)
    return await write_json(request, ctx, dialect.answer(ctx.response, ctx))


async def _guarded(
    exchange: Exchange,
    request: web.Request,
    gateway: Gateway,
    generation: Generation,
    ctx: RequestContext,
    dialect: Endpoint,
) -> web.StreamResponse:
    """Run an exchange; a failure becomes an answer in the caller's dialect, recorded on `ctx`."""
    try:
        return await exchange(request, gateway, generation, ctx, dialect)
    except GatewayError as err:
        err.message = gateway.scrub(err.message)
        ctx.error, ctx.status = err, err.status
        return await write_json(request, ctx, dialect.error_body(err), status=err.status)
    except (ConnectionResetError, asyncio.CancelledError):
        ctx.status = 499  # the caller went away
        raise
    except Exception:
        log.exception("request %s failed inside the gateway", ctx.request_id)
        err = GatewayError(f"the gateway failed to handle this request (request id {ctx.request_id})")
        ctx.error, ctx.status = err, err.status
        return await write_json(request, ctx, dialect.error_body(err), status=err.status)
