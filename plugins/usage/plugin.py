"""usage: what each team, key, route and variant spent (USD) and used (tokens) per UTC day, for
`GET /v1/usage` and `llmgate usage`.

Counting never waits on the request path (store.py says where the aggregates live):

- with the traffic log on and the embedded state store, usage is counted from the log's own
  records: every `flush_seconds` a background task adds the rows logged since the last one counted
  to the state file, mark and aggregates in one transaction. Usage then agrees with the log and
  survives a crash as the log does: it loses what the log loses (the last batch; nothing with
  `durability: acknowledged`).
- otherwise (`state.redis_url`, shared by every replica; or no traffic log) `after_response` adds
  the exchange to an in-memory tally, which the background task writes every `flush_seconds`; a
  crash of the process loses at most that much.

A key is named by its id (`key_...`, made at run time) or by the start of its hash in the config
(`sha256:5152433a9b1c`), never by the key itself; `authorize` notes it on the exchange
(`annotations.usage.key`), where the log's record and the tally find it. A request refused before
`authorize` (a route outside the team's) counts for its team with no key.

`GET /v1/usage`: `date=YYYY-MM-DD`, or `from=...&to=...` (both included, at most `max_days`), today
without either; `group_by` any of team, key, route, variant, day; `team=T`. The admin token sees
every team; a team's key sees only its own (another `team` is a 403). With the quotas plugin on, a
team's answer keeps the figures it gave before this plugin (requests this minute, tokens today, the
limits). A bad parameter is a 400 naming it. The budgets plugin starts its in-process counters from
these aggregates (`spent_by`), so a restart without Redis does not give a team its budget again.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from datetime import datetime, timedelta, timezone

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.background import stop_tasks
from gateway.errors import PermissionDenied, StoreUnavailable, Unauthorized
from gateway.hookspecs import hookimpl
from gateway.state.redis import UNREACHABLE
from plugins.api_keys.plugin import ApiKeys, hash_key
from plugins.quotas import Quotas
from plugins.traffic_log.plugin import TrafficLog

from .report import grouped, parse
from .store import Key, RedisUsage, SqliteUsage, Tally

log = logging.getLogger("llmgate.usage")
NAME = "usage"  # also the annotation the traffic log's rows carry the key's name in (store._FROM_LOG)
HASH_SHOWN = len("sha256:") + 12  # a config key's name: the start of the hash the config holds


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flush_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="how often new usage is written; where it is counted from the requests (Redis, or no "
        "traffic log), a crash of the process loses at most this much",
    )
    max_days: int = Field(366, ge=1, le=3660, description="the longest range one query may ask for, in days")
    keep_days: int | None = Field(
        400, ge=1, description="days of aggregates kept; older days are deleted (null keeps them for ever)"
    )


def _today() -> datetime:
    return datetime.now(timezone.utc)


def measures(ctx) -> tuple:
    """What one exchange adds: a request, its tokens by kind (0 where the provider said nothing), its USD."""
    usage = ctx.usage
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    counts = (
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
        cached,
        usage.get("cache_creation_input_tokens"),
    )
    return (1, *(n if isinstance(n, int) else 0 for n in counts), float(ctx.cost_usd or 0.0))


class Usage:
    Settings = Settings
    DEFAULT_ENABLED = False
    uses = ("api_keys", "traffic_log", "quotas")  # the keys it names, the log it counts from, the quota figures

    def __init__(self, settings: Settings):
        self.settings = settings
        self.tally = Tally()
        self.store: SqliteUsage | RedisUsage | None = None
        self.log_path: str | None = None  # the traffic log counted from, when usage is
        self.problem: str | None = None
        self.behind = False  # the log holds rows not counted yet beyond one write's share (a first start)
        self.gateway = None
        self._api_keys: ApiKeys | None = None
        self._writing = asyncio.Lock()  # one write at a time: the background one, a query's
        self._task: asyncio.Task | None = None

    # --- lifetime -----------------------------------------------------------------------------

    @hookimpl
    async def startup(self, gateway):
        self.gateway = gateway
        self._api_keys = gateway.plugin(ApiKeys)
        client = getattr(gateway.store, "client", None)
        if gateway.store.engine == "redis" and client is not None:
            self.store = RedisUsage(client, self.settings.keep_days)
        else:
            self.store = SqliteUsage(gateway.store)
            traffic = gateway.plugin(TrafficLog)
            if traffic is not None and traffic.settings.path != ":memory:":
                self.log_path = traffic.settings.path
        await self._prune()
        await self.write()  # what the log holds and was not counted yet (a large first backlog: part of it)
        self._task = asyncio.create_task(self._write_forever(), name="usage writer")

    @hookimpl
    async def shutdown(self, gateway):
        await stop_tasks([self._task])
        try:  # bounded: the last second's usage is worth a moment, not a stuck shutdown
            await asyncio.wait_for(self.write(), 5)
        except TimeoutError:
            log.warning("usage: %d aggregates not written at shutdown", len(self.tally))

    @hookimpl
    def config_reloaded(self, gateway, config):
        self.settings = config.plugin_options(NAME, Settings)
        if isinstance(self.store, RedisUsage):
            self.store.keep_days = self.settings.keep_days

    async def _write_forever(self) -> None:
        day = _today().date()
        while True:
            await asyncio.sleep(self.settings.flush_seconds)
            await self.write()
            if _today().date() != day:
                day = _today().date()
                await self._prune()

    async def _prune(self) -> None:
        if self.settings.keep_days is None:
            return
        before = (_today() - timedelta(days=self.settings.keep_days)).date().isoformat()
        try:
            await self.store.prune(before)
        except Exception as exc:
            log.warning("usage: days before %s not deleted (%s)", before, type(exc).__name__)

    async def write(self) -> None:
        """Write what is new: the log's rows since the mark, or the tally (kept for the next try if that fails)."""
        async with self._writing:
            try:
                if self.log_path is not None:
                    self.behind = not await self.store.roll_up(self.log_path)
                elif self.tally:
                    counts = self.tally.take()
                    try:
                        await self.store.add(counts)
                    except BaseException:
                        self.tally.put_back(counts)
                        raise
            except Exception as exc:
                # the type only for Redis: its message could carry the URL's password
                why = f"{type(exc).__name__}: {exc}" if isinstance(exc, sqlite3.Error) else type(exc).__name__
                if self.problem is None:
                    log.warning("usage: not written (%s); trying again every %g s", why, self.settings.flush_seconds)
                self.problem = f"usage not written ({why}); {len(self.tally)} aggregates waiting"
            else:
                if self.problem is not None:
                    log.warning("usage: written again")
                self.problem = None

    # --- counting -----------------------------------------------------------------------------

    @hookimpl
    def authorize(self, ctx):
        """Name the caller's key on the exchange (never the key itself), for the log's record and the tally."""
        if ctx.tenant and ctx.api_key and self._api_keys is not None:
            digest = hash_key(ctx.api_key)
            runtime = self._api_keys.runtime
            record = runtime.find(digest)[0] if runtime is not None else None
            ctx.annotations[NAME] = {"key": record["id"] if record else digest[:HASH_SHOWN]}

    @hookimpl
    def after_response(self, ctx):
        if self.log_path is None and self.store is not None:  # else the log's record is counted
            self.tally.add(_aggregate(ctx), measures(ctx))

    # --- reading ------------------------------------------------------------------------------

    async def read(self, first: str, last: str, team: str | None) -> list[tuple]:
        """The aggregates from `first` to `last` (UTC days, both included), this process's newest written first."""
        await self.write()
        try:
            return await self.store.read(first, last, team)
        except (*UNREACHABLE, sqlite3.Error) as exc:
            raise StoreUnavailable(
                f"usage cannot be read now: the state store does not answer ({type(exc).__name__})"
            ) from None

    async def spent_by(self, first: str, last: str) -> dict[str, float]:
        """USD spent from `first` to `last` (UTC days, both included) by each team (`team:NAME`) and key
        (`key:ID`), as the budgets plugin names its scopes."""
        spent: dict[str, float] = {}
        for _, team, key, _, _, *figures in await self.read(first, last, None):
            for scope in (f"team:{team}" if team else None, f"key:{key}" if key else None):
                if scope is not None:
                    spent[scope] = spent.get(scope, 0.0) + figures[-1]
        return spent

    @hookimpl
    def register_routes(self, gateway):
        return [web.get("/v1/usage", self._endpoint)]  # the quotas plugin leaves it to this one

    async def _caller(self, request: web.Request) -> str | None:
        """The caller's team; None for the admin token, which sees every team."""
        try:
            self.gateway.require_admin(request)
            return None
        except Unauthorized:
            pass
        team = await self.gateway.authenticate(request)
        if team is None:  # no plugin names teams: only the operator may read usage
            raise Unauthorized("GET /v1/usage needs the admin token or a team's API key", code="invalid_api_key")
        return team

    async def _endpoint(self, request: web.Request) -> web.Response:
        team = await self._caller(request)
        today = _today().date()
        query = parse(request.query, today, self.settings.max_days)
        if team is not None and query.team not in (None, team):
            raise PermissionDenied(
                f"your key's team '{team}' may read its own usage only, not team '{query.team}'",
                param="team",
                code="team_not_allowed",
            )
        scope = team if team is not None else query.team
        body = {"object": "usage", "team": scope}
        quotas = self.gateway.plugin(Quotas)
        if team is not None and quotas is not None:
            body.update(await quotas.team_usage(team))  # the figures /v1/usage gave before: kept
        rows, total = grouped(await self.read(query.first.isoformat(), query.last.isoformat(), scope), query.group_by)
        if "key" in query.group_by and self._api_keys is not None and self._api_keys.runtime is not None:
            names = {record["id"]: record.get("name") for record in self._api_keys.runtime.listing()}
            for row in rows:
                row["key_name"] = names.get(row["key"])
        body.update(
            {
                "from": query.first.isoformat(),
                "to": query.last.isoformat(),
                "group_by": list(query.group_by),
                "rows": rows,
                "total": total,
            }
        )
        return web.json_response(body)

    # --- the operator surface -----------------------------------------------------------------

    @hookimpl
    def readiness(self, gateway):
        return {NAME: self.problem}

    @hookimpl
    def admin_status(self, gateway):
        return {
            NAME: {
                "store": self.store.engine if self.store is not None else None,
                "counted_from": "traffic_log" if self.log_path is not None else "requests",
                "waiting": len(self.tally),
                "catching_up": self.behind,
                "problem": self.problem,
            }
        }


def _aggregate(ctx) -> Key:
    note = ctx.annotations.get(NAME)
    key = note.get("key", "") if isinstance(note, dict) else ""
    day = time.strftime("%Y-%m-%d", time.gmtime(ctx.received_at))
    return day, ctx.tenant or "", key, ctx.route_name, ctx.variant or ctx.served_by or ""
