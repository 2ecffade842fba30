"""The console's recent history: a bounded ring of per-variant figures, sampled off the request path.

GET /admin/status gives each variant's figures over auto_rollback's sliding window, one number per
figure; a chart needs a series. Every `interval` seconds a background task reads, from the same
per-second windows auto_rollback keeps (every replica's counts when they share Redis), the seconds
since the previous sample, and keeps the result in a deque of fixed length. Each sample covers only
its own seconds, so a spike shows where it happened instead of being smeared over a window. At
start the ring is back-filled from what the windows still hold, so a page opened now shows history.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from evaluators.stats import wilson_interval
from plugins.auto_rollback.windows import Figures, Windows, quantile

CACHE_VARIANT = "semantic_cache"  # cache hits are counted in the windows under the plugin's name


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def variant_figures(figures: Figures, seconds: int) -> dict[str, Any]:
    """What a chart plots for one variant over one sample's seconds."""
    judge = figures.score("judge_win_rate")
    return {
        "requests": figures.requests,
        "rps": round(figures.requests / max(seconds, 1), 3),
        "errors": figures.errors,
        "error_rate": _round(figures.error_rate, 4),
        "p50_ms": _round(quantile(figures.latency, 0.5), 1),
        "p95_ms": _round(figures.p95_ms, 1),
        "cost_per_request": _round(figures.cost_per_request, 8),
        "judge_win_rate": None if judge is None else round(judge[0], 4),
        "judge_n": 0 if judge is None else judge[2],
        # 95% intervals, so a table cell reads as the evidence it is (Wilson; a judge's ties split)
        "error_rate_interval": _band(wilson_interval(figures.errors, figures.requests)),
        "judge_interval": None if judge is None else _band(wilson_interval(judge[0] * judge[2], judge[2])),
    }


def _band(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else [round(interval[0], 4), round(interval[1], 4)]


class SeriesRing:
    """The last `capacity` samples, each {"t": end time, "seconds": span, "routes": {route: {...}}}.

    `current` holds each variant's figures over its route's rollback window (what auto-rollback
    judges), with the p50 that GET /admin/status leaves out, for the console's table."""

    def __init__(self, interval: float, capacity: int):
        self.interval = interval
        self.samples: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._next_second: int | None = None  # the first second the next sample covers
        self.current: dict[str, dict[str, dict[str, Any]]] = {}

    def since(self, after: float) -> list[dict[str, Any]]:
        return [s for s in self.samples if s["t"] > after]

    async def sample(self, windows: Windows, routes: dict[str, float], now: float | None = None) -> None:
        """Add the samples for every whole second since the last one (several at start: the back-fill).

        `routes` maps each route to its rollback window in seconds."""
        now = time.time() if now is None else now
        # Shared windows reach Redis up to a flush later: leave the newest second for the next sample.
        last = int(now) - (2 if windows.shared else 1)
        reach = int(min(windows.retention_seconds, self.interval * self.samples.maxlen))
        if self._next_second is None or self._next_second < last + 1 - reach:  # start, or a long stall
            self._next_second = last + 1 - reach
        step = max(1, int(round(self.interval)))
        pairs = sorted((r, v) for r, v in await windows.variants() if r in routes)
        while self._next_second <= last:
            first = self._next_second
            end = min(last, first + step - 1)
            sample_routes: dict[str, dict[str, Any]] = {}
            for route, variant in pairs:
                figures = await windows.read(route, variant, first, end)
                if figures.requests or figures.cost_n or figures.scores:
                    entry = sample_routes.setdefault(route, {"variants": {}})
                    entry["variants"][variant] = variant_figures(figures, end - first + 1)
            for entry in sample_routes.values():
                total = sum(v["requests"] for v in entry["variants"].values())
                hits = entry["variants"].get(CACHE_VARIANT, {}).get("requests", 0)
                entry["requests"] = total
                entry["cache_hit_rate"] = round(hits / total, 4) if total else None
            self.samples.append({"t": end + 1, "seconds": end - first + 1, "routes": sample_routes})
            self._next_second = end + 1
        current: dict[str, dict[str, dict[str, Any]]] = {}
        for route, variant in pairs:
            span = int(routes[route])
            figures = await windows.read(route, variant, last + 1 - span, last)
            if figures.requests or figures.cost_n or figures.scores:
                current.setdefault(route, {})[variant] = variant_figures(figures, span)
        self.current = current
