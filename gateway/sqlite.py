"""An SQLite connection owned by one worker thread, so the event loop never waits on disk."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")
log = logging.getLogger("llmgate.sqlite")


class SqliteThread:
    """Runs every call against one connection on one thread; WAL keeps committed rows through a crash."""

    def __init__(self, path: str, schema: str):
        self.path = path
        self._schema = schema
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite:{Path(path).name}")
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(self._schema)
        self._conn = conn

    async def open(self) -> None:
        await self.run(lambda conn: None)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._conn is None:
                self._open()
            return fn(self._conn)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)


def transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]) -> Any:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


class BatchWriter:
    """Rows queued from the event loop and written in batches by one task, off the request path.

    A batch is whatever was queued while the previous write ran, so batches grow by themselves
    under load and a lone row is written at once. `put_nowait` never waits: a full queue raises
    asyncio.QueueFull for the caller to count. `close` writes everything queued before it.
    """

    def __init__(self, db: SqliteThread, insert_sql: str, *, queue_size: int, batch_size: int,
                 to_row: Callable[[Any], tuple] = tuple, name: str = "rows"):
        self._db, self._insert, self._batch_size, self._to_row, self.name = db, insert_sql, batch_size, to_row, name
        self._queue: asyncio.Queue = asyncio.Queue(queue_size)
        self._task: asyncio.Task | None = None
        self.written = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._write_forever(), name=f"{self.name} writer")

    def put_nowait(self, item: Any) -> None:
        self._queue.put_nowait(item)

    def qsize(self) -> int:
        return self._queue.qsize()

    async def close(self) -> None:
        if self._task is not None:
            await self._queue.put(None)  # after every row already queued
            await self._task
            self._task = None

    async def _write_forever(self) -> None:
        queue = self._queue
        while True:
            item = await queue.get()
            batch, done = [], False
            while True:
                if item is None:
                    done = True
                    break
                batch.append(item)
                if len(batch) >= self._batch_size or queue.empty():
                    break
                item = queue.get_nowait()
            if batch:
                await self._flush(batch)
            if done:
                return

    async def _flush(self, batch: list) -> None:
        try:
            rows = [self._to_row(item) for item in batch]
            await self._db.run(lambda c: transaction(c, lambda c: c.executemany(self._insert, rows)))
            self.written += len(rows)
        except Exception:
            log.exception("%s: could not write %d rows", self.name, len(batch))
