"""traffic_log: every exchange, recorded in SQLite off the request path.

`after_response` only puts the record on a bounded queue; a writer task commits batches on the
database's own thread. When the queue is full the record is dropped and counted (and /readyz
says so) rather than slowing requests. On shutdown the queue is drained before the file closes,
and committed rows survive a crash (WAL). While the database refuses writes (locked by another
process, a full disk), records go to a spill file on disk and are replayed when it takes them
again, or at the next start.

That default (`durability: batched`) loses the records still in memory when the process dies (at
most the last batch). `durability: acknowledged` (gateway-wide or per route) queues the record at
`before_answer_end` instead and holds the answer's last bytes until the commit (fsynced) or the
spill file holds it, so an answer the caller saw end is in the log; the waiting answers share
their batch's one commit. After `ack_timeout_ms` the answer ends anyway, its record still queued.

For operators it answers GET /admin/traffic/{request_id} (one exchange, with the shadow comparisons
and the feedback other plugins stored for it) and GET /admin/traffic?after=CURSOR (the exchanges
logged since), read on a thread with a read-only connection of their own: `llmgate traffic show`
and `llmgate traffic tail` (plugins.traffic_log.commands).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.context import dumps, dumps_encodable, stable_hash
from gateway.errors import GatewayError, InvalidRequest, NotFound
from gateway.hookspecs import hookimpl
from gateway.plugins import unknown_routes
from gateway.storage.retention import Retention
from gateway.storage.spill import SpillFile
from gateway.storage.sqlite import (
    APPEND_ONLY_CACHE_KIB,
    LOG_BATCH_WAIT_MS,
    LOST,
    BatchWriter,
    SqliteThread,
    delete_requests,
)
from gateway.text.pii import scrub_value

log = logging.getLogger("llmgate.traffic_log")
NAME = "traffic_log"
BATCHED, ACKNOWLEDGED = "batched", "acknowledged"
Durability = Literal["batched", "acknowledged"]

COLUMNS = (
    "request_id",
    "ts",
    "route",
    "variant",
    "served_by",
    "status",
    "error_type",
    "error_message",
    "stream",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "sticky_hash",
    "tenant",
    "attempts",
    "annotations",
    "request",
    "response",
)
JSON_COLUMNS = frozenset({"attempts", "annotations", "request", "response"})

SCHEMA = """
CREATE TABLE IF NOT EXISTS traffic (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL, ts REAL NOT NULL, route TEXT NOT NULL, variant TEXT, served_by TEXT,
    status INTEGER NOT NULL, error_type TEXT, error_message TEXT, stream INTEGER NOT NULL,
    latency_ms REAL, ttft_ms REAL, prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL,
    sticky_hash TEXT, tenant TEXT, attempts TEXT, annotations TEXT, request TEXT, response TEXT);
