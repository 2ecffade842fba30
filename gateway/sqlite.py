"""An SQLite connection owned by one worker thread, so the event loop never waits on disk."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
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

    A batch the database refuses for a passing reason (locked, disk full, an I/O error) is kept and
    retried with backoff, so records are never dropped silently: `waiting` and `last_error` say so
    meanwhile, and the queue behind it fills up (and sheds) instead. At `close` the retries stop
    after `close_timeout` seconds; what is still unwritten then is logged and counted in `lost`.
    """
    close_timeout = 10.0

    def __init__(self, db: SqliteThread, insert_sql: str, *, queue_size: int, batch_size: int,
                 to_row: Callable[[Any], tuple] = tuple, name: str = "rows"):
        self._db, self._insert, self._batch_size, self._to_row, self.name = db, insert_sql, batch_size, to_row, name
        self._queue: asyncio.Queue = asyncio.Queue(queue_size)
        self._task: asyncio.Task | None = None
        self.written = 0
        self.waiting = 0  # rows of a batch the database refused, being retried
        self.lost = 0
        self.last_error: str | None = None
        self._give_up_at: float | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._write_forever(), name=f"{self.name} writer")

    def put_nowait(self, item: Any) -> None:
        self._queue.put_nowait(item)

    def qsize(self) -> int:
        return self._queue.qsize()

    async def close(self) -> None:
        if self._task is not None:
            self._give_up_at = time.monotonic() + self.close_timeout
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
        pause, tries = 0.1, 0
        while True:
            try:
                # Rows are made on the database's thread: serialising (and redacting) a record is no work for the loop.
                await self._db.run(lambda c: transaction(c, lambda c: c.executemany(
                    self._insert, [self._to_row(item) for item in batch])))
            except sqlite3.OperationalError as exc:  # locked, full, I/O: may pass, so keep the rows and retry
                tries += 1
                self.waiting, self.last_error = len(batch), str(exc)
                if tries == 1:
                    log.warning("%s: the database refused %d rows (%s); retrying", self.name, len(batch), exc)
                if self._give_up_at is not None and time.monotonic() > self._give_up_at:
                    self._lose(batch, f"still refused at shutdown: {exc}")
                    return
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            except Exception as exc:  # a row the database can never take: retrying would block the rest
                log.exception("%s: could not write %d rows", self.name, len(batch))
                self._lose(batch, str(exc))
                return
            self.written += len(batch)
            if tries:
                log.warning("%s: %d rows written after %d refused tries", self.name, len(batch), tries)
            self.waiting, self.last_error = 0, None
            return

    def _lose(self, batch: list, why: str) -> None:
        self.lost += len(batch)
        self.waiting = 0
        log.error("%s: %d rows lost (%d so far): %s", self.name, len(batch), self.lost, why)
