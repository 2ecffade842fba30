"""The counters behind team quotas: requests in the last minute and tokens used today.

Two engines with one contract. `RedisCounters` keeps the counts in Redis so every replica sees
the same numbers; each operation is one Lua script, so checking a limit and reserving against it
is atomic across replicas. `LocalCounters` keeps them in this process: the engine of a single node
(SQLite state), and each replica's stand-in while Redis is unreachable.

Requests per minute use a sliding log: the time of each admitted request in the last 60 s.
It is exact (no burst of twice the limit across a window boundary, as a fixed window allows) and
its memory is bounded by one minute of a team's requests. Tokens per day use a fixed window per
UTC day: a daily budget is read against the calendar, and one counter per team per day is cheap.
Redis scripts take the time from the Redis server, so replicas with skewed clocks agree.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

from gateway.state.redis_connect import hash_tag

WINDOW_SECONDS = 60.0
DAY_SECONDS = 86_400
KEY_PREFIX = "llmgate:quota:"

# KEYS: the team's request log (sorted set of admitted requests by time in ms), today's token count.
# ARGV: requests limit (0: none), window ms, tokens limit (0: none), tokens to reserve, a unique
# member for this request, the token count's TTL in seconds.
# Returns {admitted 1/0, refused by 1 requests / 2 tokens, ms until the oldest request leaves the
# window, requests in the window, tokens used today, the server's time in ms}.
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, window, tpd, estimate = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = 0
if oldest[2] then wait = tonumber(oldest[2]) + window - now end
if rpm > 0 and count >= rpm then
  return {0, 1, wait, count, used, now}
end
if tpd > 0 and used + estimate > tpd then
  return {0, 2, wait, count, used, now}
end
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('PEXPIRE', KEYS[1], window)
used = redis.call('INCRBY', KEYS[2], estimate)
redis.call('EXPIRE', KEYS[2], ARGV[6])
if count == 0 then wait = window end
return {1, 0, wait, count + 1, used, now}
"""

# KEYS: a token count. ARGV: the change (negative returns tokens), its TTL. Never below zero.
ADJUST = """
local used = redis.call('INCRBY', KEYS[1], ARGV[1])
if used < 0 then
  redis.call('SET', KEYS[1], 0)
  used = 0
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return used
"""

# KEYS: the request log, today's token count. ARGV: window ms.
# Returns {requests in the window, ms until the oldest leaves it (0: none), tokens used today}.
PEEK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = 0
if oldest[2] then wait = tonumber(oldest[2]) + window - now end
return {redis.call('ZCARD', KEYS[1]), wait, tonumber(redis.call('GET', KEYS[2]) or '0')}
"""


@dataclass
class Limits:
    requests_per_minute: int | None
    tokens_per_day: int | None

    def divided(self, replicas: int) -> "Limits":
        """Each replica's share while they cannot count together (rounded up: never zero)."""
        share = lambda limit: None if limit is None else max(1, math.ceil(limit / replicas))  # noqa: E731
        return Limits(share(self.requests_per_minute), share(self.tokens_per_day))


@dataclass
class Decision:
    admitted: bool
    refused_by: str | None  # "requests" or "tokens" when refused
    requests: int  # requests in the current window (this one included when admitted)
    tokens: int  # tokens used today (this reservation included when admitted)
    requests_reset: float  # seconds until the window's oldest request leaves it (0: window empty)
    day: str


@dataclass
class Usage:
    requests: int
    requests_reset: float
    tokens: int
    day: str


def day_of(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def seconds_to_midnight(now: float) -> float:
    """Until the next UTC midnight, when the daily token count starts again."""
    return (math.floor(now / DAY_SECONDS) + 1) * DAY_SECONDS - now


def _limit(value: int | None) -> int:
    return value or 0


class RedisCounters:
    """Counts in Redis, shared by every replica; each call is one atomic script."""

    def __init__(self, client):
        self._reserve = client.register_script(RESERVE)
        self._adjust = client.register_script(ADJUST)
        self._peek = client.register_script(PEEK)
        self._ping = client.ping
        self._client = client

    def _keys(self, team: str, day: str) -> list[str]:
        """A team's two keys, one script's: on a cluster `{team}` puts them in one slot."""
        team = hash_tag(self._client, team)
        return [f"{KEY_PREFIX}requests:{team}", f"{KEY_PREFIX}tokens:{team}:{day}"]

    async def ping(self) -> bool:
        return bool(await self._ping())

    async def reserve(self, team: str, limits: Limits, estimate: int, member: str, now: float) -> Decision:
        day = day_of(now)
        admitted, refused_by, wait_ms, count, used, _ = await self._reserve(
            keys=self._keys(team, day),
            args=[
                _limit(limits.requests_per_minute),
                int(WINDOW_SECONDS * 1000),
                _limit(limits.tokens_per_day),
                estimate,
                member,
                2 * DAY_SECONDS,
            ],
        )
        return Decision(
            bool(admitted),
            {1: "requests", 2: "tokens"}.get(int(refused_by)),
            int(count),
            int(used),
            max(0.0, int(wait_ms) / 1000),
            day,
        )

    async def adjust(self, team: str, day: str, delta: int) -> None:
        await self._adjust(keys=[self._keys(team, day)[1]], args=[delta, 2 * DAY_SECONDS])

    async def usage(self, team: str, now: float) -> Usage:
        day = day_of(now)
        count, wait_ms, used = await self._peek(keys=self._keys(team, day), args=[int(WINDOW_SECONDS * 1000)])
        return Usage(int(count), max(0.0, int(wait_ms) / 1000), int(used), day)


class LocalCounters:
    """The same counts kept in this process (one node, or a replica cut off from Redis)."""

    def __init__(self) -> None:
        self._requests: dict[str, deque[float]] = {}
        self._tokens: dict[tuple[str, str], int] = {}
        self._today = ""

    def clear(self) -> None:
        self._requests.clear()
        self._tokens.clear()

    def _window(self, team: str, now: float) -> deque[float]:
        times = self._requests.setdefault(team, deque())
        while times and times[0] <= now - WINDOW_SECONDS:
            times.popleft()
        return times

    def _roll_day(self, today: str) -> None:
        """Forget the token counts of past days once a new day starts."""
        if today != self._today:
            self._tokens = {key: used for key, used in self._tokens.items() if key[1] >= today}
            self._today = today

    def reserve(self, team: str, limits: Limits, estimate: int, member: str, now: float) -> Decision:
        day = day_of(now)
        self._roll_day(day)
        times = self._window(team, now)
        used = self._tokens.get((team, day), 0)
        wait = times[0] + WINDOW_SECONDS - now if times else 0.0
        if limits.requests_per_minute and len(times) >= limits.requests_per_minute:
            return Decision(False, "requests", len(times), used, wait, day)
        if limits.tokens_per_day and used + estimate > limits.tokens_per_day:
            return Decision(False, "tokens", len(times), used, wait, day)
        times.append(now)
        self._tokens[(team, day)] = used + estimate
        return Decision(True, None, len(times), used + estimate, wait or WINDOW_SECONDS, day)

    def adjust(self, team: str, day: str, delta: int) -> None:
        self._tokens[(team, day)] = max(0, self._tokens.get((team, day), 0) + delta)

    def usage(self, team: str, now: float) -> Usage:
        day = day_of(now)
        times = self._window(team, now)
        wait = times[0] + WINDOW_SECONDS - now if times else 0.0
        return Usage(len(times), wait, self._tokens.get((team, day), 0), day)
