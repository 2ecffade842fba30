"""metrics: Prometheus figures of the gateway's traffic at GET /metrics.

Per-request figures are counted in `after_response` from what the request context already holds
(route, variant, backend, status, error type, latency, time to first token, overhead, tokens,
cost, attempts, the cache's verdict): a few counter increments, no I/O. Figures other plugins
hold (queue depths, drops) are read at scrape time through the `collect_metrics` hook, plugin
faults from the hook runner, in-flight requests from the proxy. Each gateway has its own
registry, so several gateways in one process keep their counts apart.

Labels are bounded: route, variant, backend (names from the config), status class, error type,
plugin, and on the spend series the caller's team (the config's teams and the key store's, at most
MAX_TEAMS): never a user, key or request id. The endpoint is open on the daemon's port by
default (scrapers usually sit behind a network boundary); `token` makes it ask for
`Authorization: Bearer <token>`, `admin: true` for the admin token.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import Unauthorized
from gateway.hookspecs import hookimpl
from gateway.node import SNAPSHOT_SECONDS, WorkerSnapshots
from gateway.proxy import IN_FLIGHT

log = logging.getLogger("llmgate.metrics")
disable_created_metrics()  # no `_created` series beside every counter: half the exposition, no use to alerts

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
CACHE_RESULTS = frozenset({"hit-exact", "hit-semantic", "miss", "bypass"})
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
MAX_LABEL = 100  # route and backend names are the config's; a longer one is cut, never trusted whole
MAX_TEAMS = 1000  # teams come from the config and the key store; past this many, a tenant counts as "other"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field("/metrics", description="where the exposition is served")
    token: str | None = Field(None, description="bearer token a scraper must send; unset: open")
    admin: bool = Field(False, description="require the admin token instead")


def _label(value: Any) -> str:
    return "" if value is None else str(value)[:MAX_LABEL]


REFUSED = frozenset({401, 403})  # a caller without a valid key, or without the right to the route


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class Metrics:
    Settings = Settings

    def __init__(self, settings: Settings):
        self.settings = settings
        self._workers: WorkerSnapshots | None = None  # set in a worker of several (server.workers)
        self._snapshotting: asyncio.Task | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        by_request = ("route", "variant", "backend")
        r = self.registry
        self.requests = Counter(
            "llmgate_requests", "Chat requests answered, by status class.", (*by_request, "status_class"), registry=r
        )
        self.errors = Counter(
            "llmgate_request_errors",
            "Chat requests that failed, by OpenAI error type.",
            (*by_request, "type"),
            registry=r,
        )
        self.duration = Histogram(
            "llmgate_request_duration_seconds",
            "Time from request to last byte.",
            by_request,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "llmgate_time_to_first_token_seconds",
            "Streams: time to the first token.",
            by_request,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "llmgate_overhead_seconds",
            "Time spent in the gateway itself before the answer started (x-llmgate-overhead-ms).",
            ("route",),
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "llmgate_tokens", "Tokens used, by kind (prompt, completion).", (*by_request, "kind"), registry=r
        )
        self.cost = Counter(
            "llmgate_cost_usd", "Spend in US dollars, priced by the config's prices.", by_request, registry=r
        )
        self.spend = Counter(
            "llmgate_spend_usd",
            "Spend in US dollars per team (the caller key's) and route.",
            ("team", "route"),
            registry=r,
        )
        self.team_tokens = Counter(
            "llmgate_team_tokens",
            "Tokens used per team and route, by kind (prompt, completion).",
            ("team", "route", "kind"),
            registry=r,
        )
        self.attempts = Counter(
            "llmgate_upstream_attempts",
            "Backend attempts (retries and fallbacks included).",
            ("route", "backend", "status_class"),
            registry=r,
        )
        self.cache = Counter(
            "llmgate_cache_lookups",
            "Cache verdicts: hit-exact, hit-semantic, miss, bypass.",
            ("route", "result"),
            registry=r,
        )
        self.answered_by_plugin = Counter(
            "llmgate_plugin_answers", "Requests a plugin answered (a cache hit).", ("route", "plugin"), registry=r
        )
        self.scores = Histogram(
            "llmgate_quality_score",
            "Quality scores reported (judge win rate, feedback), 0..1.",
            ("route", "variant", "name"),
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.refused = Counter(
            "llmgate_requests_refused",
            "Requests refused for their credentials (401) or their permissions (403), by the error's code.",
            ("reason",),
            registry=r,
        )
        self.rollout_events = Counter(
            "llmgate_rollout_events",
            "Rollout changes made on this replica, by kind (rollback, promote, rollout, kill, ...).",
            ("route", "kind"),
            registry=r,
        )
        self._by_request: dict[tuple[str, str, str], _Children] = {}  # bounded: names come from the config
        self._by_team: dict[tuple[str, str], _Children] = {}  # bounded: MAX_TEAMS teams, the config's routes
        self._teams: set[str] = set()
        self._scrape = _ScrapeTime()
        r.register(self._scrape)
        self._gateway = None

    # --- counting (the request path: increments only) ------------------------------------------

    def _children(self, route: str, variant: str, backend: str) -> "_Children":
        """The per-request series of one (route, variant, backend): looked up once, not seven times a request."""
        key = (route, variant, backend)
        found = self._by_request.get(key)
        if found is None:
            found = self._by_request[key] = _Children(self, key)
        return found

    @hookimpl
    def after_response(self, ctx):
        route = _label(ctx.route_name)
        # who answered; for a failure, the last backend tried
        backend = _label(ctx.served_by or (ctx.attempts[-1].backend if ctx.attempts else None))
        series = self._children(route, _label(ctx.variant), backend)
        series.of(self.requests, status_class(ctx.status)).inc()
        if ctx.error is not None:
            series.of(self.errors, _label(ctx.error.type)).inc()
            if ctx.status in REFUSED:
                self.refused.labels(_label(ctx.error.code or ctx.error.type)).inc()
        if ctx.latency_ms is not None:
            series.duration.observe(ctx.latency_ms / 1000)
        if ctx.ttft_ms is not None:
            series.ttft.observe(ctx.ttft_ms / 1000)
        if ctx.overhead_ms is not None:
            series.overhead.observe(ctx.overhead_ms / 1000)
        team = self._team_series(ctx.tenant, route)
        usage = ctx.usage
        for kind, key in (("prompt", "prompt_tokens"), ("completion", "completion_tokens")):
            if isinstance(usage.get(key), int) and usage[key] > 0:
                series.of(self.tokens, kind).inc(usage[key])
                team.of(self.team_tokens, kind).inc(usage[key])
        if ctx.cost_usd:
            series.cost.inc(ctx.cost_usd)
            team.of(self.spend).inc(ctx.cost_usd)
        for attempt in ctx.attempts:
            self.attempts.labels(route, _label(attempt.backend), status_class(attempt.status)).inc()
        cache = ctx.annotations.get("cache")
        if isinstance(cache, dict) and cache.get("result") is not None:
            result = cache["result"]
            self.cache.labels(route, result if result in CACHE_RESULTS else "other").inc()
        if ctx.served_by and not ctx.attempts and ctx.error is None:
            self.answered_by_plugin.labels(route, backend).inc()

    def _team_series(self, tenant: str | None, route: str) -> "_Children":
        """The spend series of the caller's team on `route` (no team: ""; past MAX_TEAMS teams: "other")."""
        team = _label(tenant)
        if team and team not in self._teams:
            if len(self._teams) < MAX_TEAMS:
                self._teams.add(team)
            else:
                team = "other"
        found = self._by_team.get((team, route))
        if found is None:
            found = self._by_team[(team, route)] = _Children(self, (team, route), per_request=False)
        return found

    @hookimpl
    def record_score(self, route, variant, name, value):
        if isinstance(value, (int, float)):
            self.scores.labels(_label(route), _label(variant), _label(name)).observe(value)

    @hookimpl
    def rollout_changed(self, event):
        self.rollout_events.labels(_label(event.get("route")), _label(event.get("kind"))).inc()

    # --- the endpoint ---------------------------------------------------------------------------

    @hookimpl
    def startup(self, gateway):
        self._gateway = gateway
        self._workers = WorkerSnapshots.from_env()
        if self._workers is not None:
            self._snapshotting = asyncio.create_task(self._snapshot_forever(), name="metrics snapshot")

    @hookimpl
    def shutdown(self, gateway):
        if self._snapshotting is not None:
            self._snapshotting.cancel()

    @hookimpl
    def register_routes(self, gateway):
        self._gateway = gateway
        return [web.get(self.settings.path, self.endpoint)]

    def _authorise(self, request: web.Request) -> None:
        if self.settings.admin:
            self._gateway.require_admin(request)
        elif self.settings.token:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), self.settings.token.encode()):
                raise Unauthorized(
                    "GET /metrics needs the metrics token (Authorization: Bearer <token>)", code="invalid_metrics_token"
                )

    async def endpoint(self, request: web.Request) -> web.Response:
        self._authorise(request)
        body = await self._exposition(dict(request.app.get(IN_FLIGHT) or {}))
        if self._workers is not None:  # one of several workers: the node's figures, every worker's added up
            body = await asyncio.to_thread(self._workers.merged, body)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _exposition(self, in_flight: dict[str, int]) -> bytes:
        gateway = self._gateway
        figures = [
            f for found in (await gateway.hooks.call("collect_metrics", gateway=gateway)).values() for f in found
        ]
        if gateway.connections is not None:
            figures += gateway.connections.figures()
        self._scrape.load(figures, dict(gateway.hooks.faults), in_flight)
        return generate_latest(self.registry)  # no await since `load`: a concurrent scrape cannot interleave

    async def _snapshot_forever(self) -> None:
        """This worker's figures where the others' scrapes read them (the scrape-time ones included)."""
        while True:
            await asyncio.sleep(SNAPSHOT_SECONDS)
            try:
                body = await self._exposition(dict(self._gateway.in_flight))
                await asyncio.to_thread(self._workers.write, body)
            except Exception as exc:
                log.warning("metrics: this worker's figures not written for the others: %s", exc)


