"""retrain_trigger: start a retraining job on a schedule, or when a route's scores drift down.

Per route: `every_seconds` starts a job that often; `drift` starts one when the mean of a score
(`judge_win_rate` by default, as reported through the `record_score` hook) over the last
`window_seconds` falls below `fraction` of the baseline's score: `baseline` when configured, else
the mean of the first full window seen (and again after each launch, so a retrained model sets
the new reference). Two guards hold every start: never within `min_interval_seconds` of the last
one, and never while the dataset has fewer than `min_examples` training examples; a route whose
last job is still moving is not started again either. Each skip is logged with its reason and
shown in /admin/status.

The launch goes through the `retrain` plugin (which must be enabled: it holds the provider
settings and polls the jobs). The last launch and the reference score live in the state store,
so a restart neither forgets the interval nor relearns the baseline; with several replicas only
the holder of the `retrain_trigger` lease decides, over the scores its own judge reported.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.background import stop_tasks
from gateway.hookspecs import hookimpl

from .plugin import MOVING, Retrain, describe
from .providers import dataset_size

log = logging.getLogger("llmgate.retrain_trigger")

KEY = "retrain_trigger:"
LEASE = "retrain_trigger"
MAX_SCORES = 100_000  # per route: the oldest go first


class Drift(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score: str = "judge_win_rate"
    variant: str | None = Field(None, description="only this variant's scores (default: every variant of the route)")
    fraction: float = Field(0.8, gt=0, le=1, description="drift when the window's mean < fraction x baseline")
    window_seconds: float = Field(3600.0, gt=0)
    min_samples: int = Field(20, ge=1, description="scores a window needs before it says anything")
    baseline: float | None = Field(None, description="the baseline score; unset: the first full window's mean")


class RouteTrigger(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str = Field(description="the dataset directory a job trains on (kept fresh by the dataset builder)")
    provider: Literal["bedrock", "openai"]
    base_model: str | None = None
    hyperparameters: dict[str, str | int | float] = {}
    every_seconds: float | None = Field(None, gt=0, description="start a job this often")
    drift: Drift | None = None
    min_interval_seconds: float = Field(86400.0, ge=0, description="never two starts closer than this")
    min_examples: int = Field(100, ge=1, description="never start with fewer training examples")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    routes: dict[str, RouteTrigger] = {}
    check_interval: float = Field(60.0, gt=0, description="seconds between checks")


async def every(interval: float, step, what: str) -> None:
    """Run `step()` every `interval` seconds for ever; a failing round is logged, the next one tries again."""
    while True:
        await asyncio.sleep(interval)
        try:
            await step()
        except Exception as exc:  # the store or a provider is away
            log.warning("%s failed: %s", what, exc)


def lease_seconds(interval: float) -> float:
    """How long a deciding replica's lease lasts: three rounds, at least 30 s, so a pause never splits it."""
    return max(3 * interval, 30)


def drift_reason(drift: Drift, scores, state: dict, now: float) -> str | None:
    """Whether the window's mean of (ts, value) `scores` drifted below `fraction` x the reference.

    The first full window sets the reference in `state` when none is configured (kept in the store)."""
    values = [v for ts, v in scores if now - drift.window_seconds < ts <= now]
    if len(values) < drift.min_samples:
        return None
    mean = sum(values) / len(values)
    reference = drift.baseline if drift.baseline is not None else state.get("reference")
    if reference is None:
        state["reference"], state["reference_at"] = mean, now  # the first full window is the baseline
        return None
    if mean < drift.fraction * reference:
        return (
            f"drift: {drift.score} {mean:.3f} over {len(values)} scores < {drift.fraction:g} x baseline {reference:.3f}"
        )
    return None


