"""BatchWriter's group commit: rows that arrive close together share one trip to the database."""

import asyncio
import time

from gateway.storage.sqlite import BatchWriter, SqliteThread

SCHEMA = "CREATE TABLE IF NOT EXISTS t (n INTEGER, text TEXT);"
INSERT = "INSERT INTO t (n, text) VALUES (?, ?)"


def counted(db: SqliteThread) -> list:
    """Record each call made on the database's thread."""
    calls, run = [], db.run

    async def counting(fn):
        calls.append(fn)
        return await run(fn)

    db.run = counting
    return calls


async def running_writer(tmp_path, **options) -> tuple[SqliteThread, BatchWriter]:
    """A database and a running writer into its table `t`."""
    db = SqliteThread(str(tmp_path / "db"), SCHEMA)
    await db.open()
    writer = BatchWriter(db, INSERT, queue_size=100, **options)
    writer.start()
    return db, writer


def test_rows_that_arrive_within_the_wait_are_written_in_one_transaction(tmp_path):
    async def scenario():
        db, writer = await running_writer(tmp_path, batch_size=50, batch_wait=1.0)
        calls = counted(db)
        for n in range(5):
            writer.put_nowait((n, "row"))
            await asyncio.sleep(0.01)  # one request after another, not one burst
        while writer.written < 5:
            await asyncio.sleep(0.01)
        await writer.close()
        writes = len(calls)
        rows = await db.run(lambda c: c.execute("SELECT n FROM t ORDER BY rowid").fetchall())
        await db.close()
        return writes, rows

    writes, rows = asyncio.run(scenario())
    assert rows == [(n,) for n in range(5)]
    assert writes == 1


def test_without_a_wait_each_lone_row_is_written_as_it_comes(tmp_path):
    async def scenario():
        db, writer = await running_writer(tmp_path, batch_size=50, batch_wait=0)
        calls = counted(db)
        for n in range(3):
            writer.put_nowait((n, "row"))
            while writer.written < n + 1:
                await asyncio.sleep(0.01)
        await writer.close()
        await db.close()
        return calls

    assert len(asyncio.run(scenario())) == 3


def test_a_full_batch_does_not_wait_and_close_writes_what_is_waiting(tmp_path):
    async def scenario():
        db, writer = await running_writer(tmp_path, batch_size=10, batch_wait=30.0)
        for n in range(13):
            writer.put_nowait((n, "row"))
        while writer.written < 10:  # ten were queued: written without the 30 s wait
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await writer.close()  # the last three are written now, not after the wait
        closed_in = time.monotonic() - started
        count = await db.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0])
        await db.close()
        return closed_in, count, writer.written

    closed_in, count, written = asyncio.run(scenario())
    assert count == written == 13
    assert closed_in < 30


def test_flush_writes_a_waiting_batch_now_for_a_reader_that_needs_its_rows(tmp_path):
    async def scenario():
        db, writer = await running_writer(tmp_path, batch_size=50, batch_wait=30.0)
        writer.put_nowait((1, "compared"))
        await asyncio.sleep(0.05)  # the writer now waits for more rows
        await asyncio.wait_for(writer.flush(), 5)
        found = await db.run(lambda c: c.execute("SELECT n FROM t").fetchall())
        writer.put_nowait((2, "next"))
        await asyncio.wait_for(writer.flush(), 5)
        await asyncio.wait_for(writer.flush(), 5)  # nothing queued since: at once
        found_again = await db.run(lambda c: c.execute("SELECT n FROM t ORDER BY n").fetchall())
        await writer.close()
        await db.close()
        return found, found_again

    found, found_again = asyncio.run(scenario())
    assert found == [(1,)]
    assert found_again == [(1,), (2,)]
