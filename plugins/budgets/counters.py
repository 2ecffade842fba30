"""Spend counters for budgets: micro-dollars per scope and period, checked and reserved in one step.

A scope is a team (`team:<name>`), a key made at run time (`key:<id>`) or the whole gateway
(`gateway`); a period is a UTC day (`d:2026-12-03`) or month (`m:2026-12`). Before a request goes
out, its worst case (its prompt and every completion token it allows, at its route's dearest
backend's prices) is reserved against every budget that applies, atomically: if any would pass its
limit, nothing is reserved and the request is refused. After the answer the reservation is
corrected to the priced usage. So concurrent requests cannot together overshoot a budget by more
than what their estimates missed (a prompt whose tokens the characters / 4 rule undercounts).

`RedisSpend` keeps the counts in Redis (one Lua script a step, so replicas agree); `SqliteSpend` in
the SQLite state file, one transaction a step, for a node of several workers without Redis;
`LocalSpend` in this process (one process, or while Redis is unreachable).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

from gateway.state.redis_connect import tagged_prefix

PREFIX = "llmgate:spend:"
MICRO = 1_000_000

# KEYS: the counters of each budget. ARGV: the amount (micro-USD), then each budget's limit, then each
# counter's expiry (unix seconds). Returns {0, 0} when reserved, else {index of the refusing budget, its use}.
RESERVE = """
local n = #KEYS
local amount = tonumber(ARGV[1])
for i = 1, n do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if used + amount > tonumber(ARGV[1 + i]) then return {i, used} end
end
for i = 1, n do
  redis.call('INCRBY', KEYS[i], amount)
  redis.call('EXPIREAT', KEYS[i], ARGV[1 + n + i])
end
return {0, 0}
"""

# KEYS: counters. ARGV: the change (micro-USD, may be negative). Never below zero. Returns the new values.
ADJUST = """
local out = {}
for i = 1, #KEYS do
  local used = redis.call('INCRBY', KEYS[i], ARGV[1])
  if used < 0 then redis.call('SET', KEYS[i], 0) used = 0 end
  out[i] = used
end
return out
"""


@dataclass(frozen=True)
class Budget:
    """One limit on one scope for one period."""

    scope: str
    period: str  # "day" or "month"
    limit_usd: float
    forecast_usd: float  # what alerts are measured against (the limit unless stated)

    def key(self, now: float) -> str:
        return f"{PREFIX}{self.scope}:{period_of(self.period, now)}"


def period_of(period: str, now: float) -> str:
    t = time.gmtime(now)
    return time.strftime("d:%Y-%m-%d", t) if period == "day" else time.strftime("m:%Y-%m", t)


def period_end(period: str, now: float) -> float:
    """The unix time the period ends (UTC midnight, or the first of next month)."""
    if period == "day":
        return (int(now) // 86400 + 1) * 86400
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return datetime(year, month, 1, tzinfo=timezone.utc).timestamp()


def micro(usd: float) -> int:
    return int(round(usd * MICRO))


class LocalSpend:
    """The counters in this process."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    async def reserve(self, budgets: list[Budget], amount: int, now: float) -> tuple[Budget | None, int]:
        keys = [b.key(now) for b in budgets]
        for budget, key in zip(budgets, keys):
            if self.counts.get(key, 0) + amount > micro(budget.limit_usd):
                return budget, self.counts.get(key, 0)
        for key in keys:
            self.counts[key] = self.counts.get(key, 0) + amount
        return None, 0

    async def adjust(self, keys: list[str], delta: int) -> list[int]:
        out = []
        for key in keys:
            self.counts[key] = max(0, self.counts.get(key, 0) + delta)
            out.append(self.counts[key])
        return out

    async def used(self, key: str) -> int:
        return self.counts.get(key, 0)

    async def reset(self, key: str) -> None:
        self.counts.pop(key, None)


class SqliteSpend:
    """The counters in the node's SQLite state file, shared by its workers."""

    SCHEMA = "CREATE TABLE IF NOT EXISTS budget_spend (key TEXT PRIMARY KEY, micro INTEGER NOT NULL, expires REAL)"

    def __init__(self, store) -> None:
        self.store = store
        self._ready = False

    async def _run(self, fn):
        if not self._ready:
            await self.store.transact(lambda c: c.execute(self.SCHEMA))
            self._ready = True
        return await self.store.transact(fn)

    async def reserve(self, budgets: list[Budget], amount: int, now: float) -> tuple[Budget | None, int]:
        keys = [b.key(now) for b in budgets]

        def take(c):
            used = [_spent(c, key) for key in keys]
            for budget, spent in zip(budgets, used):
                if spent + amount > micro(budget.limit_usd):
                    return budget, spent
            for budget, key in zip(budgets, keys):
                _put(c, key, amount, period_end(budget.period, now) + 86400)
            return None, 0

        return await self._run(take)

    async def adjust(self, keys: list[str], delta: int) -> list[int]:
        def change(c):
            for key in keys:
                _put(c, key, delta, None)
            return [_spent(c, key) for key in keys]

        return await self._run(change)

    async def used(self, key: str) -> int:
        return await self._run(lambda c: _spent(c, key))

    async def reset(self, key: str) -> None:
        await self._run(lambda c: c.execute("DELETE FROM budget_spend WHERE key = ?", (key,)))


def _spent(c, key: str) -> int:
    row = c.execute("SELECT micro FROM budget_spend WHERE key = ?", (key,)).fetchone()
    return row[0] if row else 0


def _put(c, key: str, delta: int, expires: float | None) -> None:
    c.execute(
        "INSERT INTO budget_spend (key, micro, expires) VALUES (?, max(0, ?), ?) ON CONFLICT(key) DO UPDATE "
        "SET micro = max(0, micro + ?), expires = coalesce(excluded.expires, expires)",
        (key, delta, expires, delta),
    )


class RedisSpend:
    """The counters in Redis, shared by every replica."""

    def __init__(self, client) -> None:
        self.client = client
        self._reserve = client.register_script(RESERVE)
        self._adjust = client.register_script(ADJUST)
        # One script reserves against every budget a request meets (its team's, its key's, the gateway's),
        # so on a cluster all the counters share one slot: `{llmgate:spend}:team:x:d:...`.
        self._prefix = tagged_prefix(client, PREFIX)

    def _name(self, key: str) -> str:
        return self._prefix + key.removeprefix(PREFIX)

    async def reserve(self, budgets: list[Budget], amount: int, now: float) -> tuple[Budget | None, int]:
        keys = [self._name(b.key(now)) for b in budgets]
        limits = [micro(b.limit_usd) for b in budgets]
        ends = [int(period_end(b.period, now)) + 86400 for b in budgets]  # kept a day past its period
        refused, used = await self._reserve(keys=keys, args=[amount, *limits, *ends])
        return (budgets[int(refused) - 1], int(used)) if int(refused) else (None, 0)

    async def adjust(self, keys: list[str], delta: int) -> list[int]:
        return [int(v) for v in await self._adjust(keys=[self._name(k) for k in keys], args=[delta])]

    async def used(self, key: str) -> int:
        return int(await self.client.get(self._name(key)) or 0)

    async def reset(self, key: str) -> None:
        await self.client.delete(self._name(key))
