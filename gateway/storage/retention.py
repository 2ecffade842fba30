"""Rows kept for a stated number of days: a background sweep deletes older ones, a batch at a time.

The traffic log, the shadow comparisons and the feedback each hold personal data (prompts,
answers, ratings); none should grow for ever. A `Retention` deletes the rows of one table whose
`ts` is older than `days`, in batches (a long delete would hold the database's write lock while
the request path's group commit waits), every `interval` seconds, on the store's own thread.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

from .sqlite import SqliteThread

log = logging.getLogger("llmgate.retention")

BATCH = 5_000


class Retention:
    def __init__(self, db: SqliteThread, table: str, days: float | None, interval: float = 3600.0):
        self.db, self.table, self.days, self.interval = db, table, days, interval
        self.deleted = 0
        self.last_sweep: float | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self.days is not None:
            self._task = asyncio.create_task(self._forever(), name=f"retention of {self.table}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def sweep(self, now: float | None = None) -> int:
        """Delete every row older than the retention; the count deleted."""
        if self.db.path != ":memory:" and not Path(self.db.path).exists():
            return 0  # nothing written yet (a store that opens on first use): nothing to keep or delete
        cutoff = (time.time() if now is None else now) - self.days * 86400
        sql = f"DELETE FROM {self.table} WHERE rowid IN (SELECT rowid FROM {self.table} WHERE ts < ? LIMIT {BATCH})"

        def batch(conn: sqlite3.Connection) -> int:
            with conn:
                return conn.execute(sql, (cutoff,)).rowcount

        total = 0
        while True:
            removed = await self.db.run(batch)
            total += removed
            if removed < BATCH:
                break
            await asyncio.sleep(0)  # let the writers in between batches
        self.deleted += total
        self.last_sweep = time.time()
        return total

    async def _forever(self) -> None:
        while True:
            try:
                if removed := await self.sweep():
                    log.info("retention: deleted %d rows of %s older than %g days", removed, self.table, self.days)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the file is busy or gone: try again next time
                log.warning("retention of %s failed: %s", self.table, exc)
            await asyncio.sleep(self.interval)

    def summary(self) -> dict:
        return {"days": self.days, "deleted": self.deleted, "last_sweep": self.last_sweep}
