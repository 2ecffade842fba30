"""An SQLite connection owned by one worker thread, so the event loop never waits on disk."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from .spill import SpillFile

T = TypeVar("T")
APPEND_ONLY_CACHE_KIB = 512  # the page cache of a log's connection: the pages appends touch, not a read cache
LOG_BATCH_WAIT_MS = 50  # how long a log's batch waits for more rows: a group commit, at most this much later
# What an acknowledged row became (BatchWriter.put_nowait(..., acknowledge=True)): durable, or not.
WRITTEN, SPILLED, LOST = "written", "spilled", "lost"
BUSY_TIMEOUT_MS = 5000  # how long a write waits for another connection's lock before it counts as refused
log = logging.getLogger("llmgate.sqlite")


class SqliteThread:
    """Runs every call against one connection on one thread; WAL keeps committed rows through a crash."""

    def __init__(self, path: str, schema: str, cache_kib: int | None = None):
        """`cache_kib` bounds the connection's page cache (SQLite's default is 2 MiB): a log that is
        only appended to gains nothing from caching pages it will not read again."""
        self.path = path
        self._schema = schema
        self._cache_kib = cache_kib
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite:{Path(path).name}")
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if self._cache_kib is not None:
            conn.execute(f"PRAGMA cache_size=-{int(self._cache_kib)}")
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
        if conn.in_transaction:  # a full disk has rolled it back already: keep its reason, not ROLLBACK's
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


@contextlib.contextmanager
def _synchronous_full(conn: sqlite3.Connection, full: bool = True):
    """Commits within fsync the WAL (synchronous=FULL); the connection's NORMAL after."""
    if not full:
        yield
        return
    conn.execute("PRAGMA synchronous=FULL")
    try:
        yield
    finally:
        conn.execute("PRAGMA synchronous=NORMAL")


