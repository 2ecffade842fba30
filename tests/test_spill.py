"""The spill file: rows the database refused, kept on disk and written exactly once."""

import asyncio
import sqlite3

import pytest

from gateway.storage.spill import SpillFile, SpillFull
from gateway.storage.sqlite import BatchWriter, SqliteThread

SCHEMA = "CREATE TABLE IF NOT EXISTS t (n INTEGER, text TEXT);"


def insert(conn, rows):
    conn.executemany("INSERT INTO t (n, text) VALUES (?, ?)", rows)
    return len(rows)


def rows_in(conn):
    return conn.execute("SELECT n, text FROM t ORDER BY rowid").fetchall()


@pytest.fixture
def conn(tmp_path):
    c = sqlite3.connect(tmp_path / "db", isolation_level=None)
    c.executescript(SCHEMA)
    yield c
    c.close()


def test_rows_survive_a_new_process_and_a_torn_last_line_is_skipped(tmp_path, conn):
    path = tmp_path / "t.spill"
    spill = SpillFile(str(path), 1 << 20)
    spill.recover(conn)
    spill.append([(1, "a"), (2, "é ✓ 日本")])
    spill.append([(3, "c")])
    with open(path, "ab") as out:
        out.write(b'[4, "cut sho')  # a crash in the middle of an append
    again = SpillFile(str(path), 1 << 20)
    assert again.recover(conn) == 3
    assert again.replay(conn, insert, now=1.0) == 3
    assert rows_in(conn) == [(1, "a"), (2, "é ✓ 日本"), (3, "c")]
    assert not path.exists() and again.rows == 0


def test_a_replay_committed_but_not_deleted_is_never_written_twice(tmp_path, conn):
    path = tmp_path / "t.spill"
    spill = SpillFile(str(path), 1 << 20)
    spill.recover(conn)
    spill.append([(1, "a"), (2, "b")])
    kept = path.read_bytes()
    spill.replay(conn, insert, now=1.0)
    path.write_bytes(kept)  # as if the process died between the commit and the delete
    again = SpillFile(str(path), 1 << 20)
    assert again.recover(conn) == 0 and not path.exists()
    again.append([(3, "c")])  # rows spilled after the restart get a spill of their own
    assert again.replay(conn, insert, now=2.0) == 1
    assert rows_in(conn) == [(1, "a"), (2, "b"), (3, "c")]


def test_damage_before_the_last_line_is_moved_aside_not_guessed(tmp_path, conn):
    path = tmp_path / "t.spill"
    spill = SpillFile(str(path), 1 << 20)
    spill.recover(conn)
    spill.append([(1, "a")])
    path.write_bytes(path.read_bytes() + b'garbage\n[2, "b"]\n')
    again = SpillFile(str(path), 1 << 20)
    assert again.recover(conn) == 0 and not path.exists()
    [aside] = tmp_path.glob("t.spill.damaged-*")
    assert b"garbage" in aside.read_bytes(), "kept for a person to look at"
    again.append([(3, "c")])
    assert again.replay(conn, insert, now=1.0) == 1


def test_a_full_spill_refuses_whole_appends(tmp_path, conn):
    spill = SpillFile(str(tmp_path / "t.spill"), 100)
    spill.recover(conn)
    spill.append([(1, "a")])
    with pytest.raises(SpillFull):
        spill.append([(2, "b" * 200)])
    assert spill.rows == 1
    assert spill.replay(conn, insert, now=1.0) == 1 and rows_in(conn) == [(1, "a")]


def test_a_writer_whose_spill_is_full_keeps_the_batch_in_memory_and_writes_it_after_the_lock(tmp_path):
    async def scenario():
        db = SqliteThread(str(tmp_path / "db"), SCHEMA)
        await db.open()
        writer = BatchWriter(
            db,
            "INSERT INTO t (n, text) VALUES (?, ?)",
            queue_size=100,
            batch_size=10,
            spill=SpillFile(str(tmp_path / "t.spill"), 120),
        )
        writer.start()
        blocker = sqlite3.connect(tmp_path / "db", isolation_level=None, timeout=0)
        blocker.execute("BEGIN EXCLUSIVE")
        writer.put_nowait((1, "fits in the spill"))
        while not writer.spilled:
            await asyncio.sleep(0.05)
        writer.put_nowait((2, "does not fit: " + "x" * 100))
        while not writer.waiting:
            await asyncio.sleep(0.05)
        assert writer.spilled == 1 and writer.lost == 0
        blocker.execute("ROLLBACK")
        blocker.close()
        await writer.close()
        assert writer.spilled == 0 and writer.waiting == 0 and writer.lost == 0 and writer.written == 2
        rows = await db.run(rows_in)
        await db.close()
        return rows

    assert [n for n, _ in asyncio.run(scenario())] == [1, 2]


def test_a_row_the_database_can_never_take_is_counted_lost_and_costs_no_other_row(tmp_path):
    async def scenario():
        db = SqliteThread(str(tmp_path / "db"), SCHEMA)
        await db.open()
        writer = BatchWriter(
            db,
            "INSERT INTO t (n, text) VALUES (?, ?)",
            queue_size=100,
            batch_size=10,
            spill=SpillFile(str(tmp_path / "t.spill"), 1 << 20),
        )
        blocker = sqlite3.connect(tmp_path / "db", isolation_level=None, timeout=0)
        blocker.execute("BEGIN EXCLUSIVE")  # so the poisoned batch goes through the spill file too
        writer.start()
        for n, text in ((1, "a"), (2, "\ud800 no UTF-8 encoder writes this"), (3, "c")):
            writer.put_nowait((n, text))
        while writer.spilled < 3:
            await asyncio.sleep(0.05)
        blocker.execute("ROLLBACK")
        blocker.close()
        writer.put_nowait((4, "d"))
        writer.put_nowait((5, "\udfff"))
        await writer.close()
        rows = await db.run(rows_in)
        await db.close()
        return writer, rows

    writer, rows = asyncio.run(scenario())
    assert rows == [(1, "a"), (3, "c"), (4, "d")]
    assert writer.lost == 2 and writer.written == 3 and writer.spilled == 0
