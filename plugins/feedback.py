"""feedback: users rate answers by request id, and the rating counts for the variant that answered.

POST /v1/feedback takes `{"request_id", "rating": "helpful" | "not_helpful" | 1-5, "comment"?}`
from any caller of the API (the id in `x-request-id` is the caller's handle on an answer). The
rating is normalised to 0..1 (helpful 1, not_helpful 0, r -> (r-1)/4) and reported as the
variant's `feedback` score through `record_score`, so auto-rollback can hold a floor on it, and as
its `complaint` score (1 for a rating below 0.5, else 0), which auto-rollback's complaints rule
compares with the baseline's.

Which route and variant answered: a bounded in-memory map of recent request ids, filled in
`after_response` (a dict insert, nothing more), then the traffic log for older ones (read on a
thread). Each rating is stored in its own SQLite file (`path`) before it is acknowledged; one
rating per request id (a second is refused), so repeated posts cannot stuff the score.

With a plugin that answers `authenticate` (api_keys), a rating needs the caller's credentials and
only the caller's own tenant's requests can be rated: another tenant's request id answers the same
404 as an unknown one, so ids neither leak nor collect foreign ratings.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from evaluators.stats import wilson_interval
from gateway.admin import read_body
from gateway.errors import GatewayError, InvalidRequest, NotFound
from gateway.gateway import GATEWAY
from gateway.hookspecs import hookimpl
from gateway.storage.retention import Retention
from gateway.storage.sqlite import SqliteThread, delete_requests
from plugins.traffic_log.plugin import TrafficLog, read_records

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, request_id TEXT NOT NULL UNIQUE,
    route TEXT NOT NULL, variant TEXT NOT NULL, rating TEXT NOT NULL, score REAL NOT NULL, comment TEXT);
CREATE INDEX IF NOT EXISTS feedback_route_ts ON feedback (route, ts);
"""
COLUMNS = ("ts", "request_id", "route", "variant", "rating", "score", "comment")
_INSERT = f"INSERT INTO feedback ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
WORDS = {"helpful": 1.0, "not_helpful": 0.0}


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = "var/feedback.db"
    remember: int | None = Field(
        None,
        ge=1,
        description="recent request ids kept in memory to attribute ratings; "
        "unset: 10,000 with a traffic log (older ids are looked up there), else 100,000",
    )
    max_comment_chars: int = Field(2000, ge=0)
    retention_days: float | None = Field(
        365, gt=0, description="ratings older than this are deleted (hourly); null keeps them for ever"
    )


REMEMBER_WITH_LOG = 10_000  # the traffic log answers for older ids: memory is only the fast path
REMEMBER_WITHOUT_LOG = 100_000  # memory is the only record: keep more
SHARED_SERVED_LIMIT = 10_000  # distinct (route, variant, tenant) answers shared between entries


class Served(NamedTuple):
    """What answered a request: its route, the variant (backend or plugin) and the caller's tenant."""

    route: str
    variant: str
    tenant: str | None


class AlreadyRated(GatewayError):
    status, type = 409, "invalid_request_error"
    retry = False  # the same request conflicts again


def normalise(rating: Any) -> float:
    """helpful 1, not_helpful 0, a whole 1-5 rating r as (r-1)/4; anything else is the caller's mistake."""
    if isinstance(rating, str) and rating in WORDS:
        return WORDS[rating]
    if isinstance(rating, (int, float)) and not isinstance(rating, bool) and rating in (1, 2, 3, 4, 5):
        return (rating - 1) / 4
    raise InvalidRequest(
        f'\'rating\' must be "helpful", "not_helpful" or a whole number from 1 to 5, got {rating!r}',
        param="rating",
        code="invalid_rating",
    )


