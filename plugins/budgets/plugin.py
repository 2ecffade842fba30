"""budgets: money, not only tokens: daily and monthly USD budgets per team and per key, a gateway-wide
daily cost cap (the cost breaker), and alerts at shares of the forecast.

Before a request goes to a backend, `before_route` reserves its worst-case cost (its prompt, at
characters / 4, and every completion token it allows, priced at the dearest backend its route may
use: baseline, candidates, fallbacks) against every budget that applies, atomically across replicas
(counters.py); a request that would pass one is refused with a 429 `budget_exceeded` naming the
budget, what was spent and when it resets. After the answer the reservation is corrected to the
priced usage (cache writes and reads priced as such: `Config.cost`); a plugin's answer (a cache
hit) costs nothing. So concurrent requests can overshoot a budget only by what their estimates
missed (a prompt the characters / 4 rule undercounts), never by the requests in flight.

Alerts: when a budget's spend crosses a share of its forecast (`alerts`, 80%, 110% and 120% by
default, of `forecast_*_usd`, which defaults to the limit), an audited `budget_alert` event is
recorded and POSTed to `webhooks`, once per budget, share and period (claimed in the state store,
so two replicas never both send it).

The cost breaker: `gateway_daily_usd` caps the whole gateway's spend per UTC day; once spent every
request is refused (`cost_breaker_open`) until midnight UTC or until an operator closes it
(`llmgate budgets reset gateway`, which starts the day's count again and is audited).

With `state.redis_url` the counts live in Redis (every replica enforces the same totals); while
Redis does not answer, each replica counts alone. Backends without a price are not counted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.admin import actor, audit, read_body
from gateway.chat import estimate_tokens, max_tokens_of
from gateway.errors import InvalidRequest, RateLimited
from gateway.hookspecs import hookimpl
from gateway.node import node_workers
from gateway.state.redis import UNREACHABLE
from plugins.api_keys.plugin import ApiKeys
from plugins.usage.plugin import Usage

from .counters import Budget, LocalSpend, RedisSpend, SqliteSpend, micro, period_end, period_of

log = logging.getLogger("llmgate.budgets")
NAME = "budgets"
ADJECTIVE = {"day": "daily", "month": "monthly"}
FALLBACK_HEADER = "x-llmgate-budget-fallback"  # the route asked for, served by its cheaper one
UNIT = {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000}  # what compares two routes' prices


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    daily_usd: float | None = Field(None, gt=0, description="refused once a UTC day's spend would pass this")
    monthly_usd: float | None = Field(None, gt=0, description="refused once a UTC month's spend would pass this")
    forecast_daily_usd: float | None = Field(None, gt=0, description="what alerts measure a day against (the limit)")
    forecast_monthly_usd: float | None = Field(None, gt=0, description="what alerts measure a month against")

    @model_validator(mode="after")
    def _forecast_needs_a_period(self) -> "Limits":
        for period in ("daily", "monthly"):
            if getattr(self, f"forecast_{period}_usd") is not None and getattr(self, f"{period}_usd") is None:
                raise ValueError(f"forecast_{period}_usd needs {period}_usd: a forecast of a budget that is not set")
        return self


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    teams: dict[str, Limits] = Field({}, description="team -> its budgets (the api_keys plugin's teams)")
    gateway_daily_usd: float | None = Field(None, gt=0, description="the cost breaker: the whole gateway's daily cap")
    alerts: list[float] = Field([0.8, 1.1, 1.2], description="shares of the forecast that send an alert")
    webhooks: list[str] = Field([], description="URLs each alert is POSTed to (and the event history)")
    default_max_tokens: int = Field(1024, ge=1, description="completion tokens priced when a request sets none")
    fallback_routes: dict[str, str] = Field(
        {}, description="route -> a cheaper route its requests go to once a team's or key's budget is spent"
    )
    redis_timeout_ms: float = Field(250, gt=0, description="a Redis call slower than this counts Redis as down")

    @model_validator(mode="after")
    def _alerts_are_shares(self) -> "Settings":
        if any(not 0 < share <= 10 for share in self.alerts):
            raise ValueError("alerts are shares of the forecast, e.g. [0.8, 1.1, 1.2]")
        return self


def _budgets(scope: str, limits: dict[str, Any]) -> list[Budget]:
    """A scope's budgets from its limits (a team's `Limits` dumped, or a run-time key's record)."""
    out = []
    for period, name in ADJECTIVE.items():
        limit = limits.get(f"{name}_usd")
        if limit is not None:
            forecast = limits.get(f"forecast_{name}_usd")
            out.append(Budget(scope, period, float(limit), float(forecast or limit)))
    return out


