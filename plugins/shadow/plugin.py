"""shadow: mirror a route's requests to its `shadow` backends off the request path, and compare.

`after_response` only puts one job per shadow backend on a bounded queue (dropped and counted
when full). Each job starts its call as soon as it is queued, up to `max_concurrent` calls in
flight: concurrency follows the load (an LLM answering in 2 s at 50 requests a second needs about
100 calls at once), and the cap and the queue bound what shadow traffic may hold (one request body
per call or job), so a slow, failing or absent shadow never touches the caller's answer. What
share of each route's requests was really mirrored (against the sample rate) is counted, and
shown in the report, `/metrics` and the console. Each comparison (both answers, tokens,
latency, cost, errors) is written to SQLite in batches; GET /admin/shadow/report (and
`llmgate shadow report`) summarises those rows. Each recorded comparison is handed to the
`shadow_compared` hook, so an evaluator can score it and write the score back with
`set_judge_score`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from evaluators.stats import mean_interval, percentile, rate_interval
from gateway import tracing
from gateway.chat import answer_text, whole_answer_request
from gateway.context import sampled
from gateway.errors import GatewayError, InvalidRequest
from gateway.gateway import Generation
from gateway.hookspecs import hookimpl
from gateway.storage.retention import Retention
from gateway.storage.sqlite import APPEND_ONLY_CACHE_KIB, BatchWriter, SqliteThread, delete_requests

log = logging.getLogger("llmgate.shadow")

COLUMNS = (
    "ts",
    "request_id",
    "route",
    "primary_backend",
    "shadow_backend",
    "primary_status",
    "shadow_status",
    "shadow_error",
    "primary_latency_ms",
    "shadow_latency_ms",
    "primary_prompt_tokens",
    "primary_completion_tokens",
    "shadow_prompt_tokens",
    "shadow_completion_tokens",
    "primary_cost_usd",
    "shadow_cost_usd",
    "primary_answer",
    "shadow_answer",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS comparisons (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL, request_id TEXT NOT NULL, route TEXT NOT NULL,
    primary_backend TEXT NOT NULL, shadow_backend TEXT NOT NULL,
    primary_status INTEGER NOT NULL, shadow_status INTEGER NOT NULL, shadow_error TEXT,
    primary_latency_ms REAL, shadow_latency_ms REAL,
    primary_prompt_tokens INTEGER, primary_completion_tokens INTEGER,
    shadow_prompt_tokens INTEGER, shadow_completion_tokens INTEGER,
    primary_cost_usd REAL, shadow_cost_usd REAL, primary_answer TEXT, shadow_answer TEXT,
    judge_score REAL NULL);
CREATE INDEX IF NOT EXISTS comparisons_route_ts ON comparisons (route, ts);
"""
_INSERT = f"INSERT INTO comparisons ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"

BATCH_SIZE = 500
FLUSH_TIMEOUT = 5.0  # how long a judge score waits for its comparison's batch to be written
RECENT_PAIRS = 3
ANSWER_PREVIEW = 500


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_rate: float = Field(1.0, ge=0, le=1, description="share of a route's requests mirrored")
    max_concurrent: int = Field(
        256,
        ge=1,
        description="the most shadow calls in flight at once; calls start as requests are mirrored, so "
        "concurrency follows the load up to this cap (each call holds one request body; the shadow "
        "backend's own max_concurrency applies as well)",
    )
    queue_size: int = Field(1000, ge=1, description="shadow calls waiting; more are dropped and counted")
    path: str = "var/shadow.db"
    bodies: bool = Field(True, description="store both answers' texts")
    drain_seconds: float = Field(5.0, ge=0, description="on shutdown, how long shadow calls in flight may finish")
    retention_days: float | None = Field(
        30, gt=0, description="comparisons older than this are deleted (hourly); null keeps them for ever"
    )


@dataclass
class Job:
    generation: Generation  # held (entered) until the job ends, so a reload does not close its backend
    backend: str
    body: dict[str, Any]
    primary: dict[str, Any]  # the primary's half of the comparison row
    link: Any = None  # the request's span, when tracing is on: the shadow call's span links to it