class Feedback:
    Settings = Settings

    def __init__(self, settings: Settings):
        self.settings = settings
        self._recent: OrderedDict[str, Served] = OrderedDict()  # request id -> what answered it
        self._counts: dict[tuple[str, str], list[float]] = {}  # (route, variant) -> [count, sum]
        self._db = SqliteThread(settings.path, SCHEMA)  # opened by the first rating
        self.retention = Retention(self._db, "feedback", settings.retention_days)
        self._traffic_log: str | None = None
        self._remember = settings.remember or REMEMBER_WITHOUT_LOG
        # one Served per distinct answer, shared by every entry: a tuple and a route string per request
        # (parsed anew from each body) would cost more than the request id itself
        self._shared: dict[Served, Served] = {}

    @hookimpl
    def startup(self, gateway):
        self.retention.start()
        traffic_log = gateway.plugin(TrafficLog)
        self._traffic_log = traffic_log.settings.path if traffic_log is not None else None
        self._remember = self.settings.remember or (REMEMBER_WITH_LOG if self._traffic_log else REMEMBER_WITHOUT_LOG)

    @hookimpl
    async def erase_user(self, user, request_ids):
        if not Path(self.settings.path).exists():
            return {"feedback": 0}
        return {"feedback": await self._db.run(lambda conn: delete_requests(conn, "feedback", request_ids))}

    @hookimpl
    async def shutdown(self, gateway):
        await self.retention.close()
        await self._db.close()

    @hookimpl
    def after_response(self, ctx):
        if ctx.served_by is None:  # nothing answered: nothing to rate
            return
        served = Served(ctx.route_name, ctx.served_by, ctx.tenant)
        shared = self._shared.get(served)
        if shared is None:
            if len(self._shared) >= SHARED_SERVED_LIMIT:  # many tenants: start over rather than grow
                self._shared.clear()
            shared = self._shared[served] = served
        self._recent[ctx.request_id] = shared
        while len(self._recent) > self._remember:
            self._recent.popitem(last=False)

    @hookimpl
    def register_routes(self, gateway):
        return [web.post("/v1/feedback", self._endpoint)]

    @hookimpl
    def admin_status(self, gateway):
        routes: dict[str, dict[str, dict]] = {}
        for (route, variant), (count, total) in sorted(self._counts.items()):
            interval = wilson_interval(total, int(count))  # ratings in [0, 1]: as a proportion of helpful
            routes.setdefault(route, {})[variant] = {
                "count": int(count),
                "mean": total / count,
                "interval": list(interval) if interval else None,
            }
        return {"feedback": {"routes": routes, "remembered": len(self._recent)}}

    async def _served(self, request_id: str, tenant: str | None) -> Served | None:
        """What answered the request, from memory, else from the traffic log; with a `tenant`, only
        that tenant's request of that id (another tenant's is as unknown as an id never seen)."""
        found = self._recent.get(request_id)
        if found is not None and (tenant is None or found.tenant == tenant):
            return found
        if self._traffic_log is None:
            return None
        where, params = "request_id = ? AND served_by IS NOT NULL", (request_id,)
        if tenant is not None:  # ids can be the caller's own x-request-id: two tenants may share one
            where, params = where + " AND tenant = ?", (request_id, tenant)

        def look_up() -> Served | None:
            try:
                records = list(read_records(self._traffic_log, where, params))
            except sqlite3.Error:  # no traffic log written yet
                return None
            return Served(records[-1]["route"], records[-1]["served_by"], records[-1]["tenant"]) if records else None

        return await asyncio.to_thread(look_up)

    async def _endpoint(self, request: web.Request) -> web.Response:
        gateway = request.app[GATEWAY]
        tenant = await gateway.authenticate(request)  # None: no tenancy
        body = await read_body(request)
        request_id = body.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise InvalidRequest("'request_id' is required: the x-request-id of the answer rated", param="request_id")
        score = normalise(body.get("rating"))
        comment = body.get("comment")
        if comment is not None and not isinstance(comment, str):
            raise InvalidRequest("'comment' must be a string", param="comment")
        if comment is not None and len(comment) > self.settings.max_comment_chars:
            raise InvalidRequest(
                f"'comment' is longer than {self.settings.max_comment_chars} characters", param="comment"
            )
        served = await self._served(request_id, tenant)
        if served is None:
            raise NotFound(
                f"no answered request with id '{request_id}' is known to this gateway",
                param="request_id",
                code="request_not_found",
            )
        route, variant = served.route, served.variant
        record = {
            "ts": time.time(),
            "request_id": request_id,
            "route": route,
            "variant": variant,
            "rating": body["rating"],
            "score": score,
            "comment": comment,
        }
        try:
            await self._db.run(lambda c: c.execute(_INSERT, tuple(record[k] for k in COLUMNS)))
        except sqlite3.IntegrityError:
            raise AlreadyRated(
                f"request '{request_id}' was already rated", param="request_id", code="already_rated"
            ) from None
        counts = self._counts.setdefault((route, variant), [0, 0.0])
        counts[0] += 1
        counts[1] += score
        await gateway.hooks.call("record_score", route=route, variant=variant, name="feedback", value=score)
        # a complaint (not_helpful, 1 or 2 of 5): auto-rollback's complaints rule compares their share
        await gateway.hooks.call(
            "record_score", route=route, variant=variant, name="complaint", value=1.0 if score < 0.5 else 0.0
        )
        return web.json_response(record)