CREATE INDEX IF NOT EXISTS traffic_route_ts ON traffic (route, ts);
CREATE INDEX IF NOT EXISTS traffic_request_id ON traffic (request_id);
"""
_INSERT = f"INSERT INTO traffic ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"

# One line of `llmgate traffic tail`: no bodies, the cache's verdict out of the annotations.
SUMMARY_COLUMNS = (
    "id",
    "ts",
    "request_id",
    "route",
    "variant",
    "served_by",
    "status",
    "error_type",
    "stream",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "tenant",
)
_SUMMARY = f"SELECT {', '.join(SUMMARY_COLUMNS)}, json_extract(annotations, '$.cache.result') FROM traffic"
RECENT_LIMIT = 1000  # exchanges one GET /admin/traffic returns at most
SHOW_FLUSH_SECONDS = 2.0  # how long a look-up waits for records still queued to be written
SHADOW_COLUMNS = (
    "shadow_backend",
    "shadow_status",
    "shadow_error",
    "shadow_latency_ms",
    "shadow_prompt_tokens",
    "shadow_completion_tokens",
    "shadow_cost_usd",
    "shadow_answer",
    "judge_score",
)


class RouteOptions(BaseModel):
    """A route's own options: what it leaves unset, the gateway-wide ones decide."""

    model_config = ConfigDict(extra="forbid")
    durability: Durability | None = Field(None, description="this route's durability (batched or acknowledged)")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = "var/traffic.db"
    bodies: bool = Field(True, description="store request and response bodies")
    redact_pii: bool = Field(
        False,
        description="replace e-mails, phone numbers, card numbers, SSNs, IPs, AWS keys "
        "and passwords in the stored bodies with typed placeholders",
    )
    queue_size: int = Field(10_000, ge=1)
    batch_size: int = Field(500, ge=1)
    batch_wait_ms: float = Field(
        LOG_BATCH_WAIT_MS,
        ge=0,
        description="how long a batch waits for more records "
        "before it is written: one transaction for many (0: each as it comes)",
    )
    spill_path: str | None = Field(
        None,
        description="where records go while the database refuses writes, replayed "
        "when it takes them (default: the log's path + '.spill')",
    )
    spill_max_mb: float = Field(1024, gt=0, description="size bound of the spill file")
    retention_days: float | None = Field(
        30, gt=0, description="exchanges older than this are deleted (hourly); null keeps them for ever"
    )
    durability: Durability = Field(
        BATCHED,
        description="batched: a record is committed with its batch after the answer (a crash of the process "
        "loses at most the last batch); acknowledged: the answer's last bytes wait for the commit that holds it",
    )
    routes: dict[str, RouteOptions] = Field({}, description="route -> its own options (durability)")
    ack_timeout_ms: float = Field(
        10_000,
        gt=0,
        description="how long an acknowledged answer waits for its commit before it ends anyway (its record "
        "stays queued, written once); above the database's 5 s lock wait, so a locked log still acknowledges "
        "through the spill file",
    )


def _row(record: dict[str, Any], redact: bool = False) -> tuple:
    if redact:
        record = {**record, "request": scrub_value(record["request"]), "response": scrub_value(record["response"])}
    return tuple(_json_text(record[c]) if c in JSON_COLUMNS and record[c] is not None else record[c] for c in COLUMNS)


def _json_text(value: Any) -> str:
    """JSON text SQLite can store: a refused request may hold a lone surrogate ("\\ud800"), which no UTF-8
    encoder writes and which would lose the whole batch; escaped, it reads back as it was sent."""
    try:
        return dumps_encodable(value).decode()
    except (RecursionError, ValueError):  # nested past the encoder, or a cycle: never a request's (MAX_DEPTH)
        return dumps({"unstorable": f"{type(value).__name__} nested too deeply to store"})


