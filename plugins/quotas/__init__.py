"""quotas: per-team requests per minute and tokens per day, and GET /v1/usage.

The limits are the `requests_per_minute` and `tokens_per_day` of each team in the `api_keys`
plugin's config, which also tells this plugin who is calling (`ctx.tenant`). Before a request goes
to a backend, `before_route` checks both limits and reserves one request and an estimate of its
tokens (prompt characters / 4, plus `max_tokens`, or `default_max_tokens`, per choice) in one
atomic step; a team over a limit gets a 429 `rate_limit_error` with `Retry-After`. After the
answer, the reservation is corrected to the tokens the provider reported (nothing is charged when
no backend answered; the estimate stands when a backend answered without reporting usage). The
correction goes through a bounded queue, off the request path; when that queue is full the
correction is dropped and counted, which leaves the (larger or smaller) estimate in place.

With `state.redis_url` the counts live in Redis and every replica enforces the same totals (see
plugins.quotas.counters). If Redis stops answering, each replica falls back to counting alone,
allowing `1/replicas` of each limit (`replicas` defaults to 1: an outage never refuses traffic
that Redis would have admitted, at the price of admitting up to replicas x the limit while it
lasts; set it to the replica count to hold the totals instead). The loss and the recovery are each
logged once; a probe notices Redis again within `probe_interval` seconds, the tokens used during
the outage are added to the shared counts, and shared counting resumes. With the SQLite state
(one node) the counts are kept in memory and start again when the gateway restarts; a node of
several workers (`server.workers`) without Redis gives each worker 1/workers of each limit, so the
node never admits more than the limit in total (a team whose requests reach one worker more than
another is refused a little before it).

GET /v1/usage answers the caller's team with these counts; with the `usage` plugin on, that plugin
answers it instead (spend and tokens by day, key, route and variant) and keeps these counts in a
team's answer.

A request that the caller abandons mid-way keeps its reservation (it is never corrected).
It needs `api_keys` (the loader refuses a config without it). List `quotas` before `semantic_cache`
for cache hits to count as requests (they are charged no tokens).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.background import stop_tasks
from gateway.chat import estimate_tokens
from gateway.errors import InvalidRequest, RateLimited
from gateway.hookspecs import hookimpl
from gateway.node import node_workers
from gateway.state.redis import UNREACHABLE
from plugins.api_keys.plugin import ApiKeys

from .counters import (
    WINDOW_SECONDS,
    Decision,
    Limits,
    LocalCounters,
    RedisCounters,
    Usage,
    seconds_to_midnight,
)

log = logging.getLogger("llmgate.quotas")
NAME = "quotas"
# What an unreachable or hung Redis raises; anything else is a fault and is reported as one.


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    default_max_tokens: int = Field(
        1024, ge=1, description="completion tokens reserved when a request sets no max_tokens"
    )
    replicas: int = Field(1, ge=1, description="while Redis is unreachable, each replica allows limit / replicas")
    redis_timeout_ms: float = Field(250, gt=0, description="a Redis call slower than this counts as Redis being down")
    probe_interval: float = Field(1.0, gt=0, description="seconds between checks for Redis while it is down")
    queue_size: int = Field(10_000, ge=1, description="token corrections waiting to be applied")


def charged_tokens(ctx, reserved: int) -> int:
    """The tokens an exchange really used: the provider's count, the estimate if it gave none, 0 if none answered."""
    if not any(attempt.status == 200 for attempt in ctx.attempts):
        return 0  # refused, failed, or answered by a plugin (a cache hit): no provider tokens
    usage = ctx.usage
    if usage.get("total_tokens") is not None:
        return int(usage["total_tokens"])
    if usage.get("prompt_tokens") is not None or usage.get("completion_tokens") is not None:
        return int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
    return reserved


