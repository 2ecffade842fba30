"""A file of rows the database refused, kept on disk until it takes them.

When the database refuses writes (another process holds its lock, its disk is full, an I/O error),
a writer appends its rows here instead of holding them in memory, so its queue keeps draining,
nothing is shed, and a crash or a shutdown loses nothing. The file is replayed into the database
when it takes writes again, and on the next start.

The file is JSON lines: a header naming this spill (a random id), then one row per line. A replay
inserts every row and records the id in the database in one transaction, then deletes the file;
a crash between the commit and the delete leaves a file whose id the database already holds, and
the next replay only deletes it. So each row is written exactly once. A torn last line (a crash
during an append) is skipped with a warning. Every method runs on the database's thread.

An append returns once its rows are on disk (fsynced, and a new file's directory entry too): a row
spilled is as durable as a row committed with an fsync, through a crash of the process or of the
machine, which is why the traffic log's acknowledged mode counts a spilled record as kept.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Callable

log = logging.getLogger("llmgate.spill")

SCHEMA = "CREATE TABLE IF NOT EXISTS replayed_spills (id TEXT PRIMARY KEY, rows INTEGER NOT NULL, ts REAL NOT NULL);"


def _sync_directory(path: Path) -> None:
    """fsync a directory; a failure is logged, not raised: the rows are on disk, and raising would make
    the caller append them again."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("%s: could not fsync the directory (%s): a power loss may lose the new spill file", path, exc)


class SpillFull(OSError):
    """The spill file reached its size bound."""


class SpillFile:
    def __init__(self, path: str, max_bytes: int):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.rows = 0  # rows in the file now, waiting for the database
        self._id: str | None = None
        self._size = 0

    def recover(self, conn: sqlite3.Connection) -> int:
        """Take up the rows a previous run left (none when there is no file); called once, at start.

        Only reads the database, so a database locked at start does not stop it. A file whose replay
        was committed but not deleted (a crash in between) is deleted now, so rows appended later
        can never hide behind an id the database already holds. A file damaged before its last
        line is moved aside (and logged) rather than guessed at."""
        if not self.path.exists():
            return 0
        try:
            spill_id, rows, _ = self._read()
        except ValueError as exc:
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            self.path.rename(aside)
            log.error("%s; moved to %s for a person to look at", exc, aside)
            return 0
        if spill_id is None:
            self.path.unlink()
            return 0
        if self._replayed(conn, spill_id):
            log.warning("%s: already replayed before a restart; deleting it", self.path)
            self.path.unlink()
            return 0
        self._id, self.rows, self._size = spill_id, len(rows), self.path.stat().st_size
        if self.rows:
            log.warning("%s: %d rows spilled by an earlier run wait for the database", self.path, self.rows)
        return self.rows

    @staticmethod
    def _replayed(conn: sqlite3.Connection, spill_id: str) -> bool:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'replayed_spills'").fetchone():
            return False
        return conn.execute("SELECT 1 FROM replayed_spills WHERE id = ?", (spill_id,)).fetchone() is not None

    def append(self, rows: list[tuple]) -> None:
        """Add rows, durably (fsync) before returning: the caller forgets them afterwards."""
        lines = "".join(json.dumps(row) + "\n" for row in rows)
        spill_id, header = self._id, ""
        if spill_id is None:
            spill_id = uuid.uuid4().hex
            header = json.dumps({"spill": spill_id}) + "\n"
        data = (header + lines).encode()
        if self._size + len(data) > self.max_bytes:
            raise SpillFull(f"spill file {self.path} is full ({self.max_bytes} bytes)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as out:
            try:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            except OSError:  # a short write (disk full) must not leave half a line before the next append
                out.truncate(self._size)
                raise
        self._id = spill_id
        self._size += len(data)
        self.rows += len(rows)
        if header:  # a new file: its name must outlive a crash of the machine too, not only its bytes
            _sync_directory(self.path.parent)

    def replay(
        self, conn: sqlite3.Connection, insert: Callable[[sqlite3.Connection, list[tuple]], int], now: float
    ) -> int:
        """Insert the spilled rows in one transaction (raises what the database raises), then delete
        the file. Returns what `insert` says went in."""
        if self._id is None:
            return 0
        conn.execute("BEGIN IMMEDIATE")  # first: a database that still refuses costs no read of the file
        try:
            conn.execute(SCHEMA)
            spill_id, rows, torn = self._read()
            done = self._replayed(conn, spill_id)
            inserted = 0
            if not done:
                inserted = insert(conn, rows)
                conn.execute("INSERT INTO replayed_spills (id, rows, ts) VALUES (?, ?, ?)", (spill_id, len(rows), now))
        except BaseException:
            if conn.in_transaction:  # a full disk has rolled it back already: keep its reason, not ROLLBACK's
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self.path.unlink(missing_ok=True)
        self._id, self.rows, self._size = None, 0, 0
        if torn:
            log.warning("%s: skipped a torn last line (a crash during a write)", self.path)
        return inserted

    def _read(self) -> tuple[str | None, list[tuple], bool]:
        """(the spill's id, its rows, whether a torn last line was skipped); no id when even the
        header is torn, and then no row in the file was ever acknowledged."""
        rows, torn, spill_id = [], False, None
        with open(self.path, "rb") as source:
            lines = source.read().split(b"\n")
        for n, line in enumerate(lines):
            if not line:
                continue
            try:
                value = json.loads(line)
            except ValueError:
                if any(lines[n + 1 :]):  # damage in the middle is not a torn append: refuse to guess
                    raise ValueError(f"{self.path}: line {n + 1} is not JSON") from None
                torn = True
                continue
            if spill_id is None:
                spill_id = value["spill"]
            else:
                rows.append(tuple(value))
        return spill_id, rows, torn