@dataclass
class Mirrored:
    """How much of one route's traffic one shadow really saw, since this process started."""

    requests: int = 0  # the route's requests a shadow could have mirrored (answered by a backend)
    mirrored: int = 0  # shadow calls made and recorded
    dropped: int = 0  # sampled, but the queue was full (or the gateway stopped first)

    def summary(self, sample_rate: float) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "mirrored": self.mirrored,
            "dropped": self.dropped,
            "share": self.mirrored / self.requests if self.requests else None,
            "sample_rate": sample_rate,
        }


class Shadow:
    Settings = Settings

    def __init__(self, settings: Settings):
        self.settings = settings
        self.completed = 0
        self.dropped = 0
        self.errors = 0
        self.in_flight = 0
        self.closing = False
        self.mirrored: dict[tuple[str, str], Mirrored] = {}  # (route, shadow backend) -> its counts
        self._gateway = None
        self._jobs: asyncio.Queue[Job] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._dispatcher: asyncio.Task | None = None
        self._calls: set[asyncio.Task] = set()
        self._writer: BatchWriter | None = None
        self._quiet = asyncio.Event()  # set while no shadow call is in flight
        self._quiet.set()
        self._db = SqliteThread(settings.path, SCHEMA, cache_kib=APPEND_ONLY_CACHE_KIB)
        self.retention = Retention(self._db, "comparisons", settings.retention_days)

    @hookimpl
    async def startup(self, gateway):
        self._gateway = gateway
        if any(route.shadow for route in gateway.config.settings.routes.values()):
            await self._db.open()  # a bad path shows at start-up; without shadow routes no file is made until asked
        self._jobs = asyncio.Queue(self.settings.queue_size)
        # Unbounded: only the workers feed it, one row per shadow call, and a batch write is far faster than a call.
        self._writer = BatchWriter(self._db, _INSERT, queue_size=0, batch_size=BATCH_SIZE, name="shadow")
        self._writer.start()
        self._slots = asyncio.Semaphore(self.settings.max_concurrent)
        self.retention.start()
        self._dispatcher = asyncio.create_task(self._dispatch(), name="shadow dispatcher")

    @hookimpl
    def after_response(self, ctx):
        generation = ctx.generation
        if not ctx.route.shadow or not ctx.conversational or self.closing or ctx.served_by not in generation.backends:
            return
        counts = [self._counts(ctx.route_name, name) for name in ctx.route.shadow if name != ctx.served_by]
        for count in counts:
            count.requests += 1
        if not self._sampled(ctx.request_id):
            return
        body = whole_answer_request(ctx.body)  # compared whole, even when the caller streamed
        usage = ctx.usage
        primary = {
            "ts": ctx.received_at,
            "request_id": ctx.request_id,
            "route": ctx.route_name,
            "primary_backend": ctx.served_by,
            "primary_status": ctx.status,
            "primary_latency_ms": ctx.latency_ms,
            "primary_prompt_tokens": usage.get("prompt_tokens"),
            "primary_completion_tokens": usage.get("completion_tokens"),
            "primary_cost_usd": ctx.cost_usd,
            "primary_answer": answer_text(ctx.response) if self.settings.bodies else None,
        }
        link = tracing.current_link() if self._gateway.hooks.tracer is not None else None
        for name in ctx.route.shadow:
            if name == ctx.served_by:  # the shadow answered this one itself: nothing to compare it with
                continue
            try:
                self._jobs.put_nowait(Job(generation, name, body, primary, link))
            except asyncio.QueueFull:
                self.dropped += 1
                self._counts(ctx.route_name, name).dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("shadow queue full: %d shadow calls dropped so far", self.dropped)
                continue
            generation.enter()

    @hookimpl
    def admin_status(self, gateway):
        return {
            "shadow": {
                "queued": self._jobs.qsize() if self._jobs else 0,
                "in_flight": self.in_flight,
                "completed": self.completed,
                "dropped": self.dropped,
                "errors": self.errors,
            }
        }

    def _counts(self, route: str, shadow: str) -> Mirrored:
        found = self.mirrored.get((route, shadow))
        if found is None:
            found = self.mirrored[(route, shadow)] = Mirrored()
        return found

    @hookimpl
    def collect_metrics(self, gateway):
        per_route = []
        for (route, shadow), count in self.mirrored.items():
            labels = {"route": route, "shadow": shadow}
            per_route += [
                (
                    "llmgate_shadow_route_requests_total",
                    "Requests a shadow could have mirrored.",
                    labels,
                    count.requests,
                ),
                (
                    "llmgate_shadow_mirrored_total",
                    "Requests mirrored to a shadow and compared.",
                    labels,
                    count.mirrored,
                ),
                (
                    "llmgate_shadow_mirrored_share",
                    "Share of a route's requests really mirrored to a shadow (the sample rate at most).",
                    labels,
                    count.mirrored / count.requests if count.requests else 0.0,
                ),
            ]
        return [
            *per_route,
            ("llmgate_shadow_queue_depth", "Shadow calls waiting.", {}, self._jobs.qsize() if self._jobs else 0),
            ("llmgate_shadow_in_flight", "Shadow calls being made.", {}, self.in_flight),
            ("llmgate_shadow_calls_total", "Shadow calls recorded.", {}, self.completed),
            ("llmgate_shadow_errors_total", "Shadow calls that failed.", {}, self.errors),
            ("llmgate_shadow_dropped_total", "Shadow calls dropped (queue full, shutdown).", {}, self.dropped),
        ]

    @hookimpl
    def readiness(self, gateway):
        problem = f"{self.dropped} shadow calls dropped (queue full)" if self.dropped else None
        return {"shadow": problem}

    @hookimpl
    def register_routes(self, gateway):
        return [web.get("/admin/shadow/report", self._report_endpoint)]

    @hookimpl
    async def shutdown(self, gateway):
        """Start no queued call, give those in flight `drain_seconds`, then flush and close."""
        self.closing = True
        await self.retention.close()
        if self._writer is None:
            await self._db.close()
            return
        if unstarted := self._jobs.qsize():
            log.warning("shutdown: %d queued shadow calls dropped", unstarted)
        self._dispatcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._dispatcher
        while not self._jobs.empty():
            job = self._jobs.get_nowait()
            job.generation.leave()
            self.dropped += 1
            self._counts(job.primary["route"], job.backend).dropped += 1
        try:
            await asyncio.wait_for(self._quiet.wait(), self.settings.drain_seconds)
        except TimeoutError:
            log.warning("shutdown: cancelling %d shadow calls still in flight", self.in_flight)
        calls = list(self._calls)
        for call in calls:
            call.cancel()  # a call still in flight is recorded as cancelled
        await asyncio.gather(*calls, return_exceptions=True)
        await self._writer.close()
        await self._db.close()

    @hookimpl
    async def erase_user(self, user, request_ids):
        if not Path(self.settings.path).exists():
            return {"shadow": 0}
        if self._writer is not None:
            await self._writer.flush()
        return {"shadow": await self._db.run(lambda conn: delete_requests(conn, "comparisons", request_ids))}

    def _sampled(self, request_id: str) -> bool:
        """Deterministic per request id, so a replayed request is mirrored (or not) the same way."""
        return sampled(self.settings.sample_rate, "shadow", request_id)

    async def _dispatch(self) -> None:
        """Start each queued job's call as soon as a slot is free: a job waits in the queue (where it is
        counted and bounded), never in hand."""
        while True:
            await self._slots.acquire()
            try:
                job = await self._jobs.get()
            except asyncio.CancelledError:
                self._slots.release()
                raise
            self.in_flight += 1  # counted from here, so shutdown waits for a call about to start
            self._quiet.clear()
            call = asyncio.create_task(self._work(job), name=f"shadow call to {job.backend}")
            self._calls.add(call)
            call.add_done_callback(lambda done, job=job: self._done(done, job))

    def _done(self, call: asyncio.Task, job: Job) -> None:
        """A call ended (or was cancelled before it began): free its slot and its generation."""
        self._calls.discard(call)
        self._slots.release()
        job.generation.leave()
        self.in_flight -= 1
        if not self.in_flight:
            self._quiet.set()
        if not call.cancelled() and (exc := call.exception()) is not None:
            log.error("a shadow call to %s failed inside the gateway", job.backend, exc_info=exc)

    async def _work(self, job: Job) -> None:
        with tracing.linked_span(
            self._gateway.hooks.tracer,
            f"shadow {job.backend}",
            job.link,
            **{
                "llmgate.route": job.primary["route"],
                "llmgate.backend": job.backend,
                "llmgate.request_id": job.primary["request_id"],
            },
        ) as span:
            await self._serve(job, span)

    async def _serve(self, job: Job, span) -> None:
        """One shadow call, recorded and handed to `shadow_compared` (inside the call's span, when tracing)."""
        try:
            shadow = await self._call(job)
        except asyncio.CancelledError:
            self._record(job, {"shadow_status": 499, "shadow_error": "the gateway stopped before the shadow answered"})
            raise
        if span is not None:
            tokens = {
                "prompt_tokens": shadow.get("shadow_prompt_tokens"),
                "completion_tokens": shadow.get("shadow_completion_tokens"),
            }
            span.set_attributes(
                {"http.response.status_code": shadow["shadow_status"], **tracing.usage_attributes(tokens)}
            )
        row = self._record(job, shadow)
        await self._gateway.hooks.call("shadow_compared", comparison={**row, "messages": job.body.get("messages")})

    async def _call(self, job: Job) -> dict[str, Any]:
        """The shadow's half of the row; every failure is an answer here, never an exception."""
        backend = job.generation.backends.get(job.backend)
        if backend is None:
            return {"shadow_status": 503, "shadow_error": f"backend '{job.backend}' is no longer configured"}
        if missing := backend.missing_credentials():
            return {"shadow_status": 503, "shadow_error": f"backend '{job.backend}' needs {', '.join(missing)}"}
        started = time.perf_counter()
        try:
            answer = await backend.complete(job.body)
        except GatewayError as err:
            status = getattr(err, "upstream_status", None) or err.status
            return {
                "shadow_status": status,
                "shadow_error": self._gateway.scrub(err.message),
                "shadow_latency_ms": (time.perf_counter() - started) * 1000,
            }
        except Exception as exc:
            log.exception("shadow call to %s failed inside the gateway", job.backend)
            return {
                "shadow_status": 500,
                "shadow_error": f"the gateway failed: {type(exc).__name__}",
                "shadow_latency_ms": (time.perf_counter() - started) * 1000,
            }
        usage = answer.get("usage") or {}
        return {
            "shadow_status": 200,
            "shadow_latency_ms": (time.perf_counter() - started) * 1000,
            "shadow_prompt_tokens": usage.get("prompt_tokens"),
            "shadow_completion_tokens": usage.get("completion_tokens"),
            "shadow_cost_usd": self._gateway.config.cost(job.backend, backend.model, usage),
            "shadow_answer": answer_text(answer) if self.settings.bodies else None,
        }

    def _record(self, job: Job, shadow: dict[str, Any]) -> dict[str, Any]:
        self.completed += 1
        self._counts(job.primary["route"], job.backend).mirrored += 1
        self.errors += bool(shadow.get("shadow_error"))
        row = {**job.primary, "shadow_backend": job.backend, **shadow}
        self._writer.put_nowait(tuple(row.get(column) for column in COLUMNS))
        return row

    async def set_judge_score(self, request_id: str, shadow_backend: str, score: float) -> bool:
        """An evaluator's score (higher: the shadow did better) for a comparison; False when none matched."""
        sql = (
            "UPDATE comparisons SET judge_score = ? WHERE id = (SELECT max(id) FROM comparisons "
            "WHERE request_id = ? AND shadow_backend = ?)"
        )
        if self._writer is not None:
            with contextlib.suppress(TimeoutError):  # the comparison may still wait in a batch
                await asyncio.wait_for(self._writer.flush(), FLUSH_TIMEOUT)
        return await self._db.run(lambda c: c.execute(sql, (score, request_id, shadow_backend)).rowcount > 0)

    async def _report_endpoint(self, request: web.Request) -> web.Response:
        gateway = self._gateway
        gateway.require_admin(request)
        name = request.query.get("route")
        if not name:
            raise InvalidRequest("name the route: ?route=NAME", param="route")
        route = gateway.route(name)
        try:
            since = float(request.query.get("since", "86400"))
        except ValueError:
            since = -1
        if not since > 0 or math.isinf(since):
            raise InvalidRequest("'since' must be a positive number of seconds", param="since")
        now = time.time()
        rows, recent = await self._db.run(lambda c: _read(c, name, now - since))
        shadows = list(dict.fromkeys([*route.shadow, *(r["shadow_backend"] for r in rows)]))
        report = {
            "route": name,
            "since_s": since,
            "sample_rate": self.settings.sample_rate,
            "shadows": {
                s: {
                    **summarise(
                        [r for r in rows if r["shadow_backend"] == s],
                        recent.get(s, []),
                        since,
                        self.settings.sample_rate,
                    ),
                    "mirrored": self._counts(name, s).summary(self.settings.sample_rate),
                }
                for s in shadows
            },
        }
        return web.json_response(report)


