"""The admin API's core: who is acting, status from every plugin, and the audit trail.

Every admin endpoint needs the admin token. Plugins add their own actions under /admin/ with
`register_routes`, and record each change with `audit()`, so the event history is one list.
"""
from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from .bodies import check_encodable
from .errors import InvalidRequest, UnsupportedMediaType

ACTOR_HEADER = "X-LLMgate-Actor"


def actor(request: web.Request) -> str:
    """Who made a change: what the caller says (the CLI sends user@host), and from where."""
    who = request.headers.get(ACTOR_HEADER, "").strip()[:100] or "admin"
    return f"{who} ({request.remote})"


async def read_body(request: web.Request) -> dict[str, Any]:
    """The JSON object an admin action (or /v1/feedback) was sent; the caller's mistakes as 400/415."""
    if not request.can_read_body:
        return {}
    if request.headers.get("Content-Type") is not None and request.content_type != "application/json" \
            and not request.content_type.endswith("+json"):
        raise UnsupportedMediaType(f"the body must be JSON sent as application/json, not {request.content_type!r}",
                                   code="unsupported_media_type")
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply to parse
        raise InvalidRequest("the body must be a JSON object", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object", code="invalid_json")
    check_encodable(body)
    return body


async def audit(gateway, kind: str, route: str | None, who: str, *, before: Any = None, after: Any = None,
                reason: str | None = None, **details: Any) -> dict[str, Any]:
    """Record an operator's (or a rule's) change: who, what, before, after, why."""
    event = {"kind": kind, "route": route, "actor": who, "before": before, "after": after, "reason": reason,
             "ts": time.time(), **details}
    return await gateway.store.append_event(event)


def routes(gateway_key) -> list[web.RouteDef]:
    async def status(request: web.Request) -> web.Response:
        gateway = request.app[gateway_key]
        gateway.require_admin(request)
        settings = gateway.config.settings
        body: dict[str, Any] = {
            "routes": {name: {"baseline": r.baseline, "candidates": r.candidates, "shadow": r.shadow,
                              "fallback": r.fallback} for name, r in settings.routes.items()},
            "state_store": {"engine": gateway.store.engine, "degraded": gateway.store.degraded},
            "breakers": {name: backend.breaker.snapshot() for name, backend in gateway.backends.items()},
        }
        for sections in (await gateway.hooks.each("admin_status", gateway=gateway)).values():
            body.update(sections)  # each plugin returns {section: data}, as the hookspec says
        return web.json_response(body, dumps=lambda v: json.dumps(v, default=str))

    async def events(request: web.Request) -> web.Response:
        gateway = request.app[gateway_key]
        gateway.require_admin(request)
        try:
            limit = min(int(request.query.get("limit", "50")), 1000)
        except ValueError:
            limit = 0
        if limit < 1:  # a negative LIMIT is no limit at all to the store
            raise InvalidRequest("'limit' must be a positive integer", param="limit")
        match = {k: request.query[k] for k in ("route", "kind") if request.query.get(k)}
        return web.json_response({"events": await gateway.store.events(limit=limit, **match)})

    from . import models_registry  # run-time model registration: /admin/models
    return [web.get("/admin/status", status), web.get("/admin/events", events), *models_registry.routes(gateway_key)]
