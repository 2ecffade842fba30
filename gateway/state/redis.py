"""The shared state store: Redis, so that every replica reads and writes the same rollout state."""
from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis

from .base import StateStore

PREFIX = "llmgate:state:"
EVENTS = "llmgate:events"
MAX_EVENTS = 10_000


class RedisStateStore(StateStore):
    engine = "redis"

    def __init__(self, url: str, max_connections: int = 32):
        # A blocking pool waits for a free connection under load instead of raising.
        self._pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=5,
                                                             socket_connect_timeout=2, socket_timeout=5,
                                                             decode_responses=True)
        self.client = aioredis.Redis(connection_pool=self._pool)

    async def close(self) -> None:
        await self.client.aclose()
        await self._pool.disconnect()

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:
            return False

    async def get(self, key: str) -> Any | None:
        value = await self.client.get(PREFIX + key)
        return None if value is None else json.loads(value)

    async def set(self, key: str, value: Any) -> None:
        await self.client.set(PREFIX + key, json.dumps(value))

    async def delete(self, key: str) -> None:
        await self.client.delete(PREFIX + key)

    async def items(self, prefix: str = "") -> dict[str, Any]:
        keys = [k async for k in self.client.scan_iter(match=_glob_escape(PREFIX + prefix) + "*", count=500)]
        if not keys:
            return {}
        values = await self.client.mget(keys)
        return {k[len(PREFIX):]: json.loads(v) for k, v in sorted(zip(keys, values)) if v is not None}

    async def append_event(self, event: dict[str, Any]) -> dict[str, Any]:
        ts = event.get("ts") or time.time()
        event_id = await self.client.xadd(EVENTS, {"ts": ts, "body": json.dumps(event)}, maxlen=MAX_EVENTS,
                                          approximate=True)
        return {**event, "id": event_id, "ts": ts}

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


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
