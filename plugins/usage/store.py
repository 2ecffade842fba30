"""Where usage lives: one aggregate per UTC day, team, key, route and variant (requests, prompt,
completion, cache-read and cache-write tokens, USD), in the state store.

`SqliteUsage` keeps them in the embedded state file (table `usage_daily`), fed one of two ways:

- from the traffic log, when it is on (`roll_up`): the log's rows after the last one counted are
  summed on a read-only connection, then added in one transaction of the state file that also moves
  the mark (`usage_marks`, one per log file). A logged exchange is counted once, and only a logged
  one: a crash loses the same exchanges from usage as from the log (none in its `acknowledged`
  mode), and the log's write path is left as it is (no trigger, no second table in its transaction).
- from the requests (`add`), a `Tally` written every `flush_seconds`.

`RedisUsage` keeps them in Redis, for replicas that share one (`state.redis_url`): one hash a day,
`llmgate:usage:<day>`, a field per aggregate and measure (`team␟key␟route␟variant␟measure`), added
to by one MULTI per flush of a replica's tally, so a query on any replica sees the whole gateway.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from gateway.state.redis_connect import tagged_prefix

log = logging.getLogger("llmgate.usage")

MEASURES = ("requests", "prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd")
COST = MEASURES.index("cost_usd")
# An aggregate's key: (day, team, key, route, variant); "" where there is none (no team, no key).
Key = tuple[str, str, str, str, str]
CHUNK = 20_000  # log rows summed in one pass: a backlog (the first start) is caught up in steps
PASS_SECONDS = 2.0  # how long one roll-up may go on before the next query or flush takes its turn

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS usage_daily (
    day TEXT NOT NULL, team TEXT NOT NULL, key TEXT NOT NULL, route TEXT NOT NULL, variant TEXT NOT NULL,
    requests INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL, cache_write_tokens INTEGER NOT NULL, cost_usd REAL NOT NULL,
    PRIMARY KEY (day, team, key, route, variant)) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS usage_marks (source TEXT PRIMARY KEY, last_id INTEGER NOT NULL)",
)
_UPSERT = (
    f"INSERT INTO usage_daily (day, team, key, route, variant, {', '.join(MEASURES)}) "
    f"VALUES ({', '.join('?' for _ in range(5 + len(MEASURES)))}) "
    "ON CONFLICT (day, team, key, route, variant) DO UPDATE SET "
    + ", ".join(f"{m} = {m} + excluded.{m}" for m in MEASURES)
)
_READ = f"SELECT day, team, key, route, variant, {', '.join(MEASURES)} FROM usage_daily WHERE day >= ? AND day <= ?"
# The log's rows as aggregates: what plugin.measures() takes from a request, read from its record. The key's
# name is the usage plugin's annotation; the cache tokens are in the stored answer (none with `bodies: false`).
_FROM_LOG = """
SELECT date(ts, 'unixepoch'), coalesce(tenant, ''), coalesce(json_extract(annotations, '$.usage.key'), ''), route,
    coalesce(variant, served_by, ''), count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
    coalesce(sum(json_extract(response, '$.usage.prompt_tokens_details.cached_tokens')), 0),
    coalesce(sum(json_extract(response, '$.usage.cache_creation_input_tokens')), 0), coalesce(sum(cost_usd), 0.0)
