"""What a state store offers, whichever engine holds it."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any, Awaitable, Callable

from ..errors import StoreUnavailable

log = logging.getLogger("llmgate.state")
Listener = Callable[[dict[str, Any]], Awaitable[None] | None]


class StateStore(ABC):
    """JSON values under string keys, an append-only event log read newest first, and change notices.

    `publish` tells every gateway sharing the store (itself included) that something changed;
    listeners added with `subscribe` receive the message. A listener also receives
    `{"kind": "resync"}` when notices may have been missed (after a lost connection), and should
    then reload what it keeps in memory.
    """

    engine: str

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def _notify(self, message: dict[str, Any]) -> None:
        for listener in self._listeners:
            try:
                result = listener(message)
                if result is not None:
                    await result
            except StoreUnavailable as exc:  # the store went away again mid-resync: a state, not a bug
                log.warning("state change listener stopped on %r: %s", message, exc.message)
            except Exception:
                log.exception("state change listener failed on %r", message)

    @property
    def degraded(self) -> str | None:
        """Why the store is not fully working now (None when it is)."""
        return None

    async def open(self) -> None:
        """Connect and create what is missing."""

    async def close(self) -> None:
        """Release connections."""

    @abstractmethod
    async def ping(self) -> bool:
        """True when the store answers now."""

    @abstractmethod
    async def get(self, key: str) -> Any | None: ...

    @abstractmethod
    async def set(self, key: str, value: Any) -> None: ...

    @abstractmethod
    async def delete(self, key: str) -> None: ...

    @abstractmethod
    async def update(self, key: str, change: Callable[[Any | None], Any]) -> tuple[Any | None, Any]:
        """Atomically replace the value at `key` with `change(old)`; returns (old, new).

        `change` may run more than once (on a conflicting write) and must not have side effects."""

    @abstractmethod
    async def publish(self, message: dict[str, Any]) -> None:
        """Send a change notice to every gateway sharing this store."""

    @abstractmethod
    async def items(self, prefix: str = "") -> dict[str, Any]:
        """Every key starting with `prefix`, with its value."""

    @abstractmethod
    async def append_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """Record an event; returns it with `id` and `ts` added."""

    @abstractmethod
    async def events(self, limit: int = 100, **match: Any) -> list[dict[str, Any]]:
        """The newest events first, only those whose fields equal `match`."""

    @abstractmethod
    async def put_expiring(self, key: str, value: Any, ttl_seconds: float) -> None:
        """Keep `value` under `key` for `ttl_seconds` (apart from `get`/`set`'s keys): conversation state,
        which must not outlive its use."""

    @abstractmethod
    async def get_expiring(self, key: str) -> Any | None:
        """What `put_expiring` kept under `key`, None once it expired."""

    @abstractmethod
    async def acquire_lease(self, name: str, holder: str, ttl_seconds: float) -> bool:
        """Take or renew the lease `name` for `holder`: True while `holder` holds it, False while another does.

        A lease ends `ttl_seconds` after its last renewal, so a holder that stops (or loses the
        store) gives way to another by itself; renew well within the TTL to keep it."""
