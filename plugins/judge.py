"""judge: online evaluation, an LLM judge scoring sampled live answers and shadow comparisons.

A candidate's answer is judged against what the route's baseline answers to the same request
(asked afterwards, off the request path), and each verdict is reported as the candidate's
`judge_win_rate` score (1 win, 0.5 tie, 0 loss) into the windows auto-rollback reads, so a
candidate the judge finds worse is rolled back by the same rule as any other score. A shadow
comparison (the `shadow_compared` hook) is judged from the shadow's side and written back as the
comparison's `judge_score`, which the shadow report averages.

Judging costs money, so the plugin is off by default, samples `sample_rate` of answers, and
stops at `daily_budget` judgements per UTC day (per replica). `after_response` and the shadow
hook only sample and `put_nowait` on a bounded queue (full: dropped and counted); `max_concurrent`
workers call the baseline and the judge. A judge that fails or answers nonsense is an error,
counted, never a score.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evaluators.judges import DEFAULT_CRITERIA, PairwiseJudge
from evaluators.stats import wilson_interval
from gateway import tracing
from gateway.chat import answer_text, whole_answer_request
from gateway.context import sampled
from gateway.errors import GatewayError
from gateway.gateway import Generation
from gateway.hookspecs import hookimpl
from plugins.shadow.plugin import Shadow

log = logging.getLogger("llmgate.judge")

SCORE = {"first": 1.0, "tie": 0.5, "second": 0.0}  # the judged answer is always passed first


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: str = Field(description="the configured backend that judges")
    criteria: list[str] = Field(list(DEFAULT_CRITERIA), min_length=1)
    sample_rate: float = Field(0.05, ge=0, le=1, description="share of candidate answers and shadow comparisons judged")
    daily_budget: int = Field(1000, ge=0, description="judgements per UTC day on this replica; then sampling stops")
    max_concurrent: int = Field(2, ge=1, description="judgements in progress at once")
    queue_size: int = Field(200, ge=1, description="judgements waiting; more are dropped and counted")
    routes: list[str] | None = Field(None, description="judge only these routes (default: all)")


def utc_day() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


@dataclass
class Job:
    """One judgement: `answer` (from `variant`) against `opponent`'s answer, fetched when not given."""

    kind: str  # "candidate": scored into the windows; "shadow": written to the comparison
    generation: Generation  # held (entered) until the job ends, so a reload does not close its backends
    day: str  # the budget day it was charged to
    route: str
    request_id: str
    variant: str
    answer: str
    opponent: str
    messages: list[dict]
    body: dict[str, Any] = field(default_factory=dict)  # the request, to ask the baseline
    opponent_answer: str | None = None
    link: Any = None  # the span it came from (a request's, a shadow call's) when tracing is on


class Tally:
    """Wins, ties and losses of one variant against what it was compared with."""

    def __init__(self) -> None:
        self.wins = self.ties = self.losses = 0

    def add(self, score: float) -> None:
        if score == 1.0:
            self.wins += 1
        elif score == 0.5:
            self.ties += 1
        else:
            self.losses += 1

    def summary(self) -> dict[str, Any]:
        n = self.wins + self.ties + self.losses
        interval = wilson_interval(self.wins + 0.5 * self.ties, n)  # ties split (evaluators/stats.py)
        return {
            "win_rate": (self.wins + 0.5 * self.ties) / n if n else None,
            "interval": list(interval) if interval else None,
            "judged": n,
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
        }