class _Children:
    """The series one (route, variant, backend), or one (team, route), counts into, resolved once: `labels()`
    hashes and locks each time."""

    def __init__(self, metrics: Metrics, key: tuple[str, ...], per_request: bool = True):
        """`per_request`: the (route, variant, backend) series, resolved at once; else only through `of`."""
        self.key = key
        if per_request:
            self.duration, self.ttft, self.cost = (
                m.labels(*key) for m in (metrics.duration, metrics.ttft, metrics.cost)
            )
            self.overhead = metrics.overhead.labels(key[0])
        self._found: dict[tuple, Any] = {}

    def of(self, metric, *extra: str):
        """`metric`'s series for this key and the `extra` label values (a status class, a token kind)."""
        found = self._found.get((metric, extra))
        if found is None:
            found = self._found[(metric, extra)] = metric.labels(*self.key, *extra)
        return found


class _ScrapeTime:
    """The figures read at scrape time, exposed as metric families for the one generate_latest that follows."""

    def __init__(self):
        self._families: list = []

    def load(self, figures: list, faults: dict[str, int], in_flight: dict[str, int]) -> None:
        families: dict[str, Any] = {}
        flight = GaugeMetricFamily("llmgate_requests_in_flight", "Chat requests being served now.", labels=["route"])
        for route, count in sorted(in_flight.items()):
            flight.add_metric([_label(route)], count)
        errors = CounterMetricFamily(
            "llmgate_plugin_errors", "Plugin hook calls that raised or timed out.", labels=["plugin"]
        )
        for plugin, count in sorted(faults.items()):
            errors.add_metric([_label(plugin)], count)
        families[flight.name], families[errors.name] = flight, errors
        for figure in figures:
            try:
                name, documentation, labels, value = figure
                if not NAME.fullmatch(name) or not all(NAME.fullmatch(str(k)) for k in labels or {}):
                    raise ValueError("not a Prometheus metric or label name")
                labels = {str(k): _label(v) for k, v in (labels or {}).items()}
                counter = name.endswith("_total")
                key = name[: -len("_total")] if counter else name
                family = families.get(key)
                if family is None:
                    kind = CounterMetricFamily if counter else GaugeMetricFamily
                    family = families[key] = kind(key, documentation, labels=sorted(labels))
                family.add_metric([labels[k] for k in sorted(labels)], float(value))
            except (TypeError, ValueError, KeyError) as exc:
                log.warning("metric figure %r left out: %s", figure, exc)
        self._families = list(families.values())

    def collect(self):
        return self._families