class BatchWriter:
    """Rows queued from the event loop and written in batches by one task, off the request path.

    A batch is what was queued while the previous write ran, plus what arrives within
    `batch_wait` seconds of its first row (up to `batch_size`): one trip to the database thread
    and one transaction for many rows (a group commit). Writing each row as it came cost every
    request a thread hand-off, a commit and a wake-up of the event loop. `put_nowait` never
    waits: a full queue raises asyncio.QueueFull for the caller to count. `close` writes
    everything queued before it at once; `flush` writes what is queued now.

    A batch the database refuses for a passing reason (locked, disk full, an I/O error) is never
    dropped silently. With a `spill` file, refused rows go to disk (see gateway.storage.spill) and the
    queue keeps draining; the file is replayed, oldest rows first, when the database takes writes
    again (tried with backoff, even with no new rows) and on the next start. Without one, or when
    the spill file cannot take them either, the batch is kept in memory and retried with backoff
    while the queue behind it fills (and sheds); at `close` those retries stop after
    `close_timeout` seconds and what is still unwritten is logged and counted in `lost`.
    `waiting`, `spilled` and `last_error` say what is pending meanwhile.

    A row put with `acknowledge=True` gets a future that says when it is durable, for a caller
    that must not go on before (the traffic log's acknowledged mode): WRITTEN once the transaction
    holding it committed, with an fsync (SQLite's synchronous=FULL for that one transaction; the
    others keep NORMAL, which a process crash never undoes but a power loss may), SPILLED once it
    is in the spill file (fsynced too), LOST if it was dropped. Such a row does not wait for
    `batch_wait`, and every acknowledged row put before a batch is taken shares that batch's
    future: one commit and one wake-up for many waiting requests.
    """

    close_timeout = 10.0

    def __init__(
        self,
        db: SqliteThread,
        insert_sql: str,
        *,
        queue_size: int,
        batch_size: int,
        batch_wait: float = LOG_BATCH_WAIT_MS / 1000,
        to_row: Callable[[Any], tuple] = tuple,
        name: str = "rows",
        spill: SpillFile | None = None,
    ):
        self._db, self._insert, self._batch_size, self._to_row, self.name = db, insert_sql, batch_size, to_row, name
        self._batch_wait = batch_wait
        self._hurry = asyncio.Event()  # set by `flush` and `close`: a batch waiting for more rows goes at once
        self._queued = self._handled = 0  # rows put; rows written, spilled or lost (for `flush`)
        self._flushes: list[tuple[int, asyncio.Future]] = []
        # [position of the last acknowledged row, future]: one per batch-to-be, oldest first; the last
        # one takes new acknowledged rows while `_acks_open` (until the writer takes a batch).
        self._acks: list[list] = []
        self._acks_open = False
        self._spill = spill
        self._queue: asyncio.Queue = asyncio.Queue(queue_size)
        self._task: asyncio.Task | None = None
        self.written = 0
        self.waiting = 0  # rows of a batch refused by the database and by the spill file, kept in memory
        self.lost = 0
        self.last_error: str | None = None
        self._give_up_at: float | None = None
        self._replay_at = 0.0  # monotonic time of the next try to replay the spill file
        self._replay_pause = 0.1

    @property
    def spilled(self) -> int:
        """Rows on disk in the spill file, waiting for the database."""
        return self._spill.rows if self._spill is not None else 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._write_forever(), name=f"{self.name} writer")

    def put_nowait(self, item: Any, acknowledge: bool = False) -> asyncio.Future | None:
        """Queue a row; with `acknowledge`, the future of its durability (WRITTEN, SPILLED or LOST),
        shared with the other rows of its batch: await it through `asyncio.wait` or `shield`, since
        cancelling it would cancel theirs."""
        self._queue.put_nowait(item)
        self._queued += 1
        if not acknowledge:
            return None
        if self._acks_open:
            self._acks[-1][0] = self._queued
        else:
            self._acks.append([self._queued, asyncio.get_running_loop().create_future()])
            self._acks_open = True
        self._hurry.set()  # a caller waits on it: no batch wait
        return self._acks[-1][1]

    async def flush(self) -> None:
        """Return once every row queued before the call is written (or spilled, or counted lost), without
        the batch wait: for a reader that must find a row it just queued. A batch the database keeps
        refusing holds it up: bound it with a timeout."""
        target = self._queued
        if self._handled >= target or self._task is None:
            return
        done = asyncio.get_running_loop().create_future()
        self._flushes.append((target, done))
        self._hurry.set()
        await done

    def _settle_flushes(self, everything: bool = False) -> None:
        waiting = []
        for target, done in self._flushes:
            if done.done():
                continue
            if everything or self._handled >= target:
                done.set_result(None)
            else:
                waiting.append((target, done))
        self._flushes = waiting

    def _settle_acks(self, outcome: str, everything: bool = False) -> None:
        """Resolve the futures of acknowledged rows now handled (all of them at `close`: LOST if unwritten)."""
        while self._acks and (everything or self._acks[0][0] <= self._handled):
            target, done = self._acks.pop(0)
            if not done.done():
                done.set_result(outcome if target <= self._handled else LOST)
        self._acks_open = self._acks_open and bool(self._acks)

    def qsize(self) -> int:
        return self._queue.qsize()

    async def close(self) -> None:
        if self._task is not None:
            self._give_up_at = time.monotonic() + self.close_timeout
            self._hurry.set()
            await self._queue.put(None)  # after every row already queued
            try:
                await self._task
            finally:
                self._task = None
                self._settle_flushes(everything=True)
                self._settle_acks(LOST, everything=True)

    async def _write_forever(self) -> None:
        if self._spill is not None:
            await self._db.run(self._spill.recover)
        queue = self._queue
        while True:
            if self.spilled:
                try:
                    item = await asyncio.wait_for(queue.get(), max(0.0, self._replay_at - time.monotonic()))
                except asyncio.TimeoutError:
                    await self._flush([])  # nothing new: only the spill file to replay
                    continue
            else:
                item = await queue.get()
            if item is not None and self._batch_wait > 0 and queue.qsize() < self._batch_size:
                with contextlib.suppress(TimeoutError):  # what is queued meanwhile joins this batch
                    await asyncio.wait_for(self._hurry.wait(), self._batch_wait)
            if self._give_up_at is None:  # closing keeps it set: no later batch waits either
                self._hurry.clear()
            self._acks_open = False  # acknowledged rows from now on belong to a later batch
            batch, done = [], False
            while True:
                if item is None:
                    done = True
                    break
                batch.append(item)
                if len(batch) >= self._batch_size or queue.empty():
                    break
                item = queue.get_nowait()
            outcome = WRITTEN
            if batch or (done and self.spilled):
                outcome = await self._flush(batch, last=done) or WRITTEN  # a subclass's may say nothing
            self._handled += len(batch)
            self._settle_flushes()
            self._settle_acks(outcome)
            if done:
                if self.spilled:
                    log.warning("%s: %d rows stay in %s for the next start", self.name, self.spilled, self._spill.path)
                return

    async def _flush(self, batch: list, last: bool = False) -> str:
        """Write, spill or (at shutdown, after retries) lose a batch; which of WRITTEN, SPILLED, LOST."""
        # fsynced when an acknowledged row waits for this batch (a later commit's fsync covers the rows before it)
        sync = bool(self._acks) and self._acks[0][0] <= self._handled + len(batch)
        pause, tries = 0.1, 0
        while True:
            try:
                outcome = await self._db.run(lambda c: self._write(c, batch, last, sync))
            except (sqlite3.OperationalError, OSError) as exc:  # refused by the database and the spill file
                tries += 1
                self.waiting, self.last_error = len(batch), str(exc)
                if tries == 1:
                    log.warning("%s: %d rows refused (%s); retrying", self.name, len(batch), exc)
                if self._give_up_at is not None and time.monotonic() > self._give_up_at:
                    self._lose(batch, f"still refused at shutdown: {exc}")
                    return LOST
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            except Exception as exc:  # a batch that cannot even be made into rows: retrying would block the rest
                log.exception("%s: could not write %d rows", self.name, len(batch))
                self._lose(batch, str(exc))
                return LOST
            if tries:
                log.warning("%s: %d rows taken after %d refused tries", self.name, len(batch), tries)
            self.waiting = 0
            return outcome

    def _write(self, conn: sqlite3.Connection, batch: list, last: bool, sync: bool = False) -> str:
        """On the database's thread: replay the spill file when due, then write or spill the batch.

        Rows are made here: serialising (and redacting) a record is no work for the event loop. A
        replay is always fsynced, since the spill file is deleted after it; the batch when `sync`."""
        rows = [self._to_row(item) for item in batch]
        spill = self._spill
        if spill is not None and spill.rows and (last or time.monotonic() >= self._replay_at):
            with _synchronous_full(conn):
                self._replay(conn, spill)
        if spill is not None and spill.rows:  # still refused: behind the spilled rows, in order
            if rows:
                spill.append(rows)
            return SPILLED
        lost = self.lost
        try:
            with _synchronous_full(conn, sync):
                self.written += transaction(conn, lambda c: self._insert_rows(c, rows))
        except sqlite3.OperationalError as exc:  # locked, full, I/O: may pass
            if spill is None:
                raise
            self._refused(exc)
            spill.append(rows)
            return SPILLED
        self.last_error = None
        return WRITTEN if self.lost == lost else LOST

    def _replay(self, conn: sqlite3.Connection, spill: SpillFile) -> None:
        conn.execute("PRAGMA busy_timeout=0")  # a retry: a database still locked answers at once
        try:
            replayed = spill.replay(conn, self._insert_rows, time.time())
        except sqlite3.OperationalError as exc:
            self._refused(exc)
        else:
            self.written += replayed
            self._replay_pause, self.last_error = 0.1, None
            log.warning("%s: %d spilled rows written", self.name, replayed)
        finally:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def _insert_rows(self, conn: sqlite3.Connection, rows: list[tuple]) -> int:
        """Insert rows inside the caller's transaction; returns how many went in. A row the database
        can never take (not a passing refusal) is logged and counted lost, and costs no other row."""
        conn.execute("SAVEPOINT batch")
        try:
            conn.executemany(self._insert, rows)
            inserted = len(rows)
        except sqlite3.OperationalError:
            raise
        except Exception:
            conn.execute("ROLLBACK TO batch")
            inserted = 0
            for row in rows:
                try:
                    conn.execute(self._insert, row)
                    inserted += 1
                except sqlite3.OperationalError:
                    raise
                except Exception as exc:
                    self.lost += 1
                    log.error(
                        "%s: a row the database cannot take was dropped (%d lost so far): %s", self.name, self.lost, exc
                    )
        conn.execute("RELEASE batch")
        return inserted

    def _refused(self, exc: Exception) -> None:
        if self.last_error is None:
            log.warning(
                "%s: the database refused a write (%s); rows go to %s until it takes them",
                self.name,
                exc,
                self._spill.path,
            )
        self.last_error = str(exc)
        self._replay_at = time.monotonic() + self._replay_pause
        self._replay_pause = min(self._replay_pause * 2, 5.0)

    def _lose(self, batch: list, why: str) -> None:
        self.lost += len(batch)
        self.waiting = 0
        log.error("%s: %d rows lost (%d so far): %s", self.name, len(batch), self.lost, why)


def delete_requests(conn: sqlite3.Connection, table: str, request_ids: list[str], chunk: int = 500) -> int:
    """Delete a table's rows of the given request ids (an erasure), `chunk` ids a statement; the count."""
    removed = 0
    with conn:
        for i in range(0, len(request_ids), chunk):
            ids = request_ids[i : i + chunk]
            removed += conn.execute(
                f"DELETE FROM {table} WHERE request_id IN ({', '.join('?' for _ in ids)})", ids
            ).rowcount
    return removed
