"""auto_rollback: judge each live candidate against its baseline, pull the ones that fail, and walk
staged rollout schedules (5 -> 25 -> 50 -> 100) whose steps advance only when their analysis passes.

How it decides, after Argo Rollouts and Flagger: an analysis of a candidate over a span of time
ends Successful, Failed or Inconclusive. A rule needs `min_samples` before it may fail, and
missing data never fails. An error-rate rise must also be significant (a one-sided
two-proportion test) and a p95 rise must be carried by significantly more than 5% of the
candidate's calls, so a few stray errors or a noisy tail do not pull a healthy candidate. A rule
fires after `failure_limit` failing evaluations in a row: rollback time is about
interval_seconds x failure_limit, promotion time hold_seconds x steps.

Who decides: every replica counts its traffic (plugins.auto_rollback.windows, flushed to Redis when shared);
the one replica holding the `auto_rollback` lease in the state store evaluates and advances
schedules; another takes over when the lease lapses. Acting goes through the rollout plugin
(rollback, set_percent), which audits, announces the change to every replica and calls the
webhooks, so a rolled-back candidate stays out until an operator re-enables it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from gateway.admin import actor, audit, read_body
from gateway.background import stop_tasks
from gateway.errors import GatewayError, InvalidRequest, NotFound
from gateway.gateway import GATEWAY
from gateway.hookspecs import hookimpl
from gateway.state.redis import UNREACHABLE
from plugins.rollout.plugin import Rollout

from .analysis import FAILED, INCONCLUSIVE, SUCCESSFUL, Analysis, Policy, Settings, analyse
from .evidence import Evidence, judge_step, summary
from .windows import Figures, Windows

log = logging.getLogger("llmgate.auto_rollback")
LEASE = "auto_rollback"
SCHEDULE_KEY = "schedule:"
RUNNING, PAUSED, ABORTED, DONE = "running", "paused", "aborted", "done"
FIXED, ADAPTIVE = "fixed", "adaptive"
MAX_HOLD = 86_400


# --- the plugin ---------------------------------------------------------------------------------


class ScheduleConflict(GatewayError):
    status, type = 409, "invalid_request_error"
    retry = False  # the same request conflicts again


def _brief(schedule: dict | None) -> dict | None:
    if not schedule:
        return None
    return {"status": schedule["status"], "step": schedule["step"] + 1, "percent": schedule["steps"][schedule["step"]]}


class AutoRollback:
    Settings = Settings
    uses = ("rollout",)  # it rolls back through the rollout plugin, when that is on: started after it

    def __init__(self, settings: Settings):
        self.settings = settings
        self.windows = Windows()
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.gateway = None
        self.rollout = None
        self.figures: dict[str, dict[str, dict]] = {}  # route -> variant -> window figures
        self.evaluations: dict[str, dict[str, dict]] = {}  # route -> candidate -> last verdict
        self.schedules: dict[str, dict] = {}
        self.decisions: dict[str, dict] = {}  # route -> the adaptive schedule's latest decision
        self._policies: dict[str, Policy] = {}
        self._lease_until = 0.0  # time.monotonic() when our lease ends
        self._active_since: dict[tuple[str, str], float] = {}
        self._failing: dict[tuple[str, str], int] = {}
        self._first_tick = True
        self._cache: dict[tuple, Figures] = {}
        self._tasks: list[asyncio.Task] = []  # loops that live as long as the gateway
        self._closing = False
        self._store_problem: str | None = None
        self._flush_problem: str | None = None

    @property
    def leader(self) -> bool:
        return time.monotonic() < self._lease_until

    def policy(self, route: str) -> Policy:
        if route not in self._policies:
            self._policies[route] = self.settings.policy(route)
        return self._policies[route]

    # --- lifetime -------------------------------------------------------------------------------

    @hookimpl
    async def startup(self, gateway):
        self.gateway = gateway
        self.rollout = gateway.plugin(Rollout)
        if self.rollout is None:
            log.warning("auto_rollback needs the rollout plugin, which is disabled: nothing will be judged")
            return
        if gateway.store.engine == "redis":
            self.windows.redis = gateway.store.client
            self._tasks.append(asyncio.create_task(self._flush_forever(), name="auto_rollback flush"))
        self.windows.retention_seconds = self._retention()
        gateway.store.subscribe(self._on_change)
        try:
            await self._load_schedules()
        except Exception as exc:
            log.warning("could not read rollout schedules at start-up: %s", exc)
        self._tasks.append(asyncio.create_task(self._evaluate_forever(), name="auto_rollback evaluate"))

    @hookimpl
    async def shutdown(self, gateway):
        # redis-py can swallow a cancellation inside a call, so the loops also check a flag.
        self._closing = True
        await stop_tasks(self._tasks)
        try:
            await self.windows.flush()
        except Exception as exc:
            log.warning("last window counts not sent: %s", exc)

    # --- counting (the request path: memory only) ----------------------------------------------

    @hookimpl
    def after_response(self, ctx):
        """Count every backend attempt, so a candidate's failures are not hidden by a fallback's success."""
        route = ctx.route_name
        if not ctx.attempts:
            if ctx.served_by:  # a plugin answered (a cache hit): counted under its own name, never a backend's
                self.windows.record_attempt(route, ctx.served_by, ctx.status, ctx.latency_ms)
                if ctx.cost_usd is not None:
                    self.windows.record_cost(route, ctx.served_by, ctx.cost_usd)
            return
        last = len(ctx.attempts) - 1
        for i, attempt in enumerate(ctx.attempts):
            status, latency = attempt.status, attempt.latency_ms
            if i == last and attempt.backend == ctx.served_by and status < 400:
                if ctx.error is not None and ctx.status != 499:  # the stream broke after it started
                    status = ctx.status
                elif ctx.stream and ctx.latency_ms is not None:  # the attempt timed only the stream's start
                    latency = max(latency, ctx.latency_ms - sum(a.latency_ms for a in ctx.attempts[:-1]))
            self.windows.record_attempt(route, attempt.backend, status, latency)
        if ctx.served_by and ctx.cost_usd is not None:
            self.windows.record_cost(route, ctx.served_by, ctx.cost_usd)
        if ctx.served_by and ctx.ttft_ms is not None and ctx.error is None:
            self.windows.record_ttft(route, ctx.served_by, ctx.ttft_ms)

    @hookimpl
    def record_score(self, route, variant, name, value):
        self.windows.record_score(route, variant, name, float(value))

    # --- the loop ----------------------------------------------------------------------------------

    async def _flush_forever(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.settings.flush_seconds)
            try:
                await self.windows.flush()
                self._flush_problem = None
            except Exception as exc:
                if self._flush_problem is None:
                    log.warning("%s; keeping the counts to send later", exc)
                self._flush_problem = str(exc)

    async def _evaluate_forever(self) -> None:
        while not self._closing:
            try:
                await self.tick()
                if self._store_problem is not None:
                    log.warning("auto-rollback evaluates again")
                self._store_problem = None
            except Exception as exc:  # the state store is away, most likely: the lease lapses meanwhile
                if self._store_problem is None:
                    log.warning(
                        "auto-rollback evaluation failed, retrying each interval: %r",
                        exc,
                        exc_info=None if isinstance(exc, UNREACHABLE) else exc,
                    )
                self._store_problem = repr(exc)
            await asyncio.sleep(self.settings.interval_seconds)

    async def tick(self) -> None:
        """One round: renew the lease, refresh the figures, and, as leader, judge and advance schedules."""
        if not self.rollout.routes:
            return  # the rollout plugin has not loaded its state yet
        now = time.time()
        self._cache = {}
        self.windows.retention_seconds = self._retention()
        self.windows.prune(now)
        await self._renew_lease()
        await self._refresh_figures(now)
        self._track_active(now)
        if self.leader:
            await self._evaluate(now)
            await self._advance_schedules(now)
        self._first_tick = False

    def _retention(self) -> float:
        longest = max([self.policy(r).window_seconds for r in self.gateway.config.settings.routes] or [0])
        hold = max(
            [
                s.get("hold_seconds", 0)
                for s in self.schedules.values()
                if isinstance(s, dict) and s.get("status") in (RUNNING, PAUSED)  # an ended one needs no seconds
            ]
            or [0]
        )
        # an adaptive step is judged on all its seconds so far (at most hold_seconds, its time limit)
        return max(longest, hold) + 60

    async def _renew_lease(self) -> None:
        ttl = max(3 * self.settings.interval_seconds, 1.0)
        asked = time.monotonic()
        was = self.leader
        try:
            held = await self.gateway.store.acquire_lease(LEASE, self.holder, ttl)
        except Exception as exc:
            if was:
                log.warning("cannot renew the auto-rollback lease (%s): no longer evaluating", exc)
            held = False
        self._lease_until = asked + ttl if held else 0.0
        if held != was:
            log.info(
                "auto-rollback: this replica (%s) %s the leader", self.holder, "is now" if held else "is no longer"
            )

    async def _read(self, route: str, variant: str, since: float, until: float) -> Figures:
        key = (route, variant, since, until)
        if key not in self._cache:
            self._cache[key] = await self.windows.read(route, variant, since, until)
        return self._cache[key]

    async def _refresh_figures(self, now: float) -> None:
        routes = self.gateway.config.settings.routes
        figures: dict[str, dict[str, dict]] = {}
        for route, variant in sorted(await self.windows.variants()):
            if route in routes:
                found = await self._read(route, variant, now - self.policy(route).window_seconds, now)
                if found.requests or found.cost_n or found.scores:
                    figures.setdefault(route, {})[variant] = found.summary()
        self.figures = figures

    def _active(self, route: str) -> list[str]:
        """Candidates taking traffic: a percent above zero or canary users, not rolled back, route not killed."""
        state = self.rollout.routes.get(route)
        if state is None or state.killed:
            return []
        percents = state.allocation.percents()
        canary = set(state.canary) | set(self.rollout.settings.canary.get(route, {}))
        return [
            c
            for c in self.gateway.config.settings.routes[route].candidates
            if c not in state.rolled_back and (percents.get(c, 0) > 0 or c in canary)
        ]

    def _track_active(self, now: float) -> None:
        """Judge a candidate only on traffic since it (re)entered: an old failure must not pull it again."""
        active = {(route, c) for route in self.gateway.config.settings.routes for c in self._active(route)}
        for pair in active - set(self._active_since):
            self._active_since[pair] = 0.0 if self._first_tick else now
        for pair in set(self._active_since) - active:
            del self._active_since[pair]
            self._failing.pop(pair, None)
            self.evaluations.get(pair[0], {}).pop(pair[1], None)

    async def analyse(self, route: str, candidate: str, since: float, until: float) -> Analysis:
        baseline = self.gateway.config.settings.routes[route].baseline
        return analyse(
            await self._read(route, candidate, since, until),
            await self._read(route, baseline, since, until),
            self.policy(route),
        )

    async def _evaluate(self, now: float) -> None:
        for (route, candidate), since in sorted(self._active_since.items()):
            policy = self.policy(route)
            start = max(now - policy.window_seconds, since)
            result = await self.analyse(route, candidate, start, now)
            pair = (route, candidate)
            failing = self._failing.get(pair, 0) + 1 if result.outcome == FAILED else 0
            self._failing[pair] = failing
            outcomes = dict(self.evaluations.get(route, {}).get(candidate, {}).get("outcomes", {}))
            outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
            self.evaluations.setdefault(route, {})[candidate] = {
                "outcome": result.outcome,
                "failing": failing,
                "at": now,
                "count": sum(outcomes.values()),
                "outcomes": outcomes,
                "checks": {c.rule: {"failed": c.failed, "detail": c.detail} for c in result.checks},
            }
            if failing >= policy.failure_limit and self.leader:
                rule = result.failed[0].rule
                reason = f"auto-rollback: {result.reason()} ({failing} evaluations in a row)"
                log.warning("route %s: rolling back %s: %s", route, candidate, reason)
                await self.rollout.rollback(
                    route,
                    candidate,
                    actor="auto_rollback",
                    reason=reason,
                    rule=rule,
                    figures=result.figures(since=start, until=now, failed=[c.rule for c in result.failed]),
                )
                del self._active_since[pair]
                self._failing.pop(pair, None)

    # --- schedules ---------------------------------------------------------------------------------

    async def _load_schedules(self, route: str | None = None) -> None:
        if route is not None:
            found = await self.gateway.store.get(SCHEDULE_KEY + route)
            if isinstance(found, dict):
                self.schedules[route] = found
            return
        stored = await self.gateway.store.items(SCHEDULE_KEY)
        self.schedules = {k[len(SCHEDULE_KEY) :]: v for k, v in stored.items() if isinstance(v, dict)}

    async def _on_change(self, message: dict) -> None:
        if message.get("kind") == "resync":
            await self._load_schedules()
        elif message.get("kind") == "schedule" and isinstance(message.get("route"), str):
            await self._load_schedules(message["route"])

    def _rolled_back_since(self, route: str, schedule: dict) -> dict | None:
        """The rollback of the schedule's candidate made after the schedule started, if there was one."""
        state = self.rollout.routes.get(route)
        record = state.rolled_back.get(schedule["candidate"]) if state else None
        return record if record and record.get("ts", 0) >= schedule["started_at"] else None

    async def _advance_schedules(self, now: float) -> None:
        await self._load_schedules()
        for route, schedule in sorted(self.schedules.items()):
            if route not in self.gateway.config.settings.routes or schedule["status"] not in (RUNNING, PAUSED):
                continue
            if not self.leader:
                return
            try:
                await self._advance(route, schedule, now)
            except Exception:
                log.exception("route %s: the schedule could not advance", route)

    async def _advance(self, route: str, schedule: dict, now: float) -> None:
        candidate, steps, i = schedule["candidate"], schedule["steps"], schedule["step"]
        if (record := self._rolled_back_since(route, schedule)) is not None:
            why = f"{candidate} was rolled back by {record.get('actor')}: {record.get('reason')}"
            await self._transition(route, schedule, "schedule", status=ABORTED, reason=why)
            return
        if schedule.get("mode") == ADAPTIVE:
            await self._advance_on_evidence(route, schedule, now)
            return
        # Counts are per second: a step is judged on the whole seconds after it began, so the
        # previous step's traffic never leaks in, and it holds for hold_seconds of those.
        begun = math.ceil(schedule["step_started"])
        if schedule["status"] != RUNNING or now - begun < schedule["hold_seconds"]:
            return
        result = await self.analyse(route, candidate, begun, now)
        where = f"step {i + 1}/{len(steps)} ({steps[i]:g}%)"
        analysis = {
            "step": i + 1,
            "outcome": result.outcome,
            "at": now,
            "checks": {c.rule: c.detail for c in result.checks},
        }
        if result.outcome == SUCCESSFUL and i + 1 == len(steps):
            await self._transition(
                route,
                schedule,
                "schedule",
                status=DONE,
                last_analysis=analysis,
                reason=f"{where} passed its analysis: the rollout is complete",
            )
        elif result.outcome == SUCCESSFUL:
            await self._next_step(route, schedule, analysis, f"{where} passed its analysis")
        elif result.outcome == INCONCLUSIVE:
            await self._pause(route, schedule, analysis, f"inconclusive at {where}: {result.reason()}")
        else:
            reason = f"{where} failed its analysis: {result.reason()}"
            await self.rollout.rollback(
                route,
                candidate,
                actor="schedule",
                reason=reason,
                rule=result.failed[0].rule,
                figures=result.figures(since=begun, until=now, failed=[c.rule for c in result.failed]),
            )
            await self._transition(route, schedule, "schedule", status=ABORTED, last_analysis=analysis, reason=reason)

    async def _advance_on_evidence(self, route: str, schedule: dict, now: float) -> None:
        """An adaptive step: every evaluation asks the sequential test (evidence.py) about every step so far;
        it advances as soon as the evidence allows, rolls back on harm, and waits otherwise, at most
        `hold_seconds` a step (then it pauses, saying what it lacked)."""
        if schedule["status"] != RUNNING:
            return
        candidate, steps, i = schedule["candidate"], schedule["steps"], schedule["step"]
        baseline = self.gateway.config.settings.routes[route].baseline
        begun = math.ceil(schedule["step_started"])
        base = [Figures().add(c) for c in schedule.get("closed", {}).get("baseline", [])]
        cand = [Figures().add(c) for c in schedule.get("closed", {}).get("candidate", [])]
        base.append(await self._read(route, baseline, begun, now))
        cand.append(await self._read(route, candidate, begun, now))
        exposure = steps[i + 1] / 100 if i + 1 < len(steps) else 1.0
        evidence = Evidence(**schedule["evidence"])
        decision = judge_step(evidence, base, cand, schedule.get("latency_limit_ms"), exposure)
        where = f"step {i + 1}/{len(steps)} ({steps[i]:g}%)"
        analysis = {"step": i + 1, "at": now, **summary(decision)}
        self.decisions[route] = analysis  # every evaluation's, for status; the store keeps those that act
        if decision.action == "advance" and cand[-1].requests < evidence.min_samples:
            # the evidence may come from earlier steps: a step is still left only once its own share has been seen
            analysis.update(
                action="continue",
                reason=f"{cand[-1].requests} candidate calls at this step, fewer than {evidence.min_samples}",
            )
            decision = None
        if decision is not None and decision.action == "rollback":
            reason = f"{where}: the evidence shows harm: {decision.reason}"
            await self.rollout.rollback(route, candidate, actor="schedule", reason=reason, rule="evidence")
            await self._transition(route, schedule, "schedule", status=ABORTED, last_analysis=analysis, reason=reason)
        elif decision is not None and decision.action == "advance" and i + 1 == len(steps):
            reason = f"{where}: shown not worse than the baseline: the rollout is complete ({decision.reason})"
            await self._transition(route, schedule, "schedule", status=DONE, last_analysis=analysis, reason=reason)
        elif decision is not None and decision.action == "advance":
            closed = schedule.get("closed", {"baseline": [], "candidate": []})
            await self._next_step(
                route,
                schedule,
                analysis,
                f"{where}: shown fit for {steps[i + 1]:g}% ({decision.reason})",
                closed={
                    "baseline": [*closed["baseline"], base[-1].counters()],
                    "candidate": [*closed["candidate"], cand[-1].counters()],
                },
            )
        elif now - begun >= schedule["hold_seconds"]:
            await self._pause(
                route,
                schedule,
                analysis,
                f"no decision at {where} within {schedule['hold_seconds']:g}s: {analysis['reason']}",
            )

    async def _pause(self, route: str, schedule: dict, analysis: dict, reason: str) -> None:
        await self._transition(route, schedule, "schedule", status=PAUSED, last_analysis=analysis, reason=reason)

    async def _next_step(self, route: str, schedule: dict, analysis: dict, reason: str, **changes) -> None:
        """Give the candidate the next step's percent and start that step (paused if the percent cannot be set)."""
        candidate, steps, i = schedule["candidate"], schedule["steps"], schedule["step"]
        try:
            await self.rollout.set_percent(route, candidate, steps[i + 1], actor="schedule", reason=reason)
        except GatewayError as err:
            await self._pause(route, schedule, analysis, f"could not set {steps[i + 1]:g}%: {err.message}")
            return
        await self._transition(
            route,
            schedule,
            "schedule",
            step=i + 1,
            step_started=time.time(),
            last_analysis=analysis,
            reason=reason,
            **changes,
        )

    def _require_rollout(self) -> None:
        if self.rollout is None:
            raise GatewayError(
                "schedules need the rollout plugin, which is disabled", status=503, type="configuration_error"
            )

    async def _transition(self, route: str, expected: dict, who: str, **changes) -> dict | None:
        """Change a schedule unless someone else changed it first; audit and announce the change."""

        def change(old: dict | None) -> dict | None:
            if not isinstance(old, dict) or any(
                old.get(k) != expected.get(k) for k in ("started_at", "step", "status")
            ):
                raise ScheduleConflict(
                    f"the schedule of route '{route}' changed meanwhile; try again", code="schedule_changed"
                )
            return {**old, **changes, "updated_at": time.time()}

        try:
            old, new = await self.gateway.store.update(SCHEDULE_KEY + route, change)
        except ScheduleConflict:
            if who == "schedule":
                return None  # an operator acted first: their change stands
            raise
        self.schedules[route] = new
        event = await audit(
            self.gateway,
            "schedule",
            route,
            who,
            before=_brief(old),
            after=_brief(new),
            reason=changes.get("reason"),
            candidate=new["candidate"],
            steps=new["steps"],
        )
        await self.gateway.store.publish({"kind": "schedule", "route": route})
        return event

    async def start_schedule(
        self,
        route: str,
        candidate: str,
        steps: list[float],
        hold_seconds: float,
        *,
        actor: str,
        reason: str | None = None,
        evidence: Evidence | None = None,
    ) -> dict:
        """Begin a staged rollout: the first step's percent at once (re-enabling a rolled-back candidate).
        With `evidence`, the schedule is adaptive: each step advances when the sequential test allows,
        `hold_seconds` being then the longest a step may wait for it."""
        self._require_rollout()
        settings = self.gateway.config.settings.routes.get(route)
        if settings is None:
            raise NotFound(f"no route named '{route}'", param="route", code="route_not_found")
        if candidate not in settings.candidates:
            raise InvalidRequest(
                f"'{candidate}' is not a candidate of route '{route}' (candidates: "
                f"{', '.join(sorted(settings.candidates)) or 'none'})",
                param="candidate",
            )
        now = time.time()
        schedule = {
            "candidate": candidate,
            "steps": steps,
            "hold_seconds": hold_seconds,
            "step": 0,
            "step_started": now,
            "started_at": now,
            "status": RUNNING,
            "reason": reason,
            "actor": actor,
            "updated_at": now,
            "last_analysis": None,
            "mode": FIXED if evidence is None else ADAPTIVE,
        }
        if evidence is not None:
            schedule["evidence"] = evidence.model_dump()
            schedule["latency_limit_ms"] = await self._latency_limit(route, now)

        def claim(old: dict | None) -> dict:
            if isinstance(old, dict) and old.get("status") in (RUNNING, PAUSED):
                raise ScheduleConflict(
                    f"route '{route}' already has a {old['status']} schedule for {old['candidate']}: abort it first",
                    code="schedule_exists",
                )
            return schedule

        old, _ = await self.gateway.store.update(SCHEDULE_KEY + route, claim)
        try:
            await self.rollout.set_percent(
                route, candidate, steps[0], actor=actor, reason=f"schedule started: step 1/{len(steps)}"
            )
        except GatewayError as err:
            await self._transition(route, schedule, actor, status=ABORTED, reason=f"could not start: {err.message}")
            raise
        self.schedules[route] = schedule
        event = await audit(
            self.gateway,
            "schedule",
            route,
            actor,
            before=_brief(old),
            after=_brief(schedule),
            reason=reason or "schedule started",
            candidate=candidate,
            steps=steps,
            hold_seconds=hold_seconds,
        )
        await self.gateway.store.publish({"kind": "schedule", "route": route})
        return event

    async def _latency_limit(self, route: str, now: float) -> float | None:
        """The latency an adaptive schedule counts calls above, fixed before it starts (a limit chosen from
        the candidate's own data would bias the test): the latency rule's max_ms, else the baseline's p95
        over the last window; None (no latency guardrail) when neither is known."""
        policy = self.policy(route)
        rule = policy.rules.p95_latency
        if rule is not None and rule.max_ms is not None:
            return rule.max_ms
        baseline = self.gateway.config.settings.routes[route].baseline
        figures = await self.windows.read(route, baseline, now - policy.window_seconds, now)
        return figures.p95_ms if figures.latency_n >= policy.min_samples else None

    async def act_on_schedule(self, route: str, action: str, *, actor: str, reason: str | None) -> dict:
        """An operator pauses, resumes or aborts (to the baseline) a route's schedule."""
        self._require_rollout()
        schedule = await self.gateway.store.get(SCHEDULE_KEY + route)
        if not isinstance(schedule, dict):
            raise NotFound(f"route '{route}' has no schedule", param="route", code="schedule_not_found")
        allowed = {"pause": (RUNNING,), "resume": (PAUSED,), "abort": (RUNNING, PAUSED)}[action]
        if schedule["status"] not in allowed:
            raise ScheduleConflict(
                f"the schedule of route '{route}' is {schedule['status']}: it cannot {action}", code="schedule_state"
            )
        candidate = schedule["candidate"]
        if action == "pause":
            return await self._transition(
                route, schedule, actor, status=PAUSED, reason=reason or "paused by an operator"
            )
        if action == "abort":
            reason = reason or "schedule aborted by an operator"
            if self._rolled_back_since(route, schedule) is None:
                await self.rollout.rollback(route, candidate, actor=actor, reason=reason)
            return await self._transition(route, schedule, actor, status=ABORTED, reason=reason)
        if self._rolled_back_since(route, schedule) is not None:
            raise ScheduleConflict(
                f"{candidate} was rolled back while the schedule was paused: start a new schedule to re-enable it",
                code="candidate_rolled_back",
            )
        percent = schedule["steps"][schedule["step"]]
        if self.rollout.routes[route].allocation.percent(candidate) != percent:
            await self.rollout.set_percent(route, candidate, percent, actor=actor, reason="schedule resumed")
        # The step's hold and analysis start again: what paused it was judged on earlier traffic.
        return await self._transition(
            route, schedule, actor, status=RUNNING, step_started=time.time(), reason=reason or "resumed by an operator"
        )

    # --- operator surface ----------------------------------------------------------------------

    @hookimpl
    def config_problems(self, config):
        known = ", ".join(sorted(config.settings.routes)) or "none"
        return [
            f"plugins.auto_rollback.routes.{route}: unknown route (defined: {known})"
            for route in self.settings.routes
            if route not in config.settings.routes
        ]

    @hookimpl
    def admin_status(self, gateway):
        schedules = {route: {**s, "percent": s["steps"][s["step"]]} for route, s in self.schedules.items()}
        return {
            "auto_rollback": {
                "leader": self.leader,
                "routes": self.figures,
                "evaluations": self.evaluations,
                "schedules": schedules,
                "decisions": self.decisions,
            }
        }

    @hookimpl
    def readiness(self, gateway):
        return {
            "auto_rollback": f"not evaluating: {self._store_problem}" if self._store_problem else None,
            "auto_rollback_windows": self._flush_problem,
        }

    @hookimpl
    def register_routes(self, gateway):
        async def start(request: web.Request) -> web.Response:
            request.app[GATEWAY].require_admin(request)
            body = await read_body(request)
            candidate = body.get("candidate")
            if not isinstance(candidate, str) or not candidate:
                raise InvalidRequest("'candidate' is required", param="candidate")
            event = await self.start_schedule(
                request.match_info["route"],
                candidate,
                _steps(body.get("steps")),
                _hold(body.get("hold_seconds", 300 if body.get("mode", FIXED) == FIXED else 21_600)),
                actor=actor(request),
                reason=body.get("reason"),
                evidence=_evidence(body),
            )
            return web.json_response(event)

        async def act(request: web.Request) -> web.Response:
            request.app[GATEWAY].require_admin(request)
            body = await read_body(request)
            action = request.match_info["action"]
            if action not in ("pause", "resume", "abort"):
                raise NotFound(f"no schedule action '{action}' (pause, resume, abort)")
            event = await self.act_on_schedule(
                request.match_info["route"], action, actor=actor(request), reason=body.get("reason")
            )
            return web.json_response(event)

        return [
            web.post("/admin/routes/{route}/schedule", start),
            web.post("/admin/routes/{route}/schedule/{action}", act),
        ]


