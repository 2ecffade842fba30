"""The shared state store: Redis, so that every replica reads and writes the same rollout state."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from typing import Any

from redis.exceptions import ClusterDownError, RedisClusterException, WatchError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..background import stop_tasks
from ..errors import StoreUnavailable
from .base import StateStore
from .redis_connect import RedisClient, mget

log = logging.getLogger("llmgate.state")
PREFIX = "llmgate:state:"
EXPIRING_PREFIX = "llmgate:expiring:"  # apart from PREFIX: `items` never lists conversation state
EVENTS = "llmgate:events"
CHANNEL = "llmgate:changes"
LEASES = "llmgate:lease:"
# Renew a lease only for the holder that has it (a plain SET would take it from another holder).
EXTEND_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
MAX_EVENTS = 10_000
# What a Redis that is away raises: an operational state to report in a line, never a traceback. On a
# cluster also a cluster without a master for a slot (ClusterDownError), or none of its nodes answering
# (RedisClusterException: "cannot be connected"; redis-py raises it for more, all about reaching nodes).
AWAY = (RedisConnectionError, RedisTimeoutError, OSError, ClusterDownError, RedisClusterException)
UNREACHABLE = (*AWAY, TimeoutError, StoreUnavailable)


def _reachable(method):
    """Redis being unreachable is an operational state, not a bug: say so in the caller's terms."""

    @functools.wraps(method)
    async def call(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except AWAY as exc:
            raise StoreUnavailable(
                f"the state store (redis) is unreachable, nothing was changed: {type(exc).__name__}",
                code="state_store_unavailable",
            ) from None

    return call


class RedisStateStore(StateStore):
    engine = "redis"

    def __init__(self, url: str, max_connections: int = 32):
        super().__init__()
        self._url = url
        self._connection = RedisClient(url, decode_responses=True, max_connections=max_connections)
        self.mode = self._connection.mode  # "single", "cluster" or "sentinel" (redis_connect)
        self.client = self._connection.client
        self._extend_lease = self.client.register_script(EXTEND_LEASE)
        self._listener: asyncio.Task | None = None
        self._lost: str | None = None
        self._closing = False

    async def open(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="redis change listener")

    async def close(self) -> None:
        # redis-py can swallow a cancellation inside get_message, so the listener also checks a flag.
        self._closing = True
        await stop_tasks([self._listener])
        await self._connection.aclose()

    @property
    def degraded(self) -> str | None:
        return self._lost

    async def _listen(self) -> None:
        """Receive change notices; after a lost connection, reconnect and ask listeners to resync."""
        backoff, attempt = 0.1, 0
        while not self._closing:
            # Its own connection, pinged when idle so that a dead server is noticed within seconds; on a
            # cluster one node's (the next listed after a failure): PUBLISH reaches every node's subscribers.
            connection = RedisClient(
                self._url,
                decode_responses=True,
                max_connections=2,
                socket_timeout=None,
                health_check_interval=2,
                attempt=attempt,
                single_node=True,
            )
            attempt += 1
            pubsub = connection.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                if self._lost is not None:
                    log.warning("redis is back: resynchronising state")
                    self._lost = None
                    await self._notify({"kind": "resync"})
                backoff = 0.1
                while not self._closing:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        await self._notify(json.loads(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._lost is None:
                    self._lost = f"redis unreachable since {time.strftime('%H:%M:%S')}: {type(exc).__name__}"
                    log.warning("lost redis (%s): serving with the last state known", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                try:
                    await pubsub.aclose()
                    await connection.aclose()
                except Exception:
                    pass

    @_reachable
    async def update(self, key: str, change) -> tuple[Any | None, Any]:
        name = PREFIX + key
        async with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(name)
                    raw = await pipe.get(name)
                    old = None if raw is None else json.loads(raw)
                    new = change(old)
                    pipe.multi()
                    pipe.set(name, json.dumps(new))
                    await pipe.execute()
                    return old, new
                except WatchError:  # another writer changed it first: read again
                    continue

    @_reachable
    async def publish(self, message: dict[str, Any]) -> None:
        await self.client.publish(CHANNEL, json.dumps(message))

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:
            return False

    @_reachable
    async def get(self, key: str) -> Any | None:
        value = await self.client.get(PREFIX + key)
        return None if value is None else json.loads(value)

    @_reachable
    async def set(self, key: str, value: Any) -> None:
        await self.client.set(PREFIX + key, json.dumps(value))

    @_reachable
    async def delete(self, key: str) -> None:
        await self.client.delete(PREFIX + key)

    @_reachable
    async def put_expiring(self, key: str, value: Any, ttl_seconds: float) -> None:
        await self.client.set(EXPIRING_PREFIX + key, json.dumps(value), px=max(1, int(ttl_seconds * 1000)))

    @_reachable
    async def get_expiring(self, key: str) -> Any | None:
        value = await self.client.get(EXPIRING_PREFIX + key)
        return None if value is None else json.loads(value)

    @_reachable
    async def items(self, prefix: str = "") -> dict[str, Any]:
        keys = [k async for k in self.client.scan_iter(match=_glob_escape(PREFIX + prefix) + "*", count=500)]
        if not keys:
            return {}
        values = await mget(self.client, keys)  # on a cluster SCAN visits every master, MGET each slot
        return {k[len(PREFIX) :]: json.loads(v) for k, v in sorted(zip(keys, values)) if v is not None}

    @_reachable
    async def append_event(self, event: dict[str, Any]) -> dict[str, Any]:
        ts = event.get("ts") or time.time()
        event_id = await self.client.xadd(
            EVENTS, {"ts": ts, "body": json.dumps(event)}, maxlen=MAX_EVENTS, approximate=True
        )
        return {**event, "id": event_id, "ts": ts}

    @_reachable
    async def events(self, limit: int = 100, **match: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        last = "+"
        while len(found) < limit:
            batch = await self.client.xrevrange(EVENTS, max=last, count=200)
            if last != "+":
                batch = batch[1:]
            if not batch:
                break
            for event_id, fields in batch:
                event = json.loads(fields["body"])
                if all(event.get(k) == v for k, v in match.items()):
                    found.append({**event, "id": event_id, "ts": float(fields["ts"])})
                    if len(found) >= limit:
                        break
            last = batch[-1][0]
        return found

    async def acquire_lease(self, name: str, holder: str, ttl_seconds: float) -> bool:
        key, ttl_ms = LEASES + name, max(1, int(ttl_seconds * 1000))
        if await self.client.set(key, holder, nx=True, px=ttl_ms):
            return True
        return bool(await self._extend_lease(keys=[key], args=[holder, ttl_ms]))


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
