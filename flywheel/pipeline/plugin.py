"""flywheel: the retraining loop a config turns on and nobody carries: logged traffic to a promoted model.

Per route, one run at a time walks these steps, each a persisted state of the run's record in
the state store (`flywheel:run:<id>`), so a restarted gateway picks the run up where it was:

    triggered -> dataset -> training -> deploying -> evaluating -> shadow -> canary -> promoted
                                                                  (or stopped, with the reason)

- triggered: on a schedule (`every_seconds`), on drift (a score's window mean below a fraction of
  its reference, as the retrain trigger measures it), or when `min_rated` exchanges logged since
  the last build carry a user's rating or a judge's score; never within `min_interval_seconds` of
  the last run, never while one runs.
- dataset: `llmgate dataset build`'s builder over the traffic logged since the last build (the
  cutoff is kept per route, and fixed in the run before it builds, so a rebuild after a restart
  writes the same files), in the format the provider and base model train on.
- training, deploying: a retrain job (plugins/retrain), its cost estimated first and refused over
  `cost.max_usd`; the model is registered as a backend with no traffic yet.
- evaluating: the offline gate (gate.py): the dataset's test split and a replay of recent real
  questions, answered by the new model and the route's current one, judged pairwise in both
  orders and scored by the evaluators; it goes on only when the win rate's interval clears
  `gate.margin`.
- shadow: mirrored until `shadow.min_judged` comparisons are judged and their mean's interval
  clears `shadow.min_score` (stopped when it falls below, or after `shadow.max_seconds`).
- canary: a candidate of the route under auto_rollback's staged schedule (its analysis rolls a
  bad step back); promoted when the schedule completes, the previous model staying registered
  (retired) for an instant rollback.

Every transition is an audit event (`flywheel`) and lands in the model's registry record
(`details.lifecycle`, `lineage`, `evaluation`), which `llmgate models` prints. Only the holder of
the `flywheel` lease advances runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from evaluators.offline import Gate
from flywheel import traffic_source
from flywheel.dataset.builder import BuildOptions, build
from flywheel.dataset.formats import make_format
from gateway.admin import audit
from gateway.admin import registry as models_registry
from gateway.background import stop_tasks
from gateway.hookspecs import hookimpl
from plugins.auto_rollback.plugin import SCHEDULE_KEY, AutoRollback
from plugins.retrain.plugin import CostCap, Retrain, describe
from plugins.retrain.providers import bedrock_format
from plugins.retrain.trigger import Drift, drift_reason, every, lease_seconds
from plugins.rollout.plugin import Rollout

from . import gate as offline

log = logging.getLogger("llmgate.flywheel")

RUN_KEY = "flywheel:run:"
ROUTE_KEY = "flywheel:route:"
LEASE = "flywheel"
ACTOR = "flywheel"
ACTIVE = ("triggered", "dataset", "training", "deploying", "evaluating", "shadow", "canary")
DONE = ("promoted", "stopped")
HISTORY = 50
MAX_SCORES = 100_000
# The model's lifecycle in its registry record, by the run's step.
LIFECYCLE = {
    "shadow": "shadow",
    "canary": "canary",
    "promoted": "serving",
}


class GateSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    judge: str = Field(description="the backend that judges the pairs (both orders)")
    margin: float = Field(0.5, ge=0, le=1, description="the win rate's 95% interval must lie above this")
    min_win_rate: float = Field(0.5, ge=0, le=1, description="and the win rate itself at least this")
    min_judged: float = Field(0.8, ge=0, le=1, description="share of cases the judge must decide")
    test_cases: int = Field(50, ge=0, description="cases from the dataset's test split")
    replay_seconds: float = Field(7 * 86400, gt=0, description="replay questions logged this far back")
    replay_cases: int = Field(50, ge=0, description="real questions replayed")
    concurrency: int = Field(4, ge=1)
    per_second: float | None = Field(None, gt=0, description="cases started per second at most")
    tolerances: dict[str, float | None] = Field(
        {"latency_ms": None, "tokens": None},
        description="metric -> relative regression allowed (None: not gated); the evaluators' own otherwise",
    )


class ShadowSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_judged: int = Field(20, ge=1, description="judged shadow comparisons needed")
    min_score: float = Field(0.5, ge=0, le=1, description="the judge score's interval must lie at or above this")
    max_error_rate: float = Field(0.05, ge=0, le=1)
    max_seconds: float = Field(86400, gt=0, description="stop when the evidence is not there by then")


class RolloutSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: list[float] = Field([5, 25, 50, 100], min_length=1)
    hold_seconds: float = Field(600, gt=0, description="each step's hold before its analysis")
    max_resumes: int = Field(
        10, ge=0, description="a step paused for too few calls is held again this many times, then the run stops"
    )


class RouteFlywheel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: Literal["bedrock", "openai"]
    base_model: str | None = None
    hyperparameters: dict[str, str | int | float] = {}
    every_seconds: float | None = Field(None, gt=0, description="start a run this often")
    drift: Drift | None = None
    min_rated: int | None = Field(None, ge=1, description="start when this many rated exchanges arrived")
    min_interval_seconds: float = Field(86400.0, ge=0, description="never two runs closer than this")
    min_examples: int = Field(100, ge=1, description="stop a run whose dataset has fewer training examples")
    first_window_seconds: float = Field(30 * 86400, gt=0, description="the first build reads this far back")
    dataset: dict[str, Any] = Field(
        {},
        description="the builder's options: min_judge_score, feedback, split (percents), seed, max_chars, variants",
    )
    cost: CostCap | None = None
    gate: GateSettings
    shadow: ShadowSettings = ShadowSettings()
    rollout: RolloutSettings = RolloutSettings()


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    routes: dict[str, RouteFlywheel] = {}
    check_interval: float = Field(60.0, gt=0, description="seconds between steps")
    workdir: str = Field("var/flywheel", description="datasets and gate reports, a folder per run")


def _new_id() -> str:
    return f"fw-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


class Flywheel:
    Settings = Settings
    DEFAULT_ENABLED = False  # it trains and deploys paid models: opt in
    uses = ("rollout", "auto_rollback", "shadow", "judge")

    def __init__(self, settings: Settings):
        self.settings = settings
        self.requires = ("retrain",) if settings.routes else ()
        self.gateway = None
        self.scores: dict[str, deque] = {route: deque(maxlen=MAX_SCORES) for route in settings.routes}
        self.last: dict[str, str] = {}
        self._holder = f"gateway@{socket.gethostname()}:{os.getpid()}"
        self._task: asyncio.Task | None = None
        self._busy: set[str] = set()

    # --- hooks --------------------------------------------------------------------------------

    @hookimpl
    def config_problems(self, config):
        problems = []
        backends = config.settings.backends
        for route, rule in self.settings.routes.items():
            where = f"plugins.flywheel.routes.{route}"
            if route not in config.settings.routes:
                problems.append(f"{where}: no such route")
            if rule.every_seconds is None and rule.drift is None and rule.min_rated is None:
                problems.append(f"{where}: set every_seconds, drift or min_rated")
            if rule.gate.judge not in backends:
                problems.append(f"{where}.gate.judge: no backend named '{rule.gate.judge}'")
        for needed, why in (("judge", "judges the shadow's comparisons"), ("shadow", "mirrors the new model")):
            if self.settings.routes and not traffic_source.plugin_enabled(config, needed):
                problems.append(f"plugins.flywheel: the {needed} plugin {why}: enable plugins.{needed}")
        return problems

    @hookimpl
    async def startup(self, gateway):
        self.gateway = gateway
        self._task = asyncio.create_task(self._forever(), name="flywheel")

    @hookimpl
    async def shutdown(self, gateway):
        await stop_tasks([self._task])
        try:  # let go at once: the next process (a restart) takes the runs up without waiting for the lease
            await gateway.store.acquire_lease(LEASE, self._holder, 0.001)
        except Exception as exc:
            log.debug("flywheel lease not released: %s", exc)

    @hookimpl
    def record_score(self, route, variant, name, value):
        rule = self.settings.routes.get(route)
        if rule is not None and rule.drift is not None and name == rule.drift.score:
            if rule.drift.variant is None or rule.drift.variant == variant:
                self.scores[route].append((time.time(), float(value)))

    @hookimpl
    def admin_status(self, gateway):
        return {"flywheel": {"last": self.last}}

    @hookimpl
    def register_routes(self, gateway):
        """GET /admin/flywheel: every run's record (its steps, dataset, job, model, evaluation)."""
        from aiohttp import web

        async def runs(request: web.Request) -> web.Response:
            gateway.require_admin(request)
            return web.json_response({"runs": await self.runs()})

        return [web.get("/admin/flywheel", runs)]

    # --- the loop -----------------------------------------------------------------------------

    async def _forever(self) -> None:
        await every(self.settings.check_interval, self.tick, "flywheel step")

    async def tick(self, now: float | None = None) -> dict[str, str]:
        """One step for every route (when this replica holds the lease): {route: what happened}."""
        now = time.time() if now is None else now
        store = self.gateway.store
        if not await store.acquire_lease(LEASE, self._holder, lease_seconds(self.settings.check_interval)):
            return {}
        done = {}
        for route, rule in self.settings.routes.items():
            if route in self._busy:
                continue
            self._busy.add(route)
            try:
                done[route] = self.last[route] = await self._route_step(route, rule, now)
            except Exception as exc:
                done[route] = self.last[route] = f"error: {describe(exc)}"
                log.exception("flywheel %s: the step failed", route)
            finally:
                self._busy.discard(route)
        return done

    async def _route_step(self, route: str, rule: RouteFlywheel, now: float) -> str:
        state = await self.gateway.store.get(ROUTE_KEY + route) or {"first_seen": now}
        run = await self.run(state["run"]) if state.get("run") else None
        if run is not None and run["state"] in ACTIVE:
            run = await self.advance(run, rule)
            return f"run {run['id']}: {run['state']}"
        reason = self._due(route, rule, state, now)
        await self.gateway.store.set(ROUTE_KEY + route, state)  # a drift reference learnt is kept
        if reason is None:
            return "not due"
        last = state.get("last_run_at")
        if last is not None and now - last < rule.min_interval_seconds:
            return f"{reason}; held: the last run started {now - last:.0f}s ago"
        run = await self._start(route, rule, state, reason, now)
        return f"{reason}; started run {run['id']}"

    def _due(self, route: str, rule: RouteFlywheel, state: dict, now: float) -> str | None:
        if (
            rule.every_seconds is not None
            and now - (state.get("last_run_at") or state["first_seen"]) >= rule.every_seconds
        ):
            return f"schedule: every {rule.every_seconds:g}s"
        if rule.drift is not None and (why := drift_reason(rule.drift, self.scores[route], state, now)):
            return why
        if rule.min_rated is not None:
            rated = self.rated_since(route, state.get("cutoff") or now - rule.first_window_seconds, now)
            if rated >= rule.min_rated:
                return f"rated: {rated} new rated exchanges >= {rule.min_rated}"
        return None

    def rated_since(self, route: str, since: float, until: float) -> int:
        """Exchanges logged in [since, until) that a user rated or the judge scored."""
        config = self.gateway.file_config
        rated = set(traffic_source.feedback_by_request(config)) | set(traffic_source.judge_scores_by_request(config))
        try:
            return sum(
                1
                for r in traffic_source.iter_records(config, route=route, since=since, until=until)
                if r["request_id"] in rated
            )
        except traffic_source.SourceError:
            return 0

    # --- runs ---------------------------------------------------------------------------------

    async def run(self, run_id: str) -> dict | None:
        return await self.gateway.store.get(RUN_KEY + run_id)

    async def runs(self) -> list[dict]:
        return sorted((await self.gateway.store.items(RUN_KEY)).values(), key=lambda r: r["created"])

    async def _start(self, route: str, rule: RouteFlywheel, state: dict, reason: str, now: float) -> dict:
        run_id = _new_id()
        since = state.get("cutoff") or now - rule.first_window_seconds
        run = {
            "id": run_id,
            "route": route,
            "state": "triggered",
            "trigger": reason,
            "created": now,
            "updated": now,
            "history": [{"ts": now, "state": "triggered", "note": reason}],
            "window": {"since": since, "until": now},  # fixed now: a rebuild after a restart reads the same log
            "dataset": None,
            "job": None,
            "model": None,
            "evaluation": {},
            "stop_reason": None,
        }
        await self.gateway.store.set(RUN_KEY + run_id, run)
        state.update(run=run_id, last_run_at=now, reference=None, reference_at=None)
        self.scores[route].clear()
        await self.gateway.store.set(ROUTE_KEY + route, state)
        await self._event(run, None, "triggered", reason)
        return run

    async def _change(self, run: dict, new_state: str | None = None, note: str | None = None, **fields) -> dict:
        """Write a run's step. The model's record is written first: whoever sees the run's new step
        sees the model where that step put it, and a crash between the two writes only repeats the
        annotation when the run is taken up again (the other order could leave it out for good)."""
        now, old_state = time.time(), run["state"]
        moved = bool(new_state) and new_state != old_state
        if moved and (fields.get("model") or run.get("model")):
            await self._lifecycle({**run, **fields}, new_state, note)

        def change(old: dict | None) -> dict:
            current = old or run
            updated = {**current, **fields, "updated": now}
            if new_state and new_state != current["state"]:
                updated["state"] = new_state
                updated["history"] = [*current["history"], {"ts": now, "state": new_state, "note": note}][-HISTORY:]
            return updated

        _, run = await self.gateway.store.update(RUN_KEY + run["id"], change)
        if moved:
            log.info("flywheel run %s (%s): %s -> %s: %s", run["id"], run["route"], old_state, new_state, note)
            await self._event(run, old_state, new_state, note)
        return run

    async def _event(self, run: dict, before: str | None, after: str, note: str | None) -> None:
        await audit(
            self.gateway,
            "flywheel",
            run["route"],
            ACTOR,
            before=before,
            after=after,
            reason=note,
            run=run["id"],
            model=run.get("model"),
        )

    async def _lifecycle(self, run: dict, step: str, note: str | None) -> None:
        """The model's registry record says where it is: lifecycle, history, lineage, evaluation."""
        lifecycle = LIFECYCLE.get(step)
        if step == "stopped":
            lifecycle = "rolled_back" if run.get("rolled_back") else "rejected"
        if lifecycle is None:
            return
        await self._annotate(run["model"], lifecycle, note, run=run["id"], evaluation=run.get("evaluation") or {})

    async def _annotate(self, name: str, lifecycle: str, note: str | None, **details) -> None:
        now = time.time()

        def change(old: dict | None) -> dict | None:
            if old is None:
                return None
            kept = old.get("details") or {}
            history = [*kept.get("lifecycle_history", []), {"ts": now, "lifecycle": lifecycle, "note": note}]
            return {
                **old,
                "details": {**kept, **details, "lifecycle": lifecycle, "lifecycle_history": history[-HISTORY:]},
            }

        await self.gateway.store.update(models_registry.KEY + name, change)
        await self.gateway.refresh_registered()
        await self.gateway.store.publish({"kind": models_registry.NOTICE, "name": name})

    async def stop(self, run: dict, why: str, **fields) -> dict:
        return await self._change(run, "stopped", why, stop_reason=why, **fields)

    async def advance(self, run: dict, rule: RouteFlywheel) -> dict:
        """Take a run as far as it can go now; each step is written before the next begins."""
        while run["state"] in ACTIVE:
            before = run["state"]
            run = await getattr(self, f"_step_{before}")(run, rule)
            if run["state"] == before:
                break
        return run

    async def _step_triggered(self, run: dict, rule: RouteFlywheel) -> dict:
        return await self._change(run, "dataset", "building the dataset from the traffic logged since the last build")

    def _format(self, rule: RouteFlywheel) -> str:
        if rule.provider == "openai":
            return "openai"
        retrain = self.gateway.plugin(Retrain)
        base = rule.base_model or retrain.settings.bedrock.base_model or ""
        return bedrock_format(base) or "bedrock"

    async def _step_dataset(self, run: dict, rule: RouteFlywheel) -> dict:
        out = Path(self.settings.workdir) / run["route"] / run["id"] / "dataset"
        extra = dict(rule.dataset)
        if "split" in extra and abs(sum(extra["split"]) - 100) < 1e-6:  # percents, as `--split 80/10/10` takes them
            extra["split"] = [share / 100 for share in extra["split"]]
        options = BuildOptions(
            route=run["route"],
            format=make_format(self._format(rule)),
            out=out,
            since=run["window"]["since"],
            until=run["window"]["until"],
            **{k: tuple(v) if k in ("split", "statuses") else v for k, v in extra.items()},
        )
        try:
            manifest = await asyncio.to_thread(build, self.gateway.file_config, options)
        except traffic_source.SourceError as exc:
            return await self.stop(run, f"dataset: {exc}")
        dataset = {
            "dir": str(out),
            "format": manifest["format"],
            "counts": manifest["counts"],
            "dropped": manifest["dropped"],
            "files": {name: f["sha256"] for name, f in manifest["files"].items()},
            "problems": manifest["problems"],
        }
        if manifest["counts"]["train"] < rule.min_examples:
            return await self.stop(
                run,
                f"dataset: {manifest['counts']['train']} training examples, min_examples is {rule.min_examples}",
                dataset=dataset,
            )
        if manifest["problems"]:
            return await self.stop(run, "dataset: " + "; ".join(manifest["problems"]), dataset=dataset)
        state = await self.gateway.store.get(ROUTE_KEY + run["route"]) or {}
        await self.gateway.store.set(ROUTE_KEY + run["route"], {**state, "cutoff": run["window"]["until"]})
        return await self._launch(await self._change(run, dataset=dataset), rule)

    async def _launch(self, run: dict, rule: RouteFlywheel) -> dict:
        launcher = self.gateway.plugin(Retrain).launcher
        name = f"{run['route']}-{run['id']}"
        lineage = {
            "run": run["id"],
            "trigger": run["trigger"],
            "dataset": run["dataset"],
            "provider": rule.provider,
        }
        try:
            job = await launcher.launch(
                rule.provider,
                run["dataset"]["dir"],
                run["route"],
                base_model=rule.base_model,
                hyperparameters=dict(rule.hyperparameters),
                backend_name=name,
                origin=f"flywheel run {run['id']}: {run['trigger']}",
                register_as="backend",
                cost=rule.cost,
                details={"lineage": lineage, "lifecycle": "training"},
            )
        except Exception as exc:
            return await self.stop(run, f"job: {str(exc) if type(exc).__name__ == 'RetrainError' else describe(exc)}")
        return await self._change(
            run,
            "training",
            f"job {job['id']} on {rule.provider} ({job['base_model']}), estimated "
            f"${(job.get('estimated_cost') or {}).get('usd', 0):.2f}",
            job=job["id"],
            cost=job.get("estimated_cost"),
            base_model=job["base_model"],
        )

    async def _step_training(self, run: dict, rule: RouteFlywheel) -> dict:
        launcher = self.gateway.plugin(Retrain).launcher
        job = await launcher.advance(run["job"])
        if job["status"] in ("failed", "cancelled"):
            return await self.stop(run, f"job {job['id']} {job['status']}: {job.get('error') or ''}".strip())
        if job["status"] in ("trained", "deploying", "ready") and run["state"] == "training":
            run = await self._change(run, "deploying", f"trained: {job.get('result_model')}")
        if job["status"] != "registered":
            return run
        return await self._change(
            run, "evaluating", f"{job['backend_name']} serves {job.get('serving_model')}", model=job["backend_name"]
        )

    _step_deploying = _step_training

    def current_model(self, route: str) -> str:
        """The model the route's users get now: a candidate holding every user, else the baseline."""
        rollout = self.gateway.plugin(Rollout)
        state = rollout.routes.get(route) if rollout else None
        if state is not None and not state.killed:
            for name in state.allocation.ranges:
                if state.allocation.percent(name) >= 100:
                    return name
        return self.gateway.config.settings.routes[route].baseline

    async def _step_evaluating(self, run: dict, rule: RouteFlywheel) -> dict:
        current, folder = self.current_model(run["route"]), Path(self.settings.workdir) / run["route"] / run["id"]
        cases = offline.test_split_cases(run["dataset"]["dir"], rule.gate.test_cases)
        replayed, skipped = await asyncio.to_thread(
            offline.replay_cases,
            self.gateway.file_config,
            run["route"],
            time.time() - rule.gate.replay_seconds,
            sample=rule.gate.replay_cases,
        )
        cases += [offline.Case(len(cases) + c.index, len(cases) + c.line, c.data) for c in replayed]
        evaluators = [e for found in self.gateway.hooks.collect("register_evaluators").values() for e in found]
        gate = Gate(
            rule.gate.min_win_rate,
            rule.gate.margin,
            rule.gate.min_judged,
            {**{e.name: getattr(e, "tolerance", None) for e in evaluators}, **rule.gate.tolerances},
        )
        report = await offline.compare(
            self.gateway.config,
            self.gateway.kinds,
            evaluators,
            run["route"],
            current,
            run["model"],
            rule.gate.judge,
            cases,
            folder / "gate.cases.jsonl",
            gate,
            concurrency=rule.gate.concurrency,
            per_second=rule.gate.per_second,
            label=f"test split ({len(cases) - len(replayed)}) + replay ({len(replayed)})",
        )
        (folder / "gate.json").write_text(json.dumps(report, indent=2) + "\n")
        found = {
            **offline.summary(report),
            "against": current,
            "replay_skipped": skipped,
            "report": str(folder / "gate.json"),
        }
        evaluation = {**run.get("evaluation", {}), "gate": found}
        if report["verdict"] != "pass":
            return await self.stop(
                run, f"offline gate failed ({', '.join(found['failed'])}) against {current}", evaluation=evaluation
            )
        run = await self._change(run, evaluation=evaluation)
        await self._annotate(
            run["model"], "evaluated", f"passed the offline gate against {current}", evaluation=evaluation
        )
        record = await self.gateway.store.get(models_registry.KEY + run["model"])
        await models_registry.register(
            self.gateway,
            run["model"],
            record["backend"],
            [run["route"]],
            ACTOR,
            reason=f"flywheel run {run['id']}: passed the offline gate",
            details={**record.get("details", {}), "evaluation": evaluation},
        )
        low = (found["ci95"] or {}).get("low")
        return await self._change(
            run,
            "shadow",
            f"offline gate passed against {current}: win rate {found['win_rate']:.3f}, "
            f"95% low {low:.3f} > {rule.gate.margin:g}",
            shadow_since=time.time(),
        )

    def shadow_evidence(self, route: str, model: str, since: float) -> dict[str, Any]:
        import sqlite3

        from plugins.shadow.plugin import _read, summarise

        path = traffic_source.shadow_path(self.gateway.file_config)
        if not os.path.exists(path):
            return {"count": 0, "judge": None}
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows, _ = _read(conn, route, since)
        except sqlite3.OperationalError:
            return {"count": 0, "judge": None}
        finally:
            conn.close()
        found = summarise([r for r in rows if r["shadow_backend"] == model], [], max(time.time() - since, 1), 1.0)
        return {"count": found["count"], "judge": found["judge"], "error_rate": found["shadow"]["error_rate"]}

    async def _step_shadow(self, run: dict, rule: RouteFlywheel) -> dict:
        evidence = await asyncio.to_thread(self.shadow_evidence, run["route"], run["model"], run["shadow_since"])
        evaluation = {**run.get("evaluation", {}), "shadow": evidence}
        judge = evidence.get("judge") or {}
        interval = judge.get("interval")
        if evidence.get("error_rate") is not None and evidence["error_rate"] > rule.shadow.max_error_rate:
            return await self.stop(run, f"shadow: error rate {evidence['error_rate']:.3f}", evaluation=evaluation)
        if judge.get("count", 0) >= rule.shadow.min_judged and interval:
            if interval[1] < rule.shadow.min_score:
                return await self.stop(
                    run,
                    f"shadow: judge score {judge['mean']:.3f} (95% high {interval[1]:.3f}) "
                    f"below {rule.shadow.min_score:g}",
                    evaluation=evaluation,
                )
            if interval[0] >= rule.shadow.min_score:
                return await self._canary(run, rule, evaluation, judge)
        if time.time() - run["shadow_since"] > rule.shadow.max_seconds:
            return await self.stop(
                run,
                f"shadow: {judge.get('count', 0)} judged comparisons in {rule.shadow.max_seconds:g}s",
                evaluation=evaluation,
            )
        return await self._change(run, evaluation=evaluation)

    async def _canary(self, run: dict, rule: RouteFlywheel, evaluation: dict, judge: dict) -> dict:
        record = await self.gateway.store.get(models_registry.KEY + run["model"])
        await models_registry.register(
            self.gateway,
            run["model"],
            record["backend"],
            [],
            ACTOR,
            reason=f"flywheel run {run['id']}: the shadow's evidence is in",
            details={**record.get("details", {}), "evaluation": evaluation},
            candidate=[run["route"]],
        )
        scheduler = self.gateway.plugin(AutoRollback)
        await scheduler.start_schedule(
            run["route"],
            run["model"],
            list(rule.rollout.steps),
            rule.rollout.hold_seconds,
            actor=ACTOR,
            reason=f"flywheel run {run['id']}",
        )
        return await self._change(
            run,
            "canary",
            f"shadow judge score {judge['mean']:.3f} over {judge['count']}: staged rollout {rule.rollout.steps}",
            evaluation=evaluation,
        )

    async def _step_canary(self, run: dict, rule: RouteFlywheel) -> dict:
        schedule = await self.gateway.store.get(SCHEDULE_KEY + run["route"]) or {}
        if schedule.get("candidate") != run["model"]:
            return await self.stop(run, "canary: the route's schedule is no longer this model's")
        step = {
            "step": schedule["step"] + 1,
            "percent": schedule["steps"][schedule["step"]],
            "status": schedule["status"],
        }
        if schedule["status"] == "done":
            rollout = self.gateway.plugin(Rollout)
            previous = self.current_model(run["route"])
            await rollout.promote(
                run["route"], run["model"], actor=ACTOR, reason=f"flywheel run {run['id']}: the schedule completed"
            )
            if previous != run["model"] and (await self.gateway.store.get(models_registry.KEY + previous)) is not None:
                await self._annotate(previous, "retired", f"replaced by {run['model']}", retired_by=run["model"])
            return await self._change(
                run, "promoted", f"{run['model']} serves every user of {run['route']}", canary=step
            )
        if schedule["status"] == "aborted":
            return await self.stop(run, f"canary: {schedule.get('reason')}", rolled_back=True, canary=step)
        if schedule["status"] == "paused" and str(schedule.get("reason", "")).startswith("inconclusive"):
            resumes = run.get("resumes", 0)
            if resumes >= rule.rollout.max_resumes:
                return await self.stop(run, f"canary: {schedule['reason']} ({resumes} holds)", canary=step)
            await self.gateway.plugin(AutoRollback).act_on_schedule(
                run["route"], "resume", actor=ACTOR, reason=f"{schedule['reason']}: the step holds again"
            )
            return await self._change(run, resumes=resumes + 1, canary=step)
        if step != run.get("canary"):
            run = await self._change(run, canary=step)
        return run
