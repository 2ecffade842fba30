"""The admin API's core: who is acting, status from every plugin, and the audit trail.

Every admin endpoint needs the admin token. Plugins add their own actions under /admin/ with
`register_routes`, and record each change with `audit()`, so the event history is one list.
"""
from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from .errors import InvalidRequest

ACTOR_HEADER = "X-LLMgate-Actor"


def actor(request: web.Request) -> str:
    """Who made a change: what the caller says (the CLI sends user@host), and from where."""
    who = request.headers.get(ACTOR_HEADER, "").strip()[:100] or "admin"
    return f"{who} ({request.remote})"


async def read_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("the body must be a JSON object", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object", code="invalid_json")
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
            raise InvalidRequest("'limit' must be an integer", param="limit") from None
        match = {k: request.query[k] for k in ("route", "kind") if request.query.get(k)}
        return web.json_response({"events": await gateway.store.events(limit=limit, **match)})

    return [web.get("/admin/status", status), web.get("/admin/events", events)]
