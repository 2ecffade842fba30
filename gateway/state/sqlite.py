"""The embedded state store: one SQLite file, durable across restarts, for a single node."""

from __future__ import annotations

import json
import time
from typing import Any

from ..storage.sqlite import SqliteThread, transaction
from .base import StateStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS expiring (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS expiring_expires ON expiring (expires);
"""
PURGE_EVERY = 256  # expired rows are deleted once in this many writes: the table stays the size of its TTL


class SqliteStateStore(StateStore):
    engine = "sqlite"

    def __init__(self, path: str):
        super().__init__()
        self._db = SqliteThread(path, SCHEMA)
        self._writes = 0

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

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

    async def publish(self, message: dict[str, Any]) -> None:
        await self._notify(message)  # one node: the only listeners are in this process

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
        text, now = json.dumps(value), time.time()
        self._writes += 1
        purge = self._writes % PURGE_EVERY == 0

        def put(c):
            c.execute(
                "INSERT INTO expiring (key, value, expires) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
                "SET value = excluded.value, expires = excluded.expires",
                (key, text, now + ttl_seconds),
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
