"""Stopping the background tasks that plugins and stores own."""

from __future__ import annotations

import asyncio
from typing import Iterable

STOP_SECONDS = 3.0


async def stop_tasks(tasks: Iterable[asyncio.Task | None], timeout: float = STOP_SECONDS) -> None:
    """Cancel `tasks` and wait for them, at most `timeout` seconds: redis-py can swallow a cancellation
    inside a call, so an unbounded wait could hang a shutdown (the loops also check a closing flag)."""
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    if live:
        await asyncio.wait(live, timeout=timeout)
