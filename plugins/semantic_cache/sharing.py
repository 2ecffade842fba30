"""Semantic-cache entries shared between replicas through one Redis stream.

Each replica appends what it stores (the answer, the question's text and its vector) and what it
clears to the stream `llmgate:cache:entries`, and tails the stream to apply what the others append,
so every replica's local index holds the same entries while lookups stay local (no network on the
request path). A replica that starts reads the stream's backlog first, so a new or restarted replica
begins warm. The stream is trimmed to about `max_entries` records, which bounds Redis's memory the
way `max_entries` bounds each replica's.

Redis being down never fails a request: a replica keeps serving and storing locally, counts what it
could not share, and picks the stream up where it left off when Redis answers again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

try:
    import numpy as np
except ImportError:  # no embeddings extra: only the exact tier runs, and it holds no vectors
    np = None

from gateway.background import stop_tasks

log = logging.getLogger("llmgate.semantic_cache")

STREAM = "llmgate:cache:entries"
PAGE = 500


@dataclass
class SharedEntry:
    """What a replica needs to index another replica's answer."""

    scope: str
    route: str
    exact_key: str
    text: str
    answer: dict[str, Any]
    expires_at: float
    vector: np.ndarray | None
    request_id: str | None


def _encode_entry(replica: str, e: SharedEntry) -> dict[str, Any]:
    fields = {
        "op": "add",
        "replica": replica,
        "scope": e.scope,
        "route": e.route,
        "exact": e.exact_key,
        "text": e.text,
        "answer": json.dumps(e.answer, separators=(",", ":")),
        "expires_at": repr(e.expires_at),
        "request_id": e.request_id or "",
    }
    if e.vector is not None:
        fields["vector"] = np.asarray(e.vector, dtype="<f4").tobytes()
    return fields


def _decode_entry(f: dict[bytes, bytes]) -> SharedEntry:
    text = lambda key: f[key].decode()  # noqa: E731
    vector = np.frombuffer(f[b"vector"], dtype="<f4").copy() if b"vector" in f else None
    return SharedEntry(
        text(b"scope"),
        text(b"route"),
        text(b"exact"),
        text(b"text"),
        json.loads(f[b"answer"]),
        float(f[b"expires_at"]),
        vector,
        text(b"request_id") or None,
    )


class SharedEntries:
    """One replica's end of the stream: `publish_*` to share, `run()` applies what the others share."""

    def __init__(
        self,
        url: str,
        max_entries: int,
        on_add: Callable[[SharedEntry], Awaitable[None]],
        on_clear: Callable[[str | None], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ):
        from gateway.state.redis_connect import RedisClient  # start-up: redis-py only when replicas share

        self.replica = uuid.uuid4().hex
        self.max_entries = max_entries
        self.on_add = on_add
        self.on_clear = on_clear
        self.clock = clock
        # Binary values (vectors), so not the state store's decoding client; one node, a cluster (one stream:
        # one slot) or a Sentinel's master, as the URL says.
        self._connection = RedisClient(url, decode_responses=False, max_connections=4, socket_timeout=10)
        self.client = self._connection.client
        self.last_id = "0-0"
        self.published = 0
        self.applied = 0
        self.unshared = 0
        self.problem: str | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self.synced = asyncio.Event()  # the backlog has been applied once

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="semantic cache sharing")

    async def close(self) -> None:
        # redis-py can swallow a cancellation inside a blocking read, so the loop also checks a flag.
        self._closing = True
        await stop_tasks([self._task])
        await self._connection.aclose()

    async def publish_add(self, entry: SharedEntry) -> None:
        await self._publish(_encode_entry(self.replica, entry))

    async def publish_clear(self, route: str | None) -> None:
        await self._publish({"op": "clear", "replica": self.replica, "route": route or ""})

    async def _publish(self, fields: dict[str, Any]) -> None:
        try:
            await self.client.xadd(STREAM, fields, maxlen=self.max_entries, approximate=True)
            self.published += 1
        except Exception as exc:  # Redis down: the entry stays local; say so once per outage
            self.unshared += 1
            self._lost(exc)

    def _lost(self, exc: Exception) -> None:
        if self.problem is None:
            log.warning(
                "semantic cache: entries are not shared while redis is unreachable (%s); "
                "serving from this replica's entries",
                type(exc).__name__,
            )
        self.problem = f"entries not shared: redis unreachable ({type(exc).__name__})"

    async def run(self) -> None:
        """Apply the backlog, then what the others append, for as long as the replica runs."""
        backoff = 0.2
        while not self._closing:
            try:
                if not self.synced.is_set():
                    await self._backlog()
                    self.synced.set()
                reply = await self.client.xread({STREAM: self.last_id}, count=PAGE, block=1000)
                for _, records in reply or ():
                    await self._apply(records)
                if self.problem is not None:
                    log.info("semantic cache: sharing entries through redis again")
                    self.problem = None
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._lost(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _backlog(self) -> None:
        while True:
            records = await self.client.xrange(STREAM, min=f"({self.last_id}", count=PAGE)
            if not records:
                return
            await self._apply(records)

    async def _apply(self, records: list) -> None:
        now = self.clock()
        for record_id, fields in records:
            self.last_id = record_id.decode() if isinstance(record_id, bytes) else record_id
            if fields.get(b"replica", b"").decode() == self.replica:
                continue  # our own: already in the local index
            op = fields.get(b"op")
            try:
                if op == b"add":
                    entry = _decode_entry(fields)
                    if entry.expires_at > now:
                        await self.on_add(entry)
                        self.applied += 1
                elif op == b"clear":
                    await self.on_clear(fields.get(b"route", b"").decode() or None)
                    self.applied += 1
            except (KeyError, ValueError) as exc:
                log.warning("semantic cache: skipped a malformed shared record %s (%s)", self.last_id, exc)

    def stats(self) -> dict[str, Any]:
        return {
            "replica": self.replica[:8],
            "published": self.published,
            "applied": self.applied,
            "unshared": self.unshared,
            "problem": self.problem,
        }