def _dearest(config, route) -> float:
    """A route's dearest backend's price of a million prompt and a million completion tokens (0 unpriced)."""
    backends = config.settings.backends
    names = [name for backend in route.answering() for name in config.settings.deployments(backend)]
    costs = [config.cost(name, (backends.get(name) or {}).get("model"), UNIT) for name in names]
    return max([c for c in costs if c is not None] or [0.0])


class Budgets:
    Settings = Settings
    DEFAULT_ENABLED = False
    uses = ("api_keys", "usage")  # the team comes from the caller's key; usage seeds the counters kept here

    def __init__(self, settings: Settings):
        self.settings = settings
        self.local = LocalSpend()
        self.shared: RedisSpend | None = None
        self.gateway = None
        self.spent: dict[tuple[str, str], float] = {}  # (scope, period) -> last known USD, for /metrics
        self.refused = 0
        self.fallbacks = 0
        self._corrections: asyncio.Queue | None = None
        self._alerts: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []

    @hookimpl
    async def startup(self, gateway):
        self.gateway = gateway
        client = getattr(gateway.store, "client", None)
        if gateway.store.engine == "redis" and client is not None:
            self.shared = RedisSpend(client)
        elif gateway.store.engine == "sqlite" and node_workers() > 1:  # one counter for the node's workers
            self.local = SqliteSpend(gateway.store)
        else:
            await self._seed(gateway)
        self._corrections = asyncio.Queue(10_000)
        self._alerts = asyncio.Queue(1000)
        self._tasks = [
            asyncio.create_task(self._correct_forever(), name="budget corrections"),
            asyncio.create_task(self._alert_forever(), name="budget alerts"),
        ]

    async def _seed(self, gateway) -> None:
        """Counting in this process alone (no Redis, one worker), start from what today and this month
        already cost, as the usage plugin's durable aggregates say: a restart gives no budget back."""
        usage = gateway.plugin(Usage)
        if usage is None:
            return
        now = time.time()
        today = time.strftime("%Y-%m-%d", time.gmtime(now))
        try:
            for period, first in (("day", today), ("month", today[:8] + "01")):
                for scope, usd in (await usage.spent_by(first, today)).items():
                    self.local.counts[Budget(scope, period, 0, 0).key(now)] = micro(usd)
        except Exception as exc:  # the store is away: counted from zero, as without the usage plugin
            log.warning("budgets: spend so far not read from usage (%s): counting from zero", type(exc).__name__)

    @hookimpl
    async def shutdown(self, gateway):
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @hookimpl
    def config_problems(self, config):
        problems = []
        routes = config.settings.routes
        for route, cheaper in self.settings.fallback_routes.items():
            where = f"plugins.{NAME}.fallback_routes.{route}"
            if route not in routes or cheaper not in routes:
                missing = route if route not in routes else cheaper
                problems.append(f"{where}: {missing!r} is not a route (routes: {', '.join(routes)})")
            elif cheaper == route or cheaper in self.settings.fallback_routes:
                problems.append(f"{where}: a fallback is one step to another route that has none of its own")
            elif _dearest(config, routes[cheaper]) >= _dearest(config, routes[route]):
                problems.append(
                    f"{where}: {cheaper!r} is not cheaper than {route!r} (the dearest of their backends' prices: "
                    f"${_dearest(config, routes[cheaper]):g} against ${_dearest(config, routes[route]):g} "
                    "per million prompt and completion tokens)"
                )
        return problems

    # --- which budgets a request is under ---------------------------------------------------------

    def _gateway_cap(self) -> list[Budget]:
        cap = self.settings.gateway_daily_usd
        return [] if cap is None else [Budget("gateway", "day", cap, cap)]

    def budgets_for(self, ctx) -> list[Budget]:
        found = self._gateway_cap()
        if ctx.tenant and ctx.tenant in self.settings.teams:
            found += _budgets(f"team:{ctx.tenant}", self.settings.teams[ctx.tenant].model_dump())
        api_keys = self.gateway.plugin(ApiKeys)
        record = api_keys.key_record(ctx.api_key) if api_keys is not None else None
        if record is not None:
            found += _budgets(f"key:{record['id']}", record)
        return found

    def worst_case(self, ctx) -> float:
        """The most the request can cost: its prompt and every completion token it allows, at the dearest
        backend its route may use (0 when none has a price)."""
        total = estimate_tokens(ctx.body, self.settings.default_max_tokens)
        completion = (max_tokens_of(ctx.body) or self.settings.default_max_tokens) * (ctx.body.get("n") or 1)
        usage = {"prompt_tokens": total - completion, "completion_tokens": completion}
        generation = ctx.generation
        costs = [
            self.gateway.config.cost(
                name, generation.backends[name].model if name in generation.backends else None, usage
            )
            for backend in ctx.route.answering()
            for name in generation.config.settings.deployments(backend)
        ]
        return max([c for c in costs if c is not None] or [0.0])

    # --- the request path -------------------------------------------------------------------------

    async def _engine_call(self, method: str, *args):
        if self.shared is not None:
            try:
                async with asyncio.timeout(self.settings.redis_timeout_ms / 1000):
                    return await getattr(self.shared, method)(*args)
            except UNREACHABLE as exc:
                log.warning("budgets: Redis does not answer (%s): counting on this replica", type(exc).__name__)
        return await getattr(self.local, method)(*args)

    @hookimpl
    async def before_route(self, ctx):
        budgets = self.budgets_for(ctx)
        if not budgets:
            return None
        now = time.time()
        amount = micro(self.worst_case(ctx))
        refused, used = await self._engine_call("reserve", budgets, amount, now)
        cheaper = self.settings.fallback_routes.get(ctx.route_name)
        if refused is not None and refused.scope != "gateway" and cheaper is not None:
            spent, original = refused, ctx.route_name  # the cost breaker caps every route: it never falls back
            ctx.route_name, ctx.route = cheaper, ctx.generation.config.settings.routes[cheaper]
            amount = micro(self.worst_case(ctx))
            refused, used = await self._engine_call("reserve", budgets, amount, now)
            if refused is None:
                self.fallbacks += 1
                which = f"{spent.scope} {spent.period}"
                ctx.annotations[NAME] = {"fallback_from": original, "budget": which}
                ctx.response_headers[FALLBACK_HEADER] = f"{original}; {which} budget spent"
        if refused is not None:
            self.refused += 1
            raise self._refusal(refused, used, amount, now)
        ctx.state[NAME] = {"keys": [b.key(now) for b in budgets], "budgets": budgets, "reserved": amount, "at": now}
        return None

    def _refusal(self, budget: Budget, used: int, amount: int, now: float) -> RateLimited:
        resets = period_end(budget.period, now)
        wait = max(1, math.ceil(resets - now))
        when = period_of(budget.period, now)[2:]
        if budget.scope == "gateway":
            message = (
                f"the gateway's daily cost cap of ${budget.limit_usd:g} is spent (${used / 1e6:.4f} on {when} UTC): "
                f"the cost breaker is open until midnight UTC (in {wait} s) or until an operator closes it"
            )
            code = "cost_breaker_open"
        else:
            who = budget.scope.replace(":", " '", 1) + "'"
            message = (
                f"{who} has spent ${used / 1e6:.4f} of its ${budget.limit_usd:g} {ADJECTIVE[budget.period]} budget "
                f"({when} UTC); this request may cost up to ${amount / 1e6:.4f}: the budget resets in {wait} s"
            )
            code = "budget_exceeded"
        return RateLimited(message, code=code, headers={"Retry-After": str(wait)})

    @hookimpl
    def after_response(self, ctx):
        note = ctx.state.get(NAME)
        if not note or self._corrections is None:
            return
        answered = any(a.status == 200 for a in ctx.attempts)
        actual = micro(ctx.cost_usd or 0.0) if answered else 0
        try:
            self._corrections.put_nowait((note, actual - note["reserved"]))
        except asyncio.QueueFull:
            log.warning("budgets: correction queue full: a reservation stands uncorrected")

    async def _correct_forever(self) -> None:
        while True:
            note, delta = await self._corrections.get()
            try:
                values = await self._engine_call("adjust", note["keys"], delta)
            except Exception as exc:
                log.warning("budgets: a correction failed (%s)", type(exc).__name__)
                continue
            for budget, value in zip(note["budgets"], values):
                spent = value / 1e6
                self.spent[(budget.scope, budget.period)] = spent
                for share in self.settings.alerts:
                    if spent >= share * budget.forecast_usd:
                        self._queue_alert(budget, share, spent, note["at"])

    # --- alerts -------------------------------------------------------------------------------------

    def _queue_alert(self, budget: Budget, share: float, spent: float, at: float) -> None:
        try:
            self._alerts.put_nowait((budget, share, spent, at))
        except asyncio.QueueFull:
            pass

    async def _alert_forever(self) -> None:
        async with ClientSession(timeout=ClientTimeout(total=5)) as session:
            while True:
                budget, share, spent, at = await self._alerts.get()
                claim = f"budget_alert:{budget.scope}:{period_of(budget.period, at)}:{share:g}"
                try:
                    old, _ = await self.gateway.store.update(claim, lambda old: old or {"sent_at": time.time()})
                except Exception as exc:
                    log.warning("budgets: could not claim an alert (%s)", type(exc).__name__)
                    continue
                if old is not None:
                    continue  # sent already, by this replica or another
                event = await audit(
                    self.gateway,
                    "budget_alert",
                    None,
                    NAME,
                    reason=f"{budget.scope} has spent ${spent:.4f}, {spent / budget.forecast_usd:.0%} of its "
                    f"{ADJECTIVE[budget.period]} forecast ${budget.forecast_usd:g} (alert at {share:.0%})",
                    scope=budget.scope,
                    period=period_of(budget.period, at),
                    share=share,
                    spent_usd=round(spent, 6),
                    forecast_usd=budget.forecast_usd,
                    limit_usd=budget.limit_usd,
                )
                for url in self.settings.webhooks:
                    try:
                        async with session.post(url, json={"source": "llmgate", "event": event}):
                            pass
                    except Exception as exc:
                        log.warning("budgets: alert webhook failed (%s)", type(exc).__name__)

    # --- the operator surface -----------------------------------------------------------------------

    def _configured(self) -> list[Budget]:
        found = self._gateway_cap()
        for team, limits in self.settings.teams.items():
            found += _budgets(f"team:{team}", limits.model_dump())
        return found

    @hookimpl
    def register_routes(self, gateway):
        async def status(request: web.Request) -> web.Response:
            """GET /admin/budgets: each configured budget's spend this period."""
            gateway.require_admin(request)
            now = time.time()
            rows = []
            for budget in self._configured():
                used = await self._engine_call("used", budget.key(now))
                rows.append(
                    {
                        "scope": budget.scope,
                        "period": period_of(budget.period, now),
                        "spent_usd": used / 1e6,
                        "limit_usd": budget.limit_usd,
                        "forecast_usd": budget.forecast_usd,
                        "resets_at": period_end(budget.period, now),
                    }
                )
            return web.json_response({"budgets": rows})

        async def reset(request: web.Request) -> web.Response:
            """POST /admin/budgets/reset {"scope", "period"?}: start a period's count again (closes the breaker)."""
            gateway.require_admin(request)
            body = await read_body(request)
            scope, period = body.get("scope"), body.get("period", "day")
            matching = [b for b in self._configured() if b.scope == scope and b.period == period]
            if not matching:
                known = ", ".join(sorted({b.scope for b in self._configured()})) or "none"
                raise InvalidRequest(
                    f"no {ADJECTIVE.get(period, period)} budget for '{scope}' (budgets: {known})", param="scope"
                )
            now = time.time()
            key = matching[0].key(now)
            before = await self._engine_call("used", key)
            await self._engine_call("reset", key)
            await audit(
                gateway,
                "budget_reset",
                None,
                actor(request),
                before={"spent_usd": before / 1e6},
                after={"spent_usd": 0},
                reason=body.get("reason"),
                scope=scope,
                period=period_of(period, now),
            )
            return web.json_response({"scope": scope, "period": period_of(period, now), "was_usd": before / 1e6})

        return [web.get("/admin/budgets", status), web.post("/admin/budgets/reset", reset)]

    @hookimpl
    def admin_status(self, gateway):
        return {
            NAME: {
                "refused": self.refused,
                "fell_back": self.fallbacks,
                "spent_usd": {f"{scope}:{period}": round(v, 6) for (scope, period), v in self.spent.items()},
            }
        }

    @hookimpl
    def collect_metrics(self, gateway):
        return [
            ("llmgate_budget_spent_usd", "Spend this period, as last corrected.", {"scope": s, "period": p}, v)
            for (s, p), v in self.spent.items()
        ]
