"""The aiohttp application: routes, the error middleware, and the gateway's lifetime."""
from __future__ import annotations

import logging
import re
import uuid

from aiohttp import web

from . import admin, proxy
from .config import Config
from .context import dumps
from .errors import GatewayError
from .gateway import GATEWAY, Gateway
from .proxy import REQUEST_ID

log = logging.getLogger("llmgate")
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def _error_response(err: GatewayError, request_id: str) -> web.Response:
    headers = {"x-request-id": request_id, **err.headers}
    return web.Response(body=dumps(err.body()).encode(), status=err.status, content_type="application/json",
                        headers=headers)


@web.middleware
async def errors_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Give every request an id, and every failure the OpenAI error shape."""
    given = request.headers.get("x-request-id", "")
    request[REQUEST_ID] = given if _SAFE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    try:
        return await handler(request)
    except GatewayError as err:
        err.message = request.app[GATEWAY].scrub(err.message)
        return _error_response(err, request[REQUEST_ID])
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        message = {404: f"no such endpoint: {request.method} {request.path}",
                   405: f"method {request.method} is not allowed on {request.path}"}.get(exc.status, exc.reason)
        return _error_response(GatewayError(message, status=exc.status, type=kind), request[REQUEST_ID])
    except Exception:
        log.exception("request %s %s %s failed inside the gateway", request[REQUEST_ID], request.method, request.path)
        error = GatewayError(f"the gateway failed to handle this request (request id {request[REQUEST_ID]})")
        return _error_response(error, request[REQUEST_ID])


async def _stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    if REQUEST_ID in request and "x-request-id" not in response.headers:
        response.headers["x-request-id"] = request[REQUEST_ID]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the config is loaded and the state store answers; lists what would fail a request."""
    gateway = request.app[GATEWAY]
    store_ok = await gateway.store.ping()
    degraded = {name: problem for checks in (await gateway.hooks.each("readiness", gateway=gateway)).values()
                for name, problem in checks.items() if problem}
    body = {
        "status": "ready" if store_ok else "not_ready",
        "config": gateway.config.source,
        "state_store": {"engine": gateway.store.engine, "reachable": store_ok},
        "missing_credentials": gateway.missing_credentials(),
        "degraded": degraded,
        "plugin_faults": dict(gateway.hooks.faults),
    }
    return web.json_response(body, status=200 if store_ok else 503)


async def list_models(request: web.Request) -> web.Response:
    routes = request.app[GATEWAY].config.settings.routes
    return web.json_response({"object": "list", "data": [_model(name) for name in routes]})


async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    request.app[GATEWAY].route(name)
    return web.json_response(_model(name))


def _model(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "llmgate"}


def create_app(config: Config) -> web.Application:
    gateway = Gateway(config)
    app = web.Application(client_max_size=config.server.max_body_bytes, middlewares=[errors_middleware])
    app[GATEWAY] = gateway

    async def lifetime(app: web.Application):
        await gateway.start()
        yield
        await gateway.stop()

    app.cleanup_ctx.append(lifetime)
    app.on_response_prepare.append(_stamp_request_id)
    app.router.add_post("/v1/chat/completions", proxy.chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_routes(admin.routes(GATEWAY))
    for route_defs in gateway.hooks.collect("register_routes", gateway=gateway).values():
        app.router.add_routes(route_defs)
    return app
