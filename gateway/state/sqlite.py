"""The embedded state store: one SQLite file, durable across restarts, for a single node.

The processes of one node (`server.workers`) share the file. Among them, a change notice is a row of
`notices` as well as a call to this process's listeners; every worker reads the rows the others wrote
every NOTICE_POLL_SECONDS, so a rollout change made through one worker reaches the others within that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
import uuid
from typing import Any, Callable, TypeVar

from ..node import node_workers
from ..storage.sqlite import SqliteThread, transaction
from .base import StateStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS expiring (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS expiring_expires ON expiring (expires);
CREATE TABLE IF NOT EXISTS notices (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, origin TEXT NOT NULL,
    body TEXT NOT NULL);
"""
NOTICE_POLL_SECONDS = 0.25  # how soon another process of the node hears of a change
NOTICE_KEEP_SECONDS = 300  # a notice is kept this long: a process that paused longer resyncs
log = logging.getLogger("llmgate.state")
T = TypeVar("T")
PURGE_EVERY = 256  # expired rows are deleted once in this many writes: the table stays the size of its TTL


def _retrieved(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


class SqliteStateStore(StateStore):
    engine = "sqlite"

    def __init__(self, path: str):
        super().__init__()
        self._db = SqliteThread(path, SCHEMA)
        self._writes = 0
        self._origin = uuid.uuid4().hex  # this process's notices, which its own listeners already heard
        self._seen = 0
        self._poller: asyncio.Task | None = None
        self._shared = False  # whether other processes of the node share the file (server.workers)
        self._expiring: dict[str, tuple[str, float]] = {}  # rows waiting for the next batch, by key
        self._expiring_batch: asyncio.Future | None = None  # the batch they will go in, not yet begun
        self._expiring_last: asyncio.Future | None = None  # the latest batch, begun or not

    async def open(self) -> None:
        await self._db.open()
        self._shared = node_workers() > 1  # one process alone has no one to tell, nor anyone to hear
        if self._shared:
            self._seen = await self._db.run(
                lambda c: c.execute("SELECT coalesce(max(id), 0) FROM notices").fetchone()[0]
            )
            self._poller = asyncio.create_task(self._poll_forever(), name="state notices")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._expiring_last is not None:  # the rows put before the close are written first
            await asyncio.wait([self._expiring_last])
        await self._db.close()

    async def _poll_forever(self) -> None:
        polls = 0
        while True:
            await asyncio.sleep(NOTICE_POLL_SECONDS)
            polls += 1
            try:
                await self._read_notices(purge=polls % 1000 == 0)
            except Exception as exc:  # the file is locked or gone a while: the next poll tries again
                log.warning("state notices not read: %s", exc)

    async def _read_notices(self, purge: bool = False) -> None:
        seen = self._seen

        def read(c):
            if purge:
                c.execute("DELETE FROM notices WHERE ts < ?", (time.time() - NOTICE_KEEP_SECONDS,))
            return c.execute("SELECT id, origin, body FROM notices WHERE id > ? ORDER BY id", (seen,)).fetchall()

        rows = await self._db.run(read)
        if not rows:
            return
        if seen and rows[0][0] > seen + 1:  # some were purged unread: what they said may be missed
            await self._notify({"kind": "resync"})
        self._seen = rows[-1][0]
        for _, origin, body in rows:
            if origin != self._origin:
                await self._notify(json.loads(body))

    async def ping(self) -> bool:
        try:
            return await self._db.run(lambda c: c.execute("SELECT 1").fetchone()[0] == 1)
        except Exception:
            return False

    async def get(self, key: str) -> Any | None:
        row = await self._db.run(lambda c: c.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone())
        return json.loads(row[0]) if row else None

    async def set(self, key: str, value: Any) -> None:
        text = json.dumps(value)
        await self._db.run(
            lambda c: c.execute(
                "INSERT INTO state (key, value, updated) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                (key, text, time.time()),
            )
        )

    async def update(self, key: str, change) -> tuple[Any | None, Any]:
        def swap(c):
            row = c.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
            old = json.loads(row[0]) if row else None
            new = change(old)
            c.execute(
                "INSERT INTO state (key, value, updated) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                (key, json.dumps(new), time.time()),
            )
            return old, new

        return await self._db.run(lambda c: transaction(c, swap))

    async def transact(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in one write transaction on the store's file: the other processes of the node
        (`server.workers`) wait for it, so a check and a write in `fn` are atomic across them."""
        return await self._db.run(lambda c: transaction(c, fn))

    async def publish(self, message: dict[str, Any]) -> None:
        if self._shared:
            row = (time.time(), self._origin, json.dumps(message))
            await self._db.run(lambda c: c.execute("INSERT INTO notices (ts, origin, body) VALUES (?, ?, ?)", row))
        await self._notify(message)

    async def delete(self, key: str) -> None:
        await self._db.run(lambda c: c.execute("DELETE FROM state WHERE key = ?", (key,)))

    async def items(self, prefix: str = "") -> dict[str, Any]:
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT key, value FROM state WHERE key LIKE ? ESCAPE '\\' ORDER BY key", (like,)
            ).fetchall()
        )
        return {key: json.loads(value) for key, value in rows}

    async def append_event(self, event: dict[str, Any]) -> dict[str, Any]:
        ts = event.get("ts") or time.time()

        def insert(c):
            cursor = c.execute("INSERT INTO events (ts, body) VALUES (?, ?)", (ts, json.dumps(event)))
            return cursor.lastrowid

        event_id = await self._db.run(lambda c: transaction(c, insert))
        return {**event, "id": event_id, "ts": ts}

    async def events(self, limit: int = 100, **match: Any) -> list[dict[str, Any]]:
        def select(c):
            found = []
            for event_id, ts, body in c.execute("SELECT id, ts, body FROM events ORDER BY id DESC"):
                event = json.loads(body)
                if all(event.get(k) == v for k, v in match.items()):
                    found.append({**event, "id": event_id, "ts": ts})
                    if len(found) >= limit:
                        break
            return found

        return await self._db.run(select)

    async def put_expiring(self, key: str, value: Any, ttl_seconds: float) -> None:
        """Kept with the others put while the write before them runs, in one transaction (a group commit):
        the Responses API stores a turn a request, and a thread hop and a commit each cost more than the
        row. Returns once the row is committed, as before."""
        self._expiring[key] = (json.dumps(value), time.time() + ttl_seconds)
        if self._expiring_batch is None:
            self._expiring_batch = asyncio.ensure_future(self._write_expiring(self._expiring_last))
            self._expiring_batch.add_done_callback(_retrieved)  # its callers may all have gone: no warning
            self._expiring_last = self._expiring_batch
        await asyncio.shield(self._expiring_batch)

    async def _write_expiring(self, previous: asyncio.Future | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])  # the rows put meanwhile join this batch
        rows, self._expiring, self._expiring_batch = self._expiring, {}, None  # a put from now opens the next
        now = time.time()
        purge = self._writes // PURGE_EVERY != (self._writes + len(rows)) // PURGE_EVERY
        self._writes += len(rows)

        def put(c):
            c.executemany(
                "INSERT INTO expiring (key, value, expires) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
                "SET value = excluded.value, expires = excluded.expires",
                [(key, text, expires) for key, (text, expires) in rows.items()],
            )
            if purge:
                c.execute("DELETE FROM expiring WHERE expires < ?", (now,))

        await self._db.run(lambda c: transaction(c, put))

    async def get_expiring(self, key: str) -> Any | None:
        row = await self._db.run(
            lambda c: c.execute(
                "SELECT value FROM expiring WHERE key = ? AND expires >= ?", (key, time.time())
            ).fetchone()
        )
        return json.loads(row[0]) if row else None

    async def acquire_lease(self, name: str, holder: str, ttl_seconds: float) -> bool:
        def take(c):
            now = time.time()
            row = c.execute("SELECT holder, expires FROM leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                return False
            c.execute(
                "INSERT INTO leases (name, holder, expires) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE "
                "SET holder = excluded.holder, expires = excluded.expires",
                (name, holder, now + ttl_seconds),
            )
            return True

        return await self._db.run(lambda c: transaction(c, take))