def read_records(path: str, where: str = "", params: tuple = ()) -> Iterator[dict[str, Any]]:
    """Read logged records back (for reports and dataset building), oldest first."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        query = f"SELECT {', '.join(COLUMNS)} FROM traffic {('WHERE ' + where) if where else ''} ORDER BY id"
        for values in conn.execute(query, params):
            record = dict(zip(COLUMNS, values))
            for column in JSON_COLUMNS:
                if record[column] is not None:
                    record[column] = json.loads(record[column])
            record["stream"] = bool(record["stream"])
            yield record
    finally:
        conn.close()


def _read_only(path: str) -> sqlite3.Connection:
    """A connection of the reader's own (the writer's lives on its thread): read-only, never making the file."""
    return sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)


def _decoded(record: dict[str, Any]) -> dict[str, Any]:
    for column in JSON_COLUMNS & record.keys():
        if record[column] is not None:
            record[column] = json.loads(record[column])
    record["stream"] = bool(record["stream"])
    return record


def find_exchange(path: str, request_id: str, team: str | None = None) -> tuple[dict[str, Any] | None, int]:
    """The latest record logged under `request_id` (with `team`, only that team's: another's is as unknown as an
    id never seen), and how many carry it (records written before ids were the gateway's own may share one)."""
    where, params = "request_id = ?", (request_id,)
    if team is not None:
        where, params = where + " AND tenant = ?", (request_id, team)
    conn = _read_only(path)
    try:
        sql = f"SELECT {', '.join(COLUMNS)} FROM traffic WHERE {where} ORDER BY id DESC"
        rows = conn.execute(sql, params).fetchall()
    finally:
        conn.close()
    return (_decoded(dict(zip(COLUMNS, rows[0]))) if rows else None), len(rows)


def recent_exchanges(
    path: str, *, after: int | None, limit: int, route: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Exchanges logged after the cursor `after`, oldest first, and the cursor to ask with next time.

    Without `after`: the latest `limit` and the newest row's id, so a follower starts from now. One
    read transaction, so rows committed meanwhile are neither skipped nor seen twice."""
    conn = _read_only(path)
    try:
        conn.execute("BEGIN")
        newest = conn.execute("SELECT coalesce(max(id), 0) FROM traffic").fetchone()[0]
        where, params = ["id <= ?"], [newest]
        if route:
            where.append("route = ?")
            params.append(route)
        if after is None:
            sql = f"{_SUMMARY} WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?"
            rows = conn.execute(sql, (*params, limit)).fetchall()[::-1]
        else:
            sql = f"{_SUMMARY} WHERE {' AND '.join(where)} AND id > ? ORDER BY id LIMIT ?"
            rows = conn.execute(sql, (*params, after, limit)).fetchall()
        conn.execute("COMMIT")
    finally:
        conn.close()
    exchanges = [{**dict(zip(SUMMARY_COLUMNS, row)), "stream": bool(row[8]), "cache": row[-1]} for row in rows]
    # A page that is full may have more behind it; otherwise every row up to `newest` was seen.
    cursor = exchanges[-1]["id"] if after is not None and len(exchanges) == limit else newest
    return exchanges, cursor


def _stored_by_request(path: str | None, sql: str, params: tuple) -> list[dict[str, Any]]:
    """Rows another plugin stored for an exchange; none when it is off or has not written its file yet."""
    if path is None or not Path(path).exists():
        return []
    conn = _read_only(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(sql, params)]
    except sqlite3.OperationalError:  # the plugin never made its table
        return []
    finally:
        conn.close()


def shadow_comparisons(path: str | None, record: dict[str, Any]) -> list[dict[str, Any]]:
    """The shadow plugin's comparisons of this exchange's answer, with the judge's score where it gave one.

    A comparison carries the exchange's route and arrival time, which its (route, ts) index finds."""
    sql = (
        f"SELECT {', '.join(SHADOW_COLUMNS)} FROM comparisons WHERE route = ? AND ts = ? AND request_id = ? ORDER BY id"
    )
    return _stored_by_request(path, sql, (record["route"], record["ts"], record["request_id"]))


def feedback_of(path: str | None, request_id: str) -> dict[str, Any] | None:
    """The user's rating of this exchange (plugins.feedback), if one was given."""
    rows = _stored_by_request(
        path, "SELECT ts, rating, score, comment FROM feedback WHERE request_id = ?", (request_id,)
    )
    return rows[0] if rows else None


def _count(query, name: str, default: int | None, least: int) -> int | None:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise InvalidRequest(f"'{name}' must be an integer of at least {least}", param=name)
    return value


class TrafficLog:
    Settings = Settings

    def __init__(self, settings: Settings):
        self.settings = settings
        self.dropped = 0
        self.acknowledged: Counter = Counter()  # outcome (written, spilled) -> acknowledged answers
        self.unacknowledged: Counter = Counter()  # reason (timeout, lost, queue_full) -> answers that ended unkept
        self._db = SqliteThread(settings.path, SCHEMA, cache_kib=APPEND_ONLY_CACHE_KIB)
        self._writer: BatchWriter | None = None
        self.retention = Retention(self._db, "traffic", settings.retention_days)

    @property
    def written(self) -> int:
        return self._writer.written if self._writer else 0

    @hookimpl
    async def startup(self, gateway):
        await self._db.open()
        spill = SpillFile(
            self.settings.spill_path or self.settings.path + ".spill", int(self.settings.spill_max_mb * 2**20)
        )
        self._writer = BatchWriter(
            self._db,
            _INSERT,
            queue_size=self.settings.queue_size,
            batch_size=self.settings.batch_size,
            batch_wait=self.settings.batch_wait_ms / 1000,
            to_row=functools.partial(_row, redact=self.settings.redact_pii),
            name="traffic log",
            spill=spill,
        )
        self._writer.start()
        self.retention.start()

    def durability(self, route: str) -> str:
        options = self.settings.routes.get(route)
        return options.durability if options is not None and options.durability else self.settings.durability

    @hookimpl
    def config_problems(self, config):
        return unknown_routes(f"plugins.{NAME}.routes", self.settings.routes, config)

    @hookimpl
    def config_reloaded(self, gateway, config):
        """The durability options take effect at once; the file, the batches and the rest at a restart."""
        fresh = config.plugin_options(NAME, Settings)
        self.settings = self.settings.model_copy(
            update={name: getattr(fresh, name) for name in ("durability", "routes", "ack_timeout_ms")}
        )

    @hookimpl
    def before_answer_end(self, ctx):
        if self._writer is None or NAME in ctx.state or self.durability(ctx.route_name) != ACKNOWLEDGED:
            return None
        return self._acknowledge(ctx)

    async def _acknowledge(self, ctx) -> None:
        """Queue the record and wait until it is durable: the caller's answer ends after that."""
        ctx.state[NAME] = ACKNOWLEDGED  # queued here (or dropped): after_response leaves it
        try:
            kept = self._writer.put_nowait(self._record(ctx), acknowledge=True)
        except asyncio.QueueFull:
            self._dropped()
            self._unkept("queue_full", ctx)
            return
        # wait, not shield: the future is the whole batch's, and this request may be cancelled
        await asyncio.wait((kept,), timeout=self.settings.ack_timeout_ms / 1000)
        if not kept.done():
            self._unkept("timeout", ctx)
        elif kept.result() == LOST:
            self._unkept(LOST, ctx)
        else:
            self.acknowledged[kept.result()] += 1

    def _record(self, ctx) -> dict:
        """The exchange's row; a refused request's (401, 403) without bodies: a caller without the right to
        the route stores nothing of what it sent."""
        return ctx.record(bodies=self.settings.bodies and ctx.status not in (401, 403))

    def _unkept(self, reason: str, ctx) -> None:
        self.unacknowledged[reason] += 1
        total = sum(self.unacknowledged.values())
        if total == 1 or total % 1000 == 0:
            log.warning(
                "traffic log: request %s ended before its record was kept (%s); %d so far",
                ctx.request_id,
                reason,
                total,
            )

    @hookimpl
    def after_response(self, ctx):
        if NAME in ctx.state:  # the acknowledged mode queued it already
            return
        try:
            self._writer.put_nowait(self._record(ctx))
        except asyncio.QueueFull:
            self._dropped()

    def _dropped(self) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning("traffic log queue full: %d records dropped so far", self.dropped)

    @hookimpl
    def collect_metrics(self, gateway):
        return [
            (
                "llmgate_traffic_log_queue_depth",
                "Records waiting to be written.",
                {},
                self._writer.qsize() if self._writer else 0,
            ),
            ("llmgate_traffic_log_written_total", "Records written.", {}, self.written),
            (
                "llmgate_traffic_log_spilled",
                "Records on disk waiting for the database.",
                {},
                self._writer.spilled if self._writer else 0,
            ),
            ("llmgate_traffic_log_dropped_total", "Records dropped (queue full).", {}, self.dropped),
            *(
                (
                    "llmgate_traffic_log_acknowledged_total",
                    "Acknowledged answers whose record was kept before they ended, by how.",
                    {"outcome": outcome},
                    self.acknowledged[outcome],
                )
                for outcome in ("written", "spilled")
            ),
            *(
                (
                    "llmgate_traffic_log_unacknowledged_total",
                    "Acknowledged answers that ended before their record was kept, by why.",
                    {"reason": reason},
                    n,
                )
                for reason, n in self.unacknowledged.items()
            ),
        ]

    @hookimpl
    def readiness(self, gateway):
        problems = [f"{self.dropped} records dropped (queue full)"] if self.dropped else []
        writer = self._writer
        if writer is not None and writer.spilled:
            problems.append(
                f"{writer.spilled} records spilled to disk: the database refused the last write "
                f"({writer.last_error}); replaying when it takes them"
            )
        if writer is not None and writer.waiting:
            problems.append(
                f"{writer.waiting + writer.qsize()} records waiting in memory: the database and the "
                f"spill file refused the last write ({writer.last_error}); retrying"
            )
        if writer is not None and writer.lost:
            problems.append(f"{writer.lost} records lost (the database refused them)")
        if self.unacknowledged:
            why = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.unacknowledged.items()))
            problems.append(
                f"{sum(self.unacknowledged.values())} acknowledged answers ended before their record was kept ({why})"
            )
        return {"traffic_log": "; ".join(problems) or None}

    @hookimpl
    def register_routes(self, gateway):
        def plugin_path(name: str) -> str | None:
            plugin = gateway.pm.get_plugin(name)
            return getattr(getattr(plugin, "settings", None), "path", None)

        async def read(fn, *args, **kwargs):
            try:
                return await asyncio.to_thread(fn, *args, **kwargs)
            except sqlite3.Error as exc:
                raise GatewayError(
                    f"the traffic log at {self.settings.path} cannot be read: {exc}",
                    status=503,
                    type="traffic_log_unavailable",
                ) from None

        async def exchange(request: web.Request) -> web.Response:
            gateway.require_admin(request)
            request_id = request.match_info["request_id"]
            if self._writer is not None:  # a record still queued is found too: an operator looks one up at once
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._writer.flush(), SHOW_FLUSH_SECONDS)
            team = request.query.get("team") or None  # a team's view: another team's exchange is not found
            record, matches = await read(find_exchange, self.settings.path, request_id, team)
            if record is None:
                raise NotFound(
                    f"no exchange with id '{request_id}' in the traffic log",
                    param="request_id",
                    code="exchange_not_found",
                )
            shadow = await read(shadow_comparisons, plugin_path("shadow"), record)
            feedback = await read(feedback_of, plugin_path("feedback"), request_id)
            body = {
                "exchange": record,
                "matches": matches,
                "shadow_comparisons": shadow,
                "feedback": feedback,
                "bodies_stored": self.settings.bodies,
            }
            return web.json_response(body)

        async def recent(request: web.Request) -> web.Response:
            gateway.require_admin(request)
            after = _count(request.query, "after", None, 0)
            limit = min(_count(request.query, "limit", 100, 0 if after is None else 1), RECENT_LIMIT)
            exchanges, cursor = await read(
                recent_exchanges, self.settings.path, after=after, limit=limit, route=request.query.get("route") or None
            )
            return web.json_response({"exchanges": exchanges, "cursor": cursor})

        return [web.get("/admin/traffic", recent), web.get("/admin/traffic/{request_id}", exchange)]

    @hookimpl
    async def user_requests(self, user, team):
        """The exchanges whose sticky user is `user` (on any route the log holds), of `team` when it is named."""
        if self._writer is not None:
            await self._writer.flush()  # an answer just given is in the log before it is searched

        def find(conn: sqlite3.Connection) -> list[str]:
            routes = [route for (route,) in conn.execute("SELECT DISTINCT route FROM traffic")]
            hashes = [stable_hash(route, f"user:{user}")[:16] for route in routes]
            found: set[str] = set()
            scoped, scope = (" AND tenant = ?", [team]) if team is not None else ("", [])
            for i in range(0, len(hashes), 500):
                chunk = hashes[i : i + 500]
                marks = ", ".join("?" for _ in chunk)
                query = f"SELECT request_id FROM traffic WHERE sticky_hash IN ({marks}){scoped}"
                found.update(rid for (rid,) in conn.execute(query, [*chunk, *scope]))
            return sorted(found)

        return await self._db.run(find)

    @hookimpl
    async def erase_user(self, user, request_ids):
        return {"traffic_log": await self._db.run(lambda conn: delete_requests(conn, "traffic", request_ids))}

    @hookimpl
    async def shutdown(self, gateway):
        await self.retention.close()
        if self._writer is not None:
            await self._writer.close()
        await self._db.close()
