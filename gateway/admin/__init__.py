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
from ..errors import InvalidRequest, PermissionDenied, Unauthorized
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
        """POST /admin/erase {"user": ID, "team": T}: every stored row of one end user, across the plugins'
        stores (`user_requests`, then `erase_user`); audited with a hash of the id, never the id itself.
        A team's key erases that team's user only; the admin token any team's (`team`), or every team's."""
        gateway = request.app[gateway_key]
        caller_team = await _team_or_admin(gateway, request)  # before the body is read
        body = await read_body(request)
        user, team = body.get("user"), body.get("team")
        if not isinstance(user, str) or not user.strip() or len(user) > 1000:
            raise InvalidRequest("'user' must be the end user's id, as requests send it in 'user'", param="user")
        if team is not None and (not isinstance(team, str) or not team):
            raise InvalidRequest("'team' must be a team's name", param="team")
        if caller_team is not None:
            if team not in (None, caller_team):
                raise PermissionDenied(
                    f"your key's team '{caller_team}' may erase its own users only, not team '{team}'s",
                    param="team",
                    code="team_not_allowed",
                )
            team = caller_team
        request_ids: set[str] = set()
        for found in (await gateway.hooks.call("user_requests", user=user, team=team)).values():
            request_ids.update(found)
        removed: dict[str, int] = {}
        erased = await gateway.hooks.call("erase_user", user=user, request_ids=sorted(request_ids), team=team)
        for counts in erased.values():
            removed.update(counts)
        user_hash = stable_hash("erase", user)[:16]
        who = actor(request) if caller_team is None else f"team:{caller_team}"
        await audit(
            gateway, "erase_user", None, who, after=removed, reason=body.get("reason"), user_hash=user_hash, team=team
        )
        return web.json_response(
            {"user_hash": user_hash, "team": team, "exchanges": len(request_ids), "removed": removed}
        )

    # run-time model registration: /admin/models
    return [
        web.get("/admin/status", status),
        web.get("/admin/events", events),
        web.post("/admin/erase", erase),
        *registry.routes(gateway_key),
    ]


async def _team_or_admin(gateway, request: web.Request) -> str | None:
    """None for the admin token (any team); else the team of the caller's key, or a 401."""
    try:
        gateway.require_admin(request)
        return None
    except Unauthorized as refused:
        team = await gateway.authenticate(request)
        if team is None:  # no plugin names teams: only the operator may do it
            raise refused from None
        return team
