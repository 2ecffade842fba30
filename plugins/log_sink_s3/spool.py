"""The S3 log sink's local spool: records accepted for upload, durable in SQLite until S3 has them.

A record is accepted once its row is committed here (WAL, synchronous=FULL, so a crash of the
process or the machine keeps it). The uploader first *plans* a batch, writing into each row the
object key it will go to, in one transaction; then uploads each planned object and deletes its
rows. Because the plan is stored, a retry (or the next process after a crash) rebuilds exactly
the same objects under the same keys: an upload that S3 took but never confirmed is overwritten,
never duplicated.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Callable, Protocol

from gateway.context import dumps
from gateway.storage.sqlite import BatchWriter, SqliteThread, transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    route TEXT NOT NULL, ts REAL NOT NULL, record TEXT NOT NULL, object_key TEXT);
CREATE INDEX IF NOT EXISTS spool_planned ON spool (object_key) WHERE object_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_INSERT = "INSERT INTO spool (route, ts, record) VALUES (?, ?, ?)"


class Naming(Protocol):
    """Where rows go: their partition, and the name of one object of rows in it."""

    def partition(self, route: str, ts: float) -> str: ...
    def object_key(self, partition: str, first_id: int, last_id: int) -> str: ...


def _row(record: dict[str, Any]) -> tuple:
    return record["route"], record["ts"], dumps(record)


class SpoolWriter(BatchWriter):
    """The BatchWriter that reports each commit (so the uploader wakes) and each failure (so /readyz says so)."""

    def __init__(
        self,
        db: SqliteThread,
        *,
        queue_size: int,
        batch_size: int,
        on_commit: Callable[[int], None],
        on_failure: Callable[[int, Exception], None],
    ):
        super().__init__(db, _INSERT, queue_size=queue_size, batch_size=batch_size, to_row=_row, name="s3 spool")
        self._on_commit, self._on_failure = on_commit, on_failure

    async def _flush(self, batch: list, last: bool = False) -> None:
        def insert(conn: sqlite3.Connection) -> None:  # encoded on the spool's thread: big batches stay off the loop
            rows = [_row(record) for record in batch]
            transaction(conn, lambda c: c.executemany(_INSERT, rows))

        try:
            await self._db.run(insert)
        except Exception as exc:
            self._on_failure(len(batch), exc)
            return
        self.written += len(batch)
        self._on_commit(len(batch))


class Spool:
    """The spool file: counting, planning, loading and removing rows, each on the database's own thread."""

    def __init__(self, path: str):
        self.db = SqliteThread(path, SCHEMA)

    async def open(self) -> None:
        # FULL: a commit reaches the disk before the record counts as accepted (batches keep it cheap).
        await self.db.run(lambda c: c.execute("PRAGMA synchronous=FULL"))

    async def close(self) -> None:
        await self.db.close()

    def writer(self, **kwargs) -> SpoolWriter:
        return SpoolWriter(self.db, **kwargs)

    async def replica_id(self, configured: str | None, fallback: str) -> str:
        """The configured name, else the one this spool was first given: planned keys stay valid across restarts."""

        def pick(conn: sqlite3.Connection) -> str:
            stored = conn.execute("SELECT value FROM meta WHERE key = 'replica'").fetchone()
            name = configured or (stored[0] if stored else fallback)
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('replica', ?)", (name,))
            return name

        return await self.db.run(pick)

    async def count(self) -> tuple[int, int]:
        """(rows waiting, rows already planned into objects)."""
        return await self.db.run(lambda c: c.execute("SELECT COUNT(*), COUNT(object_key) FROM spool").fetchone())

    async def next_objects(self, batch_size: int, naming: Naming) -> dict[str, list[tuple[int, str]]]:
        """The objects to upload next, {key: [(id, record JSON), ...]}: those already planned, else a new plan."""

        def load(conn: sqlite3.Connection) -> dict[str, list[tuple[int, str]]]:
            planned = _planned(conn)
            return planned if planned else transaction(conn, lambda c: _plan(c, batch_size, naming))

        return await self.db.run(load)

    async def forget(self, erased: Callable[[dict], bool]) -> int:
        """Delete the waiting records `erased` picks (an erasure), before they reach S3; how many went."""

        def drop(conn: sqlite3.Connection) -> int:
            gone = [(i,) for i, record in conn.execute("SELECT id, record FROM spool") if erased(json.loads(record))]
            transaction(conn, lambda c: c.executemany("DELETE FROM spool WHERE id = ?", gone))
            return len(gone)

        return await self.db.run(drop)

    async def remove(self, ids: list[int]) -> None:
        await self.db.run(
            lambda c: transaction(c, lambda c: c.executemany("DELETE FROM spool WHERE id = ?", [(i,) for i in ids]))
        )


def _planned(conn: sqlite3.Connection) -> dict[str, list[tuple[int, str]]]:
    objects: dict[str, list[tuple[int, str]]] = {}
    for key, row_id, record in conn.execute(
        "SELECT object_key, id, record FROM spool WHERE object_key IS NOT NULL ORDER BY id"
    ):
        objects.setdefault(key, []).append((row_id, record))
    return objects


def _plan(conn: sqlite3.Connection, batch_size: int, naming: Naming) -> dict[str, list[tuple[int, str]]]:
    """Group the oldest unplanned rows by partition and store each row's object key."""
    rows = conn.execute(
        "SELECT id, route, ts, record FROM spool WHERE object_key IS NULL ORDER BY id LIMIT ?", (batch_size,)
    ).fetchall()
    groups: dict[str, list[tuple[int, str]]] = {}
    for row_id, route, ts, record in rows:
        groups.setdefault(naming.partition(route, ts), []).append((row_id, record))
    objects = {
        naming.object_key(partition, members[0][0], members[-1][0]): members for partition, members in groups.items()
    }
    conn.executemany(
        "UPDATE spool SET object_key = ? WHERE id = ?",
        [(key, row_id) for key, members in objects.items() for row_id, _ in members],
    )
    return objects