class Judge:
    DEFAULT_ENABLED = False  # judging costs money: an operator turns it on
    Settings = Settings

    def __init__(self, settings: Settings):
        self.settings = settings
        self.judged = 0
        self.errors = 0
        self.dropped = 0
        self.over_budget = 0
        self.baseline_errors = 0
        self.closing = False
        self._day = utc_day()
        self._spent = 0
        self._gateway = None
        self._jobs: asyncio.Queue[Job] | None = None
        self._workers: list[asyncio.Task] = []
        self._tallies: dict[str, dict[tuple[str, str], Tally]] = {"candidate": {}, "shadow": {}}

    # --- lifetime ------------------------------------------------------------------------------

    @hookimpl
    def config_problems(self, config):
        settings = config.settings
        problems = []
        if self.settings.backend not in settings.backends:
            problems.append(
                f"plugins.judge.backend: unknown backend '{self.settings.backend}' "
                f"(defined: {', '.join(sorted(settings.backends)) or 'none'})"
            )
        problems += [
            f"plugins.judge.routes: unknown route '{route}' (defined: {', '.join(sorted(settings.routes)) or 'none'})"
            for route in self.settings.routes or ()
            if route not in settings.routes
        ]
        return problems

    @hookimpl
    async def startup(self, gateway):
        self._gateway = gateway
        self._shadow = gateway.plugin(Shadow)  # where a shadow comparison's judge score is written
        self._jobs = asyncio.Queue(self.settings.queue_size)
        self._workers = [
            asyncio.create_task(self._work(), name=f"judge worker {i}") for i in range(self.settings.max_concurrent)
        ]

    @hookimpl
    async def shutdown(self, gateway):
        """Judgements are worth less than a prompt stop: queued ones are dropped, running ones cut."""
        self.closing = True
        while self._jobs is not None and not self._jobs.empty():
            self._jobs.get_nowait().generation.leave()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    # --- sampling (the request path, and the shadow worker: memory only) ---------------------

    @hookimpl
    def after_response(self, ctx):
        route = ctx.route
        if ctx.served_by not in route.candidates or ctx.status >= 400 or not self._wanted(ctx.route_name):
            return
        answer = answer_text(ctx.response)
        if not answer or not sampled(self.settings.sample_rate, "judge", ctx.request_id):
            return
        body = whole_answer_request(ctx.body)  # compared whole, even when the caller streamed
        self._submit(
            ctx.generation,
            kind="candidate",
            route=ctx.route_name,
            request_id=ctx.request_id,
            variant=ctx.served_by,
            answer=answer,
            opponent=route.baseline,
            messages=ctx.body.get("messages") or [],
            body=body,
        )

    @hookimpl
    def shadow_compared(self, comparison):
        shadow, primary = comparison.get("shadow_answer"), comparison.get("primary_answer")
        if (
            not shadow
            or not primary
            or not self._wanted(comparison["route"])
            or not sampled(self.settings.sample_rate, "judge", comparison["request_id"], comparison["shadow_backend"])
        ):
            return
        self._submit(
            self._gateway.generation,
            kind="shadow",
            route=comparison["route"],
            request_id=comparison["request_id"],
            variant=comparison["shadow_backend"],
            answer=shadow,
            opponent=comparison["primary_backend"],
            opponent_answer=primary,
            messages=comparison.get("messages") or [],
        )

    def _wanted(self, route: str) -> bool:
        return not self.closing and (self.settings.routes is None or route in self.settings.routes)

    def budget_left(self) -> int:
        today = utc_day()
        if today != self._day:
            self._day, self._spent = today, 0
        return max(0, self.settings.daily_budget - self._spent)

    def _submit(self, generation: Generation, **job: Any) -> None:
        """Charge the budget and queue the judgement on `generation`'s backends; never waits."""
        if not self.budget_left():
            self.over_budget += 1
            return
        try:
            link = tracing.current_link() if self._gateway.hooks.tracer is not None else None
            self._jobs.put_nowait(Job(generation=generation, day=self._day, link=link, **job))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("judge queue full: %d judgements dropped so far", self.dropped)
            return
        self._spent += 1
        generation.enter()

    # --- judging (workers) ---------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                with tracing.linked_span(
                    self._gateway.hooks.tracer,
                    f"judge {job.kind}",
                    job.link,
                    **{
                        "llmgate.route": job.route,
                        "llmgate.variant": job.variant,
                        "llmgate.request_id": job.request_id,
                    },
                ):
                    await self._judge(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.errors += 1
                log.exception("judging request %s of route %s failed inside the gateway", job.request_id, job.route)
            finally:
                job.generation.leave()

    async def _judge(self, job: Job) -> None:
        if job.opponent_answer is None:
            job.opponent_answer = await self._ask_opponent(job)
            if job.opponent_answer is None:
                if job.day == self._day:
                    self._spent -= 1  # the judge was never asked: give the judgement back
                return
        backend = job.generation.backends.get(self.settings.backend)
        if backend is None:
            self.errors += 1
            log.warning("judge backend '%s' is no longer configured", self.settings.backend)
            return
        verdict = await PairwiseJudge(backend, self.settings.criteria).compare(
            job.messages, job.answer, job.opponent_answer
        )
        if verdict.outcome == "error":
            self.errors += 1
            log.warning("the judge failed on request %s: %s", job.request_id, self._gateway.scrub(verdict.error or ""))
            return
        score = SCORE[verdict.outcome]
        if job.kind == "candidate":
            await self._gateway.hooks.call(
                "record_score", route=job.route, variant=job.variant, name="judge_win_rate", value=score
            )
        elif not await self._shadow.set_judge_score(job.request_id, job.variant, score):
            log.warning(
                "no stored comparison of request %s with shadow %s for its judge score", job.request_id, job.variant
            )
        self.judged += 1
        self._tallies[job.kind].setdefault((job.route, job.variant), Tally()).add(score)

    async def _ask_opponent(self, job: Job) -> str | None:
        """The baseline's answer to the candidate's request; None (counted) when it cannot be had."""
        backend = job.generation.backends.get(job.opponent)
        answer = None
        if backend is None:
            problem = "is no longer configured"
        elif missing := backend.missing_credentials():
            problem = f"needs {', '.join(missing)}"
        else:
            try:
                answer = answer_text(await backend.complete(job.body))
                problem = None if answer else "gave no answer"
            except GatewayError as err:
                problem = f"failed: {self._gateway.scrub(err.message)}"
        if problem:
            self.baseline_errors += 1
            log.warning("not judging request %s: baseline '%s' %s", job.request_id, job.opponent, problem)
        return answer or None

    # --- operator surface ----------------------------------------------------------------------

    def _rates(self, kind: str) -> dict[str, dict[str, dict]]:
        out: dict[str, dict[str, dict]] = {}
        for (route, variant), tally in sorted(self._tallies[kind].items()):
            out.setdefault(route, {})[variant] = tally.summary()
        return out

    @hookimpl
    def admin_status(self, gateway):
        return {
            "judge": {
                "backend": self.settings.backend,
                "sample_rate": self.settings.sample_rate,
                "queued": self._jobs.qsize() if self._jobs else 0,
                "judged": self.judged,
                "errors": self.errors,
                "baseline_errors": self.baseline_errors,
                "dropped": self.dropped,
                "over_budget": self.over_budget,
                "budget_left_today": self.budget_left(),
                "win_rate": self._rates("candidate"),
                "shadow_win_rate": self._rates("shadow"),
            }
        }

    @hookimpl
    def collect_metrics(self, gateway):
        return [
            ("llmgate_judge_queue_depth", "Judgements waiting.", {}, self._jobs.qsize() if self._jobs else 0),
            ("llmgate_judgements_total", "Judgements made.", {}, self.judged),
            ("llmgate_judge_errors_total", "Judge calls that failed or answered nonsense.", {}, self.errors),
            (
                "llmgate_judge_baseline_errors_total",
                "Baseline answers that could not be had.",
                {},
                self.baseline_errors,
            ),
            ("llmgate_judge_dropped_total", "Judgements dropped (queue full).", {}, self.dropped),
            ("llmgate_judge_over_budget_total", "Samples skipped: the daily budget was spent.", {}, self.over_budget),
            ("llmgate_judge_budget_left", "Judgements left in today's budget.", {}, self.budget_left()),
        ]

    @hookimpl
    def readiness(self, gateway):
        problems = []
        if not self.budget_left():
            problems.append(f"daily judge budget of {self.settings.daily_budget} spent: judging resumes at 00:00 UTC")
        if self.settings.backend not in gateway.backends:
            problems.append(f"judge backend '{self.settings.backend}' is not configured")
        if self.dropped:
            problems.append(f"{self.dropped} judgements dropped (queue full)")
        return {"judge": "; ".join(problems) or None}