FROM traffic WHERE id > ? AND id <= ? GROUP BY 1, 2, 3, 4, 5
"""


class Tally:
    """Usage counted on the request path (a dict update), taken whole by each flush."""

    def __init__(self) -> None:
        self.counts: dict[Key, list] = {}

    def __len__(self) -> int:
        return len(self.counts)

    def add(self, key: Key, values) -> None:
        found = self.counts.get(key)
        if found is None:
            self.counts[key] = list(values)
        else:
            for i, value in enumerate(values):
                found[i] += value

    def take(self) -> dict[Key, list]:
        counts, self.counts = self.counts, {}
        return counts

    def put_back(self, counts: dict[Key, list]) -> None:
        """A flush that failed: its counts go with the next one."""
        for key, values in counts.items():
            self.add(key, values)


def days(first: str, last: str) -> list[str]:
    """Every UTC day from `first` to `last`, both included."""
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(n)).isoformat() for n in range((end - start).days + 1)]


def read_log(path: str, after: int, chunk: int = CHUNK) -> tuple[int, int | None, list[tuple]]:
    """(The log's newest row id, the last id summed, the sums of the rows after `after`); None as the
    last id when the log holds fewer rows than were counted (a new file)."""
    conn = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        newest = conn.execute("SELECT coalesce(max(id), 0) FROM traffic").fetchone()[0]
        if newest < after:
            return newest, None, []
        upto = min(newest, after + chunk)
        return newest, upto, conn.execute(_FROM_LOG, (after, upto)).fetchall() if upto > after else []
    finally:
        conn.close()


def _mark(c: sqlite3.Connection, source: str) -> int:
    row = c.execute("SELECT last_id FROM usage_marks WHERE source = ?", (source,)).fetchone()
    return row[0] if row else 0


class SqliteUsage:
    """The aggregates in the embedded state file."""

    engine = "sqlite"

    def __init__(self, store) -> None:
        self.store = store
        self._ready = False

    async def _run(self, fn):
        if not self._ready:
            await self.store.transact(lambda c: [c.execute(statement) for statement in SCHEMA])
            self._ready = True
        return await self.store.transact(fn)

    async def add(self, counts: dict[Key, list]) -> None:
        rows = [(*key, *values) for key, values in counts.items()]
        await self._run(lambda c: c.executemany(_UPSERT, rows))

    async def read(self, first: str, last: str, team: str | None) -> list[tuple]:
        sql, params = (_READ, (first, last)) if team is None else (_READ + " AND team = ?", (first, last, team))
        return await self._run(lambda c: c.execute(sql, params).fetchall())

    async def prune(self, before: str) -> None:
        await self._run(lambda c: c.execute("DELETE FROM usage_daily WHERE day < ?", (before,)))

    async def roll_up(self, path: str, seconds: float = PASS_SECONDS) -> bool:
        """Add the log's rows not counted yet, for about `seconds` at most; whether it caught up (a long
        backlog, a first start on a large log, goes on at the next call)."""
        source, deadline = str(Path(path).resolve()), time.monotonic() + seconds
        while True:
            mark = await self._run(lambda c: _mark(c, source))
            newest, upto, rows = await asyncio.to_thread(read_log, path, mark)
            if upto is None:
                log.warning("usage: %s holds fewer rows than were counted from it: a new log, counted anew", path)
                upto = 0
            if upto == mark:
                return True
            if await self._run(lambda c: _apply(c, source, mark, upto, rows)) and upto >= newest:
                return True
            if time.monotonic() > deadline:
                return False
            # more rows, or another process of the node counted these first: read on from the mark


def _apply(c: sqlite3.Connection, source: str, expected: int, upto: int, rows: list[tuple]) -> bool:
    """Add `rows` and move the mark to `upto`, unless the mark moved since it was read."""
    if _mark(c, source) != expected:
        return False
    c.executemany(_UPSERT, rows)
    c.execute(
        "INSERT INTO usage_marks (source, last_id) VALUES (?, ?) ON CONFLICT (source) DO UPDATE SET last_id = ?",
        (source, upto, upto),
    )
    return True


PREFIX = "llmgate:usage:"
SEPARATOR = "\x1f"
_POSITION = {measure: i for i, measure in enumerate(MEASURES)}


class RedisUsage:
    """The aggregates in Redis, shared by every replica."""

    engine = "redis"

    def __init__(self, client, keep_days: int | None) -> None:
        self.client = client
        self.keep_days = keep_days
        # One MULTI adds a flush's days (two across midnight): on a cluster every day's hash shares a slot.
        self._prefix = tagged_prefix(client, PREFIX)

    async def add(self, counts: dict[Key, list]) -> None:
        pipe = self.client.pipeline(transaction=True)
        for (day, *names), values in counts.items():
            base = SEPARATOR.join(names) + SEPARATOR
            for measure, value in zip(MEASURES, values):
                if value:
                    increment = pipe.hincrbyfloat if measure == "cost_usd" else pipe.hincrby
                    increment(self._prefix + day, base + measure, value)
        if self.keep_days is not None:
            for day in {key[0] for key in counts}:
                start = datetime.combine(date.fromisoformat(day), datetime.min.time(), timezone.utc).timestamp()
                pipe.expireat(self._prefix + day, int(start) + (self.keep_days + 1) * 86400)
        await pipe.execute()

    async def read(self, first: str, last: str, team: str | None) -> list[tuple]:
        wanted = days(first, last)
        pipe = self.client.pipeline(transaction=False)
        for day in wanted:
            pipe.hgetall(self._prefix + day)
        sums: dict[Key, list] = {}
        for day, fields in zip(wanted, await pipe.execute()):
            for field, value in fields.items():
                *names, measure = field.split(SEPARATOR)
                if len(names) != 4 or measure not in _POSITION or (team is not None and names[0] != team):
                    continue
                values = sums.setdefault((day, *names), [0] * COST + [0.0])
                values[_POSITION[measure]] += float(value) if measure == "cost_usd" else int(value)
        return [(*key, *values) for key, values in sums.items()]

    async def prune(self, before: str) -> None:
        """Nothing to do: each day's hash expires `keep_days` after it (EXPIREAT at each flush)."""
