"""The cache's measured precision: a sampled share of served semantic hits re-checked by a judge.

A semantic hit is served on the embedding's and the guards' word; whether it was right is only
known by asking. `Recheck` takes a `sample_rate` share of served semantic hits (by request id,
so a replay samples alike), puts each on a bounded queue (full: dropped and counted, never
waiting), and a worker asks the configured judge backend, off the request path, whether the
cached question's answer serves the new one. Each route keeps its last `window` verdicts; their
share of "same" is the route's measured precision (a gauge, the console, `llmgate status`).
When even its 95% upper bound (Wilson) falls below `floor`, with at least `min_checks` verdicts,
so noise alone does not trip it, the route stops serving
semantic hits (the exact tier still serves), and an audited event says why; clearing the
route's cache (`llmgate cache clear ROUTE`) starts it afresh.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from pydantic import BaseModel, ConfigDict, Field

from evaluators.judges import EquivalenceJudge
from evaluators.stats import wilson_interval
from gateway.context import sampled

log = logging.getLogger("llmgate.semantic_cache")


class RecheckSettings(BaseModel):
    """Re-check served semantic hits with a judge, and stop them on a route whose precision falls."""

    model_config = ConfigDict(extra="forbid")
    backend: str = Field(description="the configured backend that judges whether two questions are the same")
    sample_rate: float = Field(0.05, gt=0, le=1, description="share of served semantic hits re-checked")
    floor: float = Field(0.95, ge=0, le=1, description="measured precision under which a route stops semantic hits")
    min_checks: int = Field(50, ge=1, description="verdicts a route needs before the floor applies")
    window: int = Field(500, ge=1, description="the most recent verdicts per route that count")
    queue_size: int = Field(100, ge=1, description="hits waiting for a verdict; more are not re-checked (counted)")
    timeout_ms: float = Field(30_000, gt=0, description="a verdict slower than this is dropped (counted)")


@dataclass
class Check:
    route: str
    asked: str
    cached: str


class Recheck:
    """The sampled re-checks of one gateway's semantic hits, per route."""

    def __init__(
        self,
        settings: RecheckSettings,
        backend: Callable[[], Any],
        suspended: Callable[[str, str], Awaitable[None]],
    ):
        self.settings = settings
        self._backend = backend  # the judge backend of the current configuration (None if gone)
        self._suspended = suspended  # told once when a route stops serving semantic hits
        self.verdicts: dict[str, deque[bool]] = {}
        self.stopped: dict[str, str] = {}  # route -> why its semantic hits are off
        self.counts: Counter = Counter()
        self._queue: asyncio.Queue[Check] = asyncio.Queue(settings.queue_size)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._work(), name="semantic cache re-check")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def offer(self, request_id: str, route: str, asked: str, cached: str) -> None:
        """A semantic hit was served: re-check it if sampled; never waits."""
        if not sampled(self.settings.sample_rate, "recheck", request_id):
            return
        try:
            self._queue.put_nowait(Check(route, asked, cached))
        except asyncio.QueueFull:
            self.counts["dropped"] += 1

    def reset(self, route: str | None) -> None:
        """The route's cache was cleared: its verdicts were about entries that are gone."""
        for name in [route] if route is not None else list(self.verdicts):
            self.verdicts.pop(name, None)
            self.stopped.pop(name, None)

    def precision(self, route: str) -> dict[str, Any] | None:
        """The route's measured precision, its 95% interval and how many verdicts it rests on."""
        verdicts = self.verdicts.get(route)
        if not verdicts:
            return None
        same = sum(verdicts)
        low, high = wilson_interval(same, len(verdicts))
        return {"precision": same / len(verdicts), "interval": [low, high], "checks": len(verdicts)}

    def summary(self) -> dict[str, Any]:
        return {
            "routes": {route: self.precision(route) for route in self.verdicts},
            "stopped": dict(self.stopped),
            **self.counts,
        }

    async def _work(self) -> None:
        while True:
            check = await self._queue.get()
            backend = self._backend()
            if backend is None:
                self.counts["judge_unavailable"] += 1
                continue
            try:
                async with asyncio.timeout(self.settings.timeout_ms / 1000):
                    same = await EquivalenceJudge(backend).same(check.asked, check.cached)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a timeout, a failing judge, malformed output: no verdict
                self.counts["errors"] += 1
                log.warning("semantic cache: a re-check failed (%s)", type(exc).__name__)
                continue
            await self.record(check.route, same)

    async def record(self, route: str, same: bool) -> None:
        """One verdict; stop the route's semantic hits when its precision has fallen below the floor."""
        s = self.settings
        self.counts["same" if same else "different"] += 1
        verdicts = self.verdicts.setdefault(route, deque(maxlen=s.window))
        verdicts.append(same)
        measured = sum(verdicts) / len(verdicts)
        if route in self.stopped or len(verdicts) < s.min_checks:
            return
        _, upper = wilson_interval(sum(verdicts), len(verdicts))
        if upper >= s.floor:  # stopped on evidence, not on noise: even its 95% upper bound must be below
            return
        why = (
            f"measured precision {measured:.1%} over the last {len(verdicts)} re-checked semantic hits (95% at most "
            f"{upper:.1%}) is below the floor of {s.floor:.0%}: semantic hits stopped (exact hits still served) "
            "until the route's cache is cleared"
        )
        self.stopped[route] = why
        log.warning("semantic cache on route %s: %s", route, why)
        try:
            await self._suspended(route, why)
        except Exception as exc:  # the event could not be recorded: the stop stands, the worker goes on
            log.warning("semantic cache: could not record the stop (%s)", type(exc).__name__)