def _read(conn: sqlite3.Connection, route: str, start: float) -> tuple[list[dict], dict[str, list[dict]]]:
    """The window's figures for a route, and each shadow's most recent answer pairs."""

    def query(sql: str, *params) -> list[dict]:
        cursor = conn.cursor()
        cursor.row_factory = sqlite3.Row
        return [dict(r) for r in cursor.execute(sql, params)]

    rows = query(
        "SELECT shadow_backend, primary_status, shadow_error, primary_latency_ms, shadow_latency_ms, "
        "primary_prompt_tokens, primary_completion_tokens, shadow_prompt_tokens, shadow_completion_tokens, "
        "primary_cost_usd, shadow_cost_usd, judge_score FROM comparisons WHERE route = ? AND ts >= ?",
        route,
        start,
    )
    recent = {
        shadow: query(
            "SELECT request_id, ts, substr(primary_answer, 1, ?) AS primary_answer, "
            "substr(shadow_answer, 1, ?) AS shadow_answer FROM comparisons "
            "WHERE route = ? AND shadow_backend = ? AND ts >= ? ORDER BY id DESC LIMIT ?",
            ANSWER_PREVIEW,
            ANSWER_PREVIEW,
            route,
            shadow,
            start,
            RECENT_PAIRS,
        )
        for shadow in {r["shadow_backend"] for r in rows}
    }
    return rows, recent


