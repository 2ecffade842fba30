"""traffic_log: every exchange, recorded in SQLite off the request path.

`after_response` only puts the record on a bounded queue; a writer task commits batches on the
database's own thread. When the queue is full the record is dropped and counted (and /readyz
says so) rather than slowing requests. On shutdown the queue is drained before the file closes,
and committed rows survive a crash (WAL). While the database refuses writes (locked by another
process, a full disk), records go to a spill file on disk and are replayed when it takes them
again, or at the next start.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field

from gateway.context import dumps
from gateway.hookspecs import hookimpl
from gateway.spill import SpillFile
from gateway.sqlite import APPEND_ONLY_CACHE_KIB, LOG_BATCH_WAIT_MS, BatchWriter, SqliteThread

log = logging.getLogger("llmgate.traffic_log")

COLUMNS = ("request_id", "ts", "route", "variant", "served_by", "status", "error_type", "error_message", "stream",
           "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "cost_usd", "sticky_hash", "tenant",
           "attempts", "annotations", "request", "response")
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


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = "var/traffic.db"
    bodies: bool = Field(True, description="store request and response bodies")
    redact_pii: bool = Field(False, description="replace e-mails, phone numbers, card numbers, SSNs, IPs, AWS keys "
                                                "and passwords in the stored bodies with typed placeholders")
    queue_size: int = Field(10_000, ge=1)
    batch_size: int = Field(500, ge=1)
    batch_wait_ms: float = Field(LOG_BATCH_WAIT_MS, ge=0, description="how long a batch waits for more records "
                                 "before it is written: one transaction for many (0: each as it comes)")
    spill_path: str | None = Field(None, description="where records go while the database refuses writes, replayed "
                                                     "when it takes them (default: the log's path + '.spill')")
    spill_max_mb: float = Field(1024, gt=0, description="size bound of the spill file")


def _row(record: dict[str, Any], redact: bool = False) -> tuple:
    if redact:
        from .pii import scrub_value
        record = {**record, "request": scrub_value(record["request"]), "response": scrub_value(record["response"])}
    return tuple(_json_text(record[c]) if c in JSON_COLUMNS and record[c] is not None else record[c] for c in COLUMNS)


def _json_text(value: Any) -> str:
    """JSON text SQLite can store: a refused request may hold a lone surrogate ("\\ud800"), which no UTF-8
    encoder writes and which would lose the whole batch; escaped, it reads back as it was sent."""
    text = dumps(value)
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"))
    return text


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


class TrafficLog:
    Settings = Settings

    def __init__(self, settings: Settings):
        self.settings = settings
        self.dropped = 0
        self._db = SqliteThread(settings.path, SCHEMA, cache_kib=APPEND_ONLY_CACHE_KIB)
        self._writer: BatchWriter | None = None

    @property
    def written(self) -> int:
        return self._writer.written if self._writer else 0

    @hookimpl
    async def startup(self, gateway):
        await self._db.open()
        spill = SpillFile(self.settings.spill_path or self.settings.path + ".spill",
                          int(self.settings.spill_max_mb * 2**20))
        self._writer = BatchWriter(self._db, _INSERT, queue_size=self.settings.queue_size,
                                   batch_size=self.settings.batch_size, batch_wait=self.settings.batch_wait_ms / 1000,
                                   to_row=functools.partial(_row, redact=self.settings.redact_pii), name="traffic log",
                                   spill=spill)
        self._writer.start()

    @hookimpl
    def after_response(self, ctx):
        try:
            self._writer.put_nowait(ctx.record(bodies=self.settings.bodies))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("traffic log queue full: %d records dropped so far", self.dropped)

    @hookimpl
    def collect_metrics(self, gateway):
        return [("llmgate_traffic_log_queue_depth", "Records waiting to be written.", {},
                 self._writer.qsize() if self._writer else 0),
                ("llmgate_traffic_log_written_total", "Records written.", {}, self.written),
                ("llmgate_traffic_log_spilled", "Records on disk waiting for the database.", {},
                 self._writer.spilled if self._writer else 0),
                ("llmgate_traffic_log_dropped_total", "Records dropped (queue full).", {}, self.dropped)]

    @hookimpl
    def readiness(self, gateway):
        problems = [f"{self.dropped} records dropped (queue full)"] if self.dropped else []
        writer = self._writer
        if writer is not None and writer.spilled:
            problems.append(f"{writer.spilled} records spilled to disk: the database refused the last write "
                            f"({writer.last_error}); replaying when it takes them")
        if writer is not None and writer.waiting:
            problems.append(f"{writer.waiting + writer.qsize()} records waiting in memory: the database and the "
                            f"spill file refused the last write ({writer.last_error}); retrying")
        if writer is not None and writer.lost:
            problems.append(f"{writer.lost} records lost (the database refused them)")
        return {"traffic_log": "; ".join(problems) or None}

    @hookimpl
    async def shutdown(self, gateway):
        if self._writer is not None:
            await self._writer.close()
        await self._db.close()
