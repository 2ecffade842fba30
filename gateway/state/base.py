"""What a state store offers, whichever engine holds it."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class StateStore(ABC):
    """JSON values under string keys, plus an append-only event log read newest first."""

    engine: str

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
    async def items(self, prefix: str = "") -> dict[str, Any]:
        """Every key starting with `prefix`, with its value."""

    @abstractmethod
    async def append_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """Record an event; returns it with `id` and `ts` added."""

    @abstractmethod
    async def events(self, limit: int = 100, **match: Any) -> list[dict[str, Any]]:
        """The newest events first, only those whose fields equal `match`."""