def _mean(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _side(rows: list[dict], prefix: str, failed) -> dict[str, Any]:
    ok = [r for r in rows if not failed(r)]
    latencies = [r[f"{prefix}_latency_ms"] for r in ok]
    errors = sum(1 for r in rows if failed(r))
    return {
        "error_rate": errors / len(rows) if rows else None,
        "errors": rate_interval(errors, len(rows)),
        "latency_ms": {f"p{p}": percentile(latencies, p) for p in (50, 95, 99)},
        "prompt_tokens_mean": _mean([r[f"{prefix}_prompt_tokens"] for r in ok]),
        "completion_tokens_mean": _mean([r[f"{prefix}_completion_tokens"] for r in ok]),
        "cost_per_request_usd": _mean([r[f"{prefix}_cost_usd"] for r in ok]),
    }


def summarise(rows: list[dict], recent: list[dict], since: float, sample_rate: float) -> dict[str, Any]:
    """One shadow backend's comparison with the primary over a window of `since` seconds.

    Latency, tokens and cost are over the calls that succeeded; requests per day scale the window's
    comparisons back up by the sample rate, and the monthly saving is what answering them all with
    the shadow instead would have saved (negative when the shadow costs more)."""
    primary_failed = lambda r: r["primary_status"] >= 400  # noqa: E731
    shadow_failed = lambda r: r["shadow_error"] is not None  # noqa: E731
    primary = _side(rows, "primary", primary_failed)
    shadow = _side(rows, "shadow", shadow_failed)
    both = [r for r in rows if not primary_failed(r) and not shadow_failed(r)]  # paired: one request, two answers
    per_day = len(rows) / sample_rate / (since / 86400) if sample_rate else None
    cost_gap = _minus(primary["cost_per_request_usd"], shadow["cost_per_request_usd"])
    scores = [r["judge_score"] for r in rows if r["judge_score"] is not None]
    return {
        "count": len(rows),
        "primary": primary,
        "shadow": shadow,
        "difference": {
            key: _minus(shadow[key], primary[key])
            for key in ("prompt_tokens_mean", "completion_tokens_mean", "cost_per_request_usd")
        },
        # the shadow minus the primary on the same requests, with a 95% interval and the pairs it rests on
        "paired_difference": {
            key: mean_interval([_minus(r[f"shadow_{column}"], r[f"primary_{column}"]) for r in both])
            for key, column in (
                ("latency_ms", "latency_ms"),
                ("prompt_tokens", "prompt_tokens"),
                ("completion_tokens", "completion_tokens"),
                ("cost_usd", "cost_usd"),
            )
        },
        "requests_per_day": per_day,
        "projected_monthly_saving_usd": None if cost_gap is None or per_day is None else cost_gap * per_day * 30,
        "judge": {
            "mean": sum(scores) / len(scores),
            "count": len(scores),
            "interval": mean_interval(scores)["interval"],
        }
        if scores
        else None,
        "recent": recent,
    }
