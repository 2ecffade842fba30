"""The aiohttp application: routes, the error middleware, and the gateway's lifetime."""

from __future__ import annotations

import logging
import re
import secrets
import time

from aiohttp import web

from . import admin, proxy, readiness, tracing
from .config import Config
from .context import CLIENT_REQUEST_ID, REQUEST_CONTEXT, REQUEST_ID, dumps_bytes
from .dialects import anthropic, embeddings, responses
from .dialects.base import DIALECT
from .dialects.chat_completions import ChatCompletions
from .errors import GatewayError, InvalidRequest
from .gateway import GATEWAY, Gateway, no_such_route
from .logs import current_request_id, log_access
from .plugins import answer
from .proxy import OVERHEAD_HEADER

log = logging.getLogger("llmgate")
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
RECEIVED = web.RequestKey("received", float)  # perf_counter() when the handler chain began
CLIENT_REQUEST_ID_HEADER = "x-client-request-id"  # the caller's own x-request-id, echoed for correlation


def new_request_id() -> str:
    """An exchange's id: 128 bits of the operating system's randomness, so no caller predicts (and takes) the
    next one. It is the exchange's key (feedback, lookups, erasure): a caller never chooses it."""
    return secrets.token_hex(16)


def _error_response(err: GatewayError, request: web.Request) -> web.Response:
    """An error answer in the shape of the dialect the endpoint speaks (OpenAI's elsewhere)."""
    headers = {"x-request-id": request[REQUEST_ID], **err.response_headers()}
    dialect = request.get(DIALECT)
    body = err.body() if dialect is None else dialect.error_body(err)
    return web.Response(body=dumps_bytes(body), status=err.status, content_type="application/json", headers=headers)


@web.middleware
async def errors_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Give every request an id (in its log lines too), an access line, and every failure the OpenAI error shape."""
    request[RECEIVED] = time.perf_counter()
    given = request.headers.get("x-request-id", "")
    request[REQUEST_ID] = new_request_id()
    if _SAFE_REQUEST_ID.fullmatch(given):  # kept beside the id, for the caller's correlation, never as the key
        request[CLIENT_REQUEST_ID] = given
    bound = current_request_id.set(request[REQUEST_ID])
    response = None
    try:
        response = await _handle(request, handler)
        return response
    finally:
        ctx = request.get(REQUEST_CONTEXT)
        latency = (
            ctx.latency_ms
            if ctx is not None and ctx.latency_ms is not None
            else (time.perf_counter() - request[RECEIVED]) * 1000
        )
        status = 499 if response is None or (ctx is not None and ctx.status == 499) else response.status
        log_access(request.method, request.path, status, latency, ctx)
        current_request_id.reset(bound)


def _require_utf8_headers(request: web.Request) -> None:
    """Refuse header values that are not UTF-8: read as text (a token, a user, an actor) they would be half-decoded."""
    for name, value in request.raw_headers:
        if not value.isascii():
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                header = name.decode("ascii", "replace")[:100]
                raise InvalidRequest(
                    f"the {header} header is not valid UTF-8", param=header, code="invalid_header"
                ) from None


async def _handle(request: web.Request, handler) -> web.StreamResponse:
    try:
        _require_utf8_headers(request)
        return await handler(request)
    except web.RequestPayloadError:  # a body cut short, or not encoded as Content-Encoding says
        error = InvalidRequest(
            "the request body could not be read: it does not match its framing or Content-Encoding headers",
            code="invalid_body",
        )
        return _error_response(error, request)
    except ConnectionResetError:
        if request.content.exception() is None:  # not the body: the caller left while being answered
            raise
        # the body broke off (the parser refused its framing and has answered, or the caller left): the caller's
        # doing, not a fault of the gateway's to log with a traceback
        error = InvalidRequest("the connection broke before the request body was complete", code="incomplete_body")
        return _error_response(error, request)
    except GatewayError as err:
        err.message = request.app[GATEWAY].scrub(err.message)
        return _error_response(err, request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        message = {
            404: f"no such endpoint: {request.method} {request.path}",
            405: f"method {request.method} is not allowed on {request.path}",
        }.get(exc.status, exc.reason)
        return _error_response(GatewayError(message, status=exc.status, type=kind), request)
    except Exception:
        log.exception("request %s %s %s failed inside the gateway", request[REQUEST_ID], request.method, request.path)
        error = GatewayError(f"the gateway failed to handle this request (request id {request[REQUEST_ID]})")
        return _error_response(error, request)


async def _stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    if REQUEST_ID in request and "x-request-id" not in response.headers:
        response.headers["x-request-id"] = request[REQUEST_ID]
    if CLIENT_REQUEST_ID in request and CLIENT_REQUEST_ID_HEADER not in response.headers:
        response.headers[CLIENT_REQUEST_ID_HEADER] = request[CLIENT_REQUEST_ID]
    if RECEIVED in request and OVERHEAD_HEADER not in response.headers:  # no upstream: all of it is the gateway's
        response.headers[OVERHEAD_HEADER] = f"{(time.perf_counter() - request[RECEIVED]) * 1000:.3f}"


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def list_models(request: web.Request) -> web.Response:
    """The routes the caller may use (every route unless a plugin, api_keys say, narrows them)."""
    routes, _ = await request.app[GATEWAY].visible_routes(request)
    return web.json_response({"object": "list", "data": [_model(name) for name in routes]})


async def get_model(request: web.Request) -> web.Response:
    """One route the caller may use; one hidden from the caller answers as if it did not exist."""
    name = request.match_info["model"]
    gateway = request.app[GATEWAY]
    routes, scoped = await gateway.visible_routes(request)
    if name not in routes:
        raise no_such_route(name, sorted(routes), scoped)
    return web.json_response(_model(name))


def _model(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "llmgate"}


def create_app(config: Config) -> web.Application:
    gateway = Gateway(config)
    gateway.hooks.tracer = answer(gateway.hooks.collect("register_tracer", gateway=gateway))[1]
    middlewares = [errors_middleware]
    if gateway.hooks.tracer is not None:  # outermost, so the span sees the final status
        middlewares.insert(0, tracing.server_middleware(gateway.hooks.tracer))
    app = web.Application(client_max_size=config.server.max_body_bytes, middlewares=middlewares)
    app[GATEWAY] = gateway
    app[proxy.IN_FLIGHT] = gateway.in_flight

    async def lifetime(app: web.Application):
        await gateway.start()
        yield
        await gateway.stop()

    app.cleanup_ctx.append(lifetime)
    readiness.install(app)  # after the gateway's start: it pings the store the gateway opened
    app.on_response_prepare.append(_stamp_request_id)
    app.router.add_post("/v1/chat/completions", proxy.endpoint(ChatCompletions()))
    app.router.add_post("/v1/messages", proxy.endpoint(anthropic.MESSAGES))
    app.router.add_post("/v1/messages/count_tokens", anthropic.count_tokens)
    app.router.add_post("/v1/responses", proxy.endpoint(responses.RESPONSES))
    app.router.add_post("/v1/embeddings", embeddings.embeddings)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readiness.readyz)
    app.router.add_routes(admin.routes(GATEWAY))
    for route_defs in gateway.hooks.collect("register_routes", gateway=gateway).values():
        app.router.add_routes(route_defs)
    return app
