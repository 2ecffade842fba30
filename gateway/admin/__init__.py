"""The admin API's core: status from every plugin and the event history (here), models registered at
run time (registry.py), and who is acting and the audit trail (common.py).

Every admin endpoint needs the admin token. Plugins add their own actions under /admin/ with
`register_routes`, and record each change with `audit()` (gateway.admin.audit), so the event
history is one list.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..context import stable_hash
from ..errors import InvalidRequest
from . import registry
from .common import ACTOR_HEADER, actor, audit, read_body  # noqa: F401 (plugins import them from here)


def routes(gateway_key) -> list[web.RouteDef]:
    async def status(request: web.Request) -> web.Response:
        gateway = request.app[gateway_key]
        gateway.require_admin(request)
        settings = gateway.config.settings
        body: dict[str, Any] = {
            "routes": {
                name: {
                    "baseline": r.baseline,
                    "candidates": r.candidates,
                    "shadow": r.shadow,
                    "fallback": r.fallback,
                    "context_fallback": r.context_fallback,
                }
                for name, r in settings.routes.items()
            },
            "state_store": {"engine": gateway.store.engine, "degraded": gateway.store.degraded},
            "breakers": {
                name: breaker.snapshot()
                for backend in gateway.backends.values()
                for name, breaker in backend.breakers().items()
            },
        }
        for sections in (await gateway.hooks.call("admin_status", gateway=gateway)).values():
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

    async def erase(request: web.Request) -> web.Response:
        """POST /admin/erase {"user": ID}: every stored row of one end user, across the plugins' stores
        (`user_requests`, then `erase_user`); audited with a hash of the id, never the id itself."""
        gateway = request.app[gateway_key]
        gateway.require_admin(request)
        body = await read_body(request)
        user = body.get("user")
        if not isinstance(user, str) or not user.strip() or len(user) > 1000:
            raise InvalidRequest("'user' must be the end user's id, as requests send it in 'user'", param="user")
        request_ids: set[str] = set()
        for found in (await gateway.hooks.call("user_requests", user=user)).values():
            request_ids.update(found)
        removed: dict[str, int] = {}
        for counts in (await gateway.hooks.call("erase_user", user=user, request_ids=sorted(request_ids))).values():
            removed.update(counts)
        user_hash = stable_hash("erase", user)[:16]
        await audit(
            gateway, "erase_user", None, actor(request), after=removed, reason=body.get("reason"), user_hash=user_hash
        )
        return web.json_response({"user_hash": user_hash, "exchanges": len(request_ids), "removed": removed})

    # run-time model registration: /admin/models
    return [
        web.get("/admin/status", status),
        web.get("/admin/events", events),
        web.post("/admin/erase", erase),
        *registry.routes(gateway_key),
    ]
