"""The state store: small, durable, shared values (rollout percents, kill switches) and the audit events."""

from .base import StateStore
from .sqlite import SqliteStateStore


def open_state_store(settings) -> StateStore:
    """Redis when the config names one (replicas share it), else the embedded SQLite file."""
    if settings.redis_url:
        from .redis import RedisStateStore  # start-up: redis's client only when the config names one

        return RedisStateStore(settings.redis_url)
    return SqliteStateStore(settings.sqlite_path)


__all__ = ["StateStore", "SqliteStateStore", "open_state_store"]
