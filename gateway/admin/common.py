"""What every admin action needs: who is acting, the JSON body it was sent, and the audit trail.

A module of its own so that the admin routes (this package's __init__), the model registry
(registry.py) and the plugins' own admin actions import it without importing one another.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from ..bodies import check_encodable
from ..errors import InvalidRequest, UnsupportedMediaType

ACTOR_HEADER = "X-LLMgate-Actor"


def actor(request: web.Request) -> str:
    """Who made a change: what the caller says (the CLI sends user@host), and from where."""
    who = request.headers.get(ACTOR_HEADER, "").strip()[:100] or "admin"
    return f"{who} ({request.remote})"


async def read_body(request: web.Request) -> dict[str, Any]:
    """The JSON object an admin action (or /v1/feedback) was sent; the caller's mistakes as 400/415."""
    if not request.can_read_body:
        return {}
    if (
        request.headers.get("Content-Type") is not None
        and request.content_type != "application/json"
        and not request.content_type.endswith("+json")
    ):
        raise UnsupportedMediaType(
            f"the body must be JSON sent as application/json, not {request.content_type!r}",
            code="unsupported_media_type",
        )
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply to parse
        raise InvalidRequest("the body must be a JSON object", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object", code="invalid_json")
    check_encodable(body)
    return body


async def audit(
    gateway,
    kind: str,
    route: str | None,
    who: str,
    *,
    before: Any = None,
    after: Any = None,
    reason: str | None = None,
    **details: Any,
) -> dict[str, Any]:
    """Record an operator's (or a rule's) change: who, what, before, after, why."""
    event = {
        "kind": kind,
        "route": route,
        "actor": who,
        "before": before,
        "after": after,
        "reason": reason,
        "ts": time.time(),
        **details,
    }
    return await gateway.store.append_event(event)