class Quotas:
    Settings = Settings
    DEFAULT_ENABLED = False  # on only where the config enables it
    requires = ("api_keys",)  # the limits are the teams', and the team comes from the caller's key

    def __init__(self, settings: Settings):
        self.settings = settings
        self.local = LocalCounters()
        self.shared: RedisCounters | None = None
        self.lost_since: float | None = None
        self.dropped = 0
        self._unsynced: dict[tuple[str, str], int] = {}  # tokens counted while Redis was down
        self._api_keys: ApiKeys | None = None
        self._gateway = None
        self._corrections: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._probe: asyncio.Task | None = None

    # --- lifetime -----------------------------------------------------------------------------

    @hookimpl
    def startup(self, gateway):
        self._api_keys = gateway.plugin(ApiKeys)
        self._gateway = gateway
        client = getattr(gateway.store, "client", None)
        if gateway.store.engine == "redis" and client is not None:
            self.shared = RedisCounters(client)
        self._corrections = asyncio.Queue(self.settings.queue_size)
        self._worker = asyncio.create_task(self._apply_corrections(), name="quota corrections")

    @hookimpl
    async def shutdown(self, gateway):
        if self._corrections is not None and self._worker is not None and not self._worker.done():
            try:  # bounded: corrections are worth a moment, not a stuck shutdown
                await asyncio.wait_for(self._corrections.join(), 5)
            except TimeoutError:
                log.warning("quotas: %d token corrections not applied at shutdown", self._corrections.qsize())
        await stop_tasks([self._worker, self._probe])

    @hookimpl
    def config_reloaded(self, gateway, config):
        self.settings = config.plugin_options(NAME, Settings)

    @hookimpl
    def register_routes(self, gateway):
        if gateway.enabled("usage"):  # it answers /v1/usage then, with these figures in a team's answer
            return []
        return [web.get("/v1/usage", self._usage_endpoint)]

    @hookimpl
    def readiness(self, gateway):
        problems = []
        if self.lost_since is not None:
            problems.append(
                f"redis unreachable since {time.strftime('%H:%M:%S', time.localtime(self.lost_since))}: "
                f"each replica enforces 1/{self.settings.replicas} of the team limits"
            )
        if self.dropped:
            problems.append(f"{self.dropped} token corrections dropped (queue full)")
        return {NAME: "; ".join(problems) or None}

    @hookimpl
    def admin_status(self, gateway):
        return {
            NAME: {
                "engine": self._engine(),
                "redis_lost_since": self.lost_since,
                "dropped_corrections": self.dropped,
                "pending_corrections": self._corrections.qsize() if self._corrections else 0,
                "unsynced_tokens": sum(self._unsynced.values()),
            }
        }

    # --- the request path ---------------------------------------------------------------------

    def _limits(self, team: str) -> Limits | None:
        settings = self._api_keys.teams.get(team) if self._api_keys is not None else None
        if settings is None:
            return None
        return Limits(settings.requests_per_minute, settings.tokens_per_day)

    def _key_limits(self, ctx) -> tuple[str, Limits] | None:
        """A run-time key's own limits, counted under `key:<id>` beside its team's."""
        record = self._api_keys.key_record(ctx.api_key) if self._api_keys is not None else None
        if record is None or (record.get("requests_per_minute") is None and record.get("tokens_per_day") is None):
            return None
        return f"key:{record['id']}", Limits(record.get("requests_per_minute"), record.get("tokens_per_day"))

    @hookimpl
    async def before_route(self, ctx):
        team = ctx.tenant
        scopes = [(team, limits)] if team and (limits := self._limits(team)) is not None else []
        if team and (key := self._key_limits(ctx)) is not None:
            scopes.insert(0, key)  # the key's first: a key at its limit leaves its team's count alone
        if not scopes:
            return None
        estimate = estimate_tokens(ctx.body, self.settings.default_max_tokens)
        notes = []
        for scope, limits in scopes:
            whose = "your key's" if scope.startswith("key:") else "your team's"
            if limits.tokens_per_day is not None and estimate > limits.tokens_per_day:
                raise InvalidRequest(
                    f"this request may use up to {estimate} tokens (prompt and max_tokens), more than "
                    f"{whose} {limits.tokens_per_day} tokens per day: lower max_tokens",
                    param="max_tokens",
                    code="request_exceeds_daily_tokens",
                )
            engine, limits, decision = await self._reserve(scope, limits, estimate)
            if not decision.admitted:
                raise self._refusal(scope, limits, decision)
            notes.append({"team": scope, "engine": engine, "day": decision.day, "reserved_tokens": estimate})
            ctx.response_headers.update(_rate_headers(limits, decision))
        ctx.state[NAME] = notes
        return None

    @hookimpl
    def after_response(self, ctx):
        for note in ctx.state.get(NAME) or ():
            charged = charged_tokens(ctx, note["reserved_tokens"])
            delta = charged - note["reserved_tokens"]
            if delta == 0 or self._corrections is None:
                continue
            try:
                self._corrections.put_nowait((note["team"], note["day"], delta, note["engine"]))
            except asyncio.QueueFull:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("quotas: correction queue full: %d token corrections dropped so far", self.dropped)

    def _refusal(self, team: str, limits: Limits, decision: Decision) -> RateLimited:
        who = f"key '{team[4:]}'" if team.startswith("key:") else f"team '{team}'"
        if decision.refused_by == "requests":
            wait = max(1, math.ceil(decision.requests_reset))
            message = (
                f"{who} has reached its limit of {limits.requests_per_minute} requests per minute: retry in {wait} s"
            )
            code = "requests_per_minute_exceeded"
        else:
            wait = max(1, math.ceil(seconds_to_midnight(time.time())))
            message = (
                f"{who} has used {decision.tokens} of its {limits.tokens_per_day} tokens for "
                f"{decision.day} (UTC): the count starts again at midnight UTC, in {wait} s"
            )
            code = "tokens_per_day_exceeded"
        return RateLimited(message, code=code, headers={"Retry-After": str(wait), **_rate_headers(limits, decision)})

    # --- counting: shared while Redis answers, per replica while it does not ------------------

    def _engine(self) -> str:
        return "redis" if self.shared is not None and self.lost_since is None else "local"

    async def _reserve(self, team: str, limits: Limits, estimate: int) -> tuple[str, Limits, Decision]:
        now, member = time.time(), uuid.uuid4().hex
        if self.shared is not None and self.lost_since is None:
            try:
                async with asyncio.timeout(self.settings.redis_timeout_ms / 1000):
                    return "redis", limits, await self.shared.reserve(team, limits, estimate, member, now)
            except UNREACHABLE as exc:
                self._lose_shared(exc)
        limits = self._local_share(limits)
        decision = self.local.reserve(team, limits, estimate, member, now)
        if self.shared is not None and decision.admitted:
            self._add_unsynced(team, decision.day, estimate)
        return "local", limits, decision

    async def _usage(self, team: str, limits: Limits) -> tuple[str, Limits, Usage]:
        now = time.time()
        if self.shared is not None and self.lost_since is None:
            try:
                async with asyncio.timeout(self.settings.redis_timeout_ms / 1000):
                    return "redis", limits, await self.shared.usage(team, now)
            except UNREACHABLE as exc:
                self._lose_shared(exc)
        limits = self._local_share(limits)
        return "local", limits, self.local.usage(team, now)

    def _local_share(self, limits: Limits) -> Limits:
        """What this process may admit counting alone: its share among the node's workers (they share no
        counter without Redis), and among the replicas while Redis is unreachable."""
        parts = node_workers() * (self.settings.replicas if self.shared is not None else 1)
        return limits.divided(parts) if parts > 1 else limits

    def _add_unsynced(self, team: str, day: str, delta: int) -> None:
        self._unsynced[(team, day)] = self._unsynced.get((team, day), 0) + delta

    def _lose_shared(self, exc: BaseException) -> None:
        if self.lost_since is not None:
            return
        self.lost_since = time.time()
        self.local.clear()
        # The exception's type only: a Redis URL in a message could carry a password.
        log.warning(
            "quotas: redis unreachable (%s): each replica now counts alone, allowing 1/%d of each team's "
            "limits, until redis answers again",
            type(exc).__name__,
            self.settings.replicas,
        )
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._wait_for_shared(), name="quota redis probe")

    async def _wait_for_shared(self) -> None:
        """Probe Redis until it answers; add the outage's tokens to the shared counts, then share again."""
        while True:
            await asyncio.sleep(self.settings.probe_interval)
            try:
                async with asyncio.timeout(self.settings.redis_timeout_ms / 1000):
                    await self.shared.ping()
                while self._unsynced:
                    pending, self._unsynced = self._unsynced, {}
                    try:
                        for (team, day), delta in list(pending.items()):
                            async with asyncio.timeout(self.settings.redis_timeout_ms / 1000):
                                await self.shared.adjust(team, day, delta)
                            del pending[(team, day)]
                    finally:
                        for (team, day), delta in pending.items():  # not sent: keep for the next try
                            self._add_unsynced(team, day, delta)
            except UNREACHABLE:
                continue
            self.lost_since = None
            self.local.clear()
            log.warning("quotas: redis answers again: team limits are counted across replicas again")
            return

    async def _apply_corrections(self) -> None:
        """Apply queued corrections, merged per team and day: one Redis call each, however many requests."""
        while True:
            batch = [await self._corrections.get()]
            while not self._corrections.empty() and len(batch) < 1000:
                batch.append(self._corrections.get_nowait())
            merged: dict[tuple[str, str, str], int] = {}
            for team, day, delta, engine in batch:
                merged[(team, day, engine)] = merged.get((team, day, engine), 0) + delta
            try:
                for (team, day, engine), delta in merged.items():
                    if delta:
                        await self._correct(team, day, delta, engine)
            except Exception:
                log.exception("quotas: a token correction failed")
            finally:
                for _ in batch:
                    self._corrections.task_done()

    async def _correct(self, team: str, day: str, delta: int, engine: str) -> None:
        if self.shared is None:
            self.local.adjust(team, day, delta)
            return
        if self.lost_since is not None:
            if engine == "local":
                self.local.adjust(team, day, delta)
            self._add_unsynced(team, day, delta)  # reaches Redis when it returns
            return
        try:  # a Redis reservation, or one made during an outage whose tokens were since sent to Redis
            async with asyncio.timeout(self.settings.redis_timeout_ms / 1000):
                await self.shared.adjust(team, day, delta)
        except UNREACHABLE as exc:
            self._lose_shared(exc)
            self._add_unsynced(team, day, delta)

    # --- GET /v1/usage ------------------------------------------------------------------------

    async def _usage_endpoint(self, request: web.Request) -> web.Response:
        """The caller's own team (the usage plugin's endpoint adds days, keys, routes and USD)."""
        team = await self._gateway.authenticate(request)
        return web.json_response(await self.team_usage(team))

    async def team_usage(self, team: str) -> dict:
        """A team's counts now: requests in the last minute, tokens today, the limits and when they reset."""
        limits = self._limits(team) or Limits(None, None)  # a run-time key's team the config lacks: no limits
        engine, limits, usage = await self._usage(team, limits)
        now = time.time()
        to_midnight = seconds_to_midnight(now)
        return {
            "object": "usage",
            "team": team,
            "engine": engine,
            "degraded": self.lost_since is not None,
            "requests": {
                "used": usage.requests,
                "limit": limits.requests_per_minute,
                "window_seconds": WINDOW_SECONDS,
                "resets_in_seconds": round(usage.requests_reset, 3),
                "resets_at": round(now + usage.requests_reset, 3) if usage.requests else None,
            },
            "tokens": {
                "used": usage.tokens,
                "limit": limits.tokens_per_day,
                "day": usage.day,
                "resets_in_seconds": round(to_midnight, 3),
                "resets_at": round(now + to_midnight, 3),
            },
        }


def _rate_headers(limits: Limits, decision: Decision) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for what the team has left."""
    headers = {}
    if limits.requests_per_minute is not None:
        headers["x-ratelimit-limit-requests"] = str(limits.requests_per_minute)
        headers["x-ratelimit-remaining-requests"] = str(max(0, limits.requests_per_minute - decision.requests))
    if limits.tokens_per_day is not None:
        headers["x-ratelimit-limit-tokens"] = str(limits.tokens_per_day)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, limits.tokens_per_day - decision.tokens))
    return headers