def _steps(value: Any) -> list[float]:
    ok = (
        isinstance(value, list)
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 100 for v in value)
    )
    if not ok or any(b <= a for a, b in zip(value, value[1:])):
        raise InvalidRequest(
            "'steps' must be rising percents above 0 and at most 100, e.g. [5, 25, 50, 100]", param="steps"
        )
    return [float(v) for v in value]


def _evidence(body: dict) -> Evidence | None:
    """An adaptive schedule's evidence settings (`mode: adaptive`, `evidence: {...}`), or None for a fixed one."""
    mode = body.get("mode", FIXED)
    if mode not in (FIXED, ADAPTIVE):
        raise InvalidRequest(f"'mode' must be '{FIXED}' or '{ADAPTIVE}'", param="mode")
    if mode == FIXED:
        if body.get("evidence") is not None:
            raise InvalidRequest("'evidence' is for mode 'adaptive'", param="evidence")
        return None
    try:
        return Evidence(**(body.get("evidence") or {}))
    except (TypeError, ValidationError) as exc:
        raise InvalidRequest(f"'evidence' is not valid: {exc}", param="evidence") from None


def _hold(value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= MAX_HOLD:
        # the windows keep every second of the longest hold: bounded, so memory is
        raise InvalidRequest(
            f"'hold_seconds' must be a number of seconds from 0 to {MAX_HOLD} (a day)", param="hold_seconds"
        )
    return float(value)
