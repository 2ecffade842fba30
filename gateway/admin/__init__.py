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
                name: {"baseline": r.baseline, "candidates": r.candidates, "shadow": r.shadow, "fallback": r.fallback}
                for name, r in settings.routes.items()
            },
            "state_store": {"engine": gateway.store.engine, "degraded": gateway.store.degraded},
            "breakers": {name: backend.breaker.snapshot() for name, backend in gateway.backends.items()},
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

    # run-time model registration: /admin/models
    return [web.get("/admin/status", status), web.get("/admin/events", events), *registry.routes(gateway_key)]