class RetrainTrigger:
    Settings = Settings
    DEFAULT_ENABLED = False  # starting training jobs costs money: opt in

    def __init__(self, settings: Settings):
        self.settings = settings
        self.gateway = None
        self.scores: dict[str, deque] = {route: deque(maxlen=MAX_SCORES) for route in settings.routes}
        self.last_decision: dict[str, str] = {}
        self._holder = f"gateway@{socket.gethostname()}:{os.getpid()}"
        self._task: asyncio.Task | None = None
        self.requires = ("retrain",) if settings.routes else ()  # it launches jobs through the retrain plugin
        self._retrain: Retrain | None = None

    @hookimpl
    def config_problems(self, config):
        problems = []
        for route, rule in self.settings.routes.items():
            if route not in config.settings.routes:
                problems.append(f"plugins.retrain_trigger.routes.{route}: no such route")
            if rule.every_seconds is None and rule.drift is None:
                problems.append(f"plugins.retrain_trigger.routes.{route}: set every_seconds, drift, or both")
        return problems

    @hookimpl
    async def startup(self, gateway):
        self.gateway = gateway
        self._retrain = gateway.plugin(Retrain)
        self._task = asyncio.create_task(self._check_forever(), name="retrain trigger")

    @hookimpl
    async def shutdown(self, gateway):
        await stop_tasks([self._task])

    @hookimpl
    def record_score(self, route, variant, name, value):
        """Only appends: the check reads the window later."""
        rule = self.settings.routes.get(route)
        if rule is None or rule.drift is None or name != rule.drift.score:
            return
        if rule.drift.variant is None or rule.drift.variant == variant:
            self.scores[route].append((time.time(), float(value)))

    @hookimpl
    def admin_status(self, gateway):
        return {"retrain_trigger": {"last_decision": self.last_decision}}

    async def _check_forever(self) -> None:
        await every(self.settings.check_interval, self.check_once, "retrain trigger check")

    async def check_once(self, now: float | None = None) -> dict[str, str]:
        """Decide for every route (when this replica holds the lease); {route: what was decided}."""
        now = time.time() if now is None else now
        store = self.gateway.store
        if not await store.acquire_lease(LEASE, self._holder, lease_seconds(self.settings.check_interval)):
            return {}
        decisions = {}
        for route, rule in self.settings.routes.items():
            state = await store.get(KEY + route) or {"first_seen": now}
            decision, state = await self._decide(route, rule, state, now)
            state["last_decision"] = decision
            await store.set(KEY + route, state)
            decisions[route] = self.last_decision[route] = decision
            log.info("retrain trigger %s: %s", route, decision)
        return decisions

    def _reason(self, route: str, rule: RouteTrigger, state: dict, now: float) -> str | None:
        """Why a job is due now (None: it is not)."""
        if (
            rule.every_seconds is not None
            and now - (state.get("last_launch") or state["first_seen"]) >= rule.every_seconds
        ):
            return f"schedule: every {rule.every_seconds:g}s"
        return drift_reason(rule.drift, self.scores[route], state, now) if rule.drift is not None else None

    async def _decide(self, route: str, rule: RouteTrigger, state: dict, now: float) -> tuple[str, dict]:
        reason = self._reason(route, rule, state, now)
        if reason is None:
            return "not due", state
        last = state.get("last_launch")
        if last is not None and now - last < rule.min_interval_seconds:
            return (
                f"{reason}; held: the last job started {now - last:.0f}s ago, "
                f"min_interval_seconds is {rule.min_interval_seconds:g}"
            ), state
        size = dataset_size(rule.dataset)
        if size < rule.min_examples:
            return (
                f"{reason}; held: the dataset has {size} training examples, min_examples is {rule.min_examples}",
                state,
            )
        retrain = self._retrain
        moving = [j["id"] for j in await retrain.launcher.jobs() if j["route"] == route and j["status"] in MOVING]
        if moving:
            return f"{reason}; held: job {moving[-1]} is still running", state
        try:
            job = await retrain.launcher.launch(
                rule.provider,
                rule.dataset,
                route,
                base_model=rule.base_model,
                hyperparameters=dict(rule.hyperparameters),
                origin=f"trigger: {reason}",
            )
        except Exception as exc:  # counts as a start for the interval: a refused launch is not retried in a loop
            state["last_launch"] = now
            problem = str(exc) if type(exc).__name__ == "RetrainError" else describe(exc)
            log.error("retrain trigger %s: the job did not start: %s", route, problem)
            return f"{reason}; the job did not start: {problem}", state
        state.update(last_launch=now, last_job=job["id"], reference=None, reference_at=None)
        self.scores[route].clear()  # the next reference is measured after this retraining
        return f"{reason}; started job {job['id']}", state
