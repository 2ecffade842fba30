"""`llmgate eval run`: compare a candidate backend with a route's baseline over a dataset, offline.

No daemon is needed. The command loads the config, loads plugins through the gateway's own door
(so third-party backend kinds and evaluators work here too), starts only the three backends it
uses, and sends each case through the gateway's backend chain (credential checks, retries with
backoff) without the route's fallbacks, so a candidate's failure is never hidden behind another
backend's answer. Each finished case is appended to `<out>.cases.jsonl` at once; a rerun with the
same arguments skips those cases, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import operator
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import jsonschema

from evaluators.gate import MIN_JUDGED, MIN_LOWER_BOUND, MIN_WIN_RATE
from evaluators.judges import PairwiseJudge
from evaluators.metrics import Exchange
from evaluators.stats import percentile, wilson_interval, win_rate
from gateway.backends.base import Backend
from gateway.chat import answer_text, validate_chat_request
from gateway.config import Config, ConfigError, RouteSettings, load_config
from gateway.context import RequestContext, stable_hash
from gateway.errors import GatewayError, Scrubber
from gateway.gateway import Generation, build_backends
from gateway.plugins import HookRunner, build_plugin_manager
from gateway.proxy import call_chain

OUTCOMES = {"first": "win", "second": "loss", "tie": "tie", "error": "judge_error"}  # candidate is `first`
ERRORS_LISTED = 20
COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le}


class UsageError(Exception):
    """The command cannot run as asked (an unknown route or backend, a bad dataset): exit 2."""


# --- the dataset ---------------------------------------------------------------------------------


@dataclass
class Case:
    index: int
    line: int
    data: dict[str, Any]  # the line's fields, with `messages` made from `prompt` when needed
    key: str = ""


def _validated(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError("a test case must be a JSON object")
    if ("messages" in raw) == ("prompt" in raw):
        raise ValueError("a test case needs 'messages' or 'prompt' (one of them)")
    case = dict(raw)
    if "prompt" in raw:
        if not isinstance(raw["prompt"], str) or not raw["prompt"]:
            raise ValueError("'prompt' must be a non-empty string")
        case["messages"] = [{"role": "user", "content": raw["prompt"]}]
    try:
        validate_chat_request({"model": "eval", "messages": case["messages"]})
    except GatewayError as err:
        raise ValueError(err.message) from None
    keywords = raw.get("expected_keywords")
    if keywords is not None and not (isinstance(keywords, list) and all(isinstance(k, str) and k for k in keywords)):
        raise ValueError("'expected_keywords' must be a list of non-empty strings")
    for name in ("reference", "expected", "expected_regex"):
        if name in raw and not isinstance(raw[name], str):
            raise ValueError(f"'{name}' must be a string")
    if "expected_regex" in raw:
        try:
            re.compile(raw["expected_regex"])
        except re.error as exc:
            raise ValueError(f"'expected_regex' is not a valid regular expression: {exc}") from None
    if "json_schema" in raw:
        try:
            jsonschema.validators.validator_for(raw["json_schema"]).check_schema(raw["json_schema"])
        except jsonschema.SchemaError as exc:
            raise ValueError(f"'json_schema' is not a valid JSON schema: {exc.message}") from None
    return case


def load_dataset(path: str) -> list[Case]:
    """Every case of a JSONL file; a UsageError naming each bad line by its number."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the dataset: {exc.strerror or exc}") from None
    cases, problems = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            cases.append(Case(len(cases), number, _validated(json.loads(line))))
        except ValueError as exc:  # json's decode errors are ValueErrors too
            problems.append(f"{path}:{number}: {exc}")
    if problems:
        raise UsageError(f"{len(problems)} bad line(s) in the dataset:\n" + "\n".join(f"  {p}" for p in problems))
    if not cases:
        raise UsageError(f"{path}: the dataset has no test cases")
    return cases


# --- results, kept as they finish ----------------------------------------------------------------


def results_path(out: str) -> Path:
    return Path(out).with_suffix(".cases.jsonl")


def read_results(path: Path) -> dict[str, dict]:
    """Finished cases by key, the latest record winning; a line cut short by a killed run is skipped."""
    found: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("key"), str):
                found[record["key"]] = record
    return found


def _ends_a_line(path: Path) -> bool:
    """True for an empty file or one whose last byte is a newline."""
    with path.open("rb") as f:
        if f.seek(0, 2) == 0:
            return True
        f.seek(-1, 2)
        return f.read(1) == b"\n"


class Progress:
    """One line on stderr, redrawn in place: cases done of all, and the errors so far."""

    WIDTH = 30

    def __init__(self, total: int, done: int, stream: TextIO | None = None):
        self.total, self.done, self.stream = total, done, stream or sys.stderr
        self.errors: Counter[str] = Counter()
        self.draw()

    def add(self, record: dict) -> None:
        self.done += 1
        if record["outcome"] in ("judge_error", "run_error"):
            self.errors[record["outcome"]] += 1
        self.draw()

    def draw(self) -> None:
        filled = self.WIDTH * self.done // self.total
        self.stream.write(
            f"\reval [{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total} cases"
            f"  judge errors {self.errors['judge_error']}  run errors {self.errors['run_error']}"
        )
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


# --- running the cases ---------------------------------------------------------------------------


@dataclass
class Evaluation:
    """One comparison: the route's baseline against a candidate, judged by a judge backend."""

    config: Config
    route_name: str
    route: RouteSettings
    candidate: str
    judge_backend: str
    backends: dict[str, Backend]
    evaluators: list
    scrub: Scrubber

    @property
    def identity(self) -> dict[str, str]:
        return {
            "route": self.route_name,
            "baseline": self.route.baseline,
            "candidate": self.candidate,
            "judge": self.judge_backend,
        }

    def key(self, case: Case) -> str:
        """The case's index and content under this comparison's identity: what a resumed run skips."""
        return stable_hash(
            json.dumps(self.identity, sort_keys=True), str(case.index), json.dumps(case.data, sort_keys=True)
        )[:32]

    def evaluate(self, case: Case, text: str, exchange: Exchange) -> tuple[dict, dict]:
        """Each available evaluator's value; one that raises is noted, never fatal to the run."""
        values, errors = {}, {}
        for evaluator in self.evaluators:
            if getattr(evaluator, "unavailable", None):
                continue
            try:
                value = evaluator.evaluate(case.data, text, exchange)
            except Exception as exc:
                errors[evaluator.name] = f"{type(exc).__name__}: {exc}"
                continue
            if value is not None:
                values[evaluator.name] = float(value)
        return values, errors

    async def answer(self, generation: Generation, backend: str, case: Case) -> dict[str, Any]:
        route = RouteSettings(baseline=backend, retries=self.route.retries)  # no fallbacks: a failure is the backend's
        ctx = RequestContext(
            request_id=f"eval-{case.index}-{backend}",
            route_name=self.route_name,
            route=route,
            body={"model": self.route_name, "messages": case.data["messages"]},
            headers={},
        )
        ctx.variant = backend
        started = time.perf_counter()
        try:
            response = await call_chain(ctx, generation, lambda b: b.complete(ctx.body))
        except GatewayError as err:
            return {"backend": backend, "error": self.scrub(f"{type(err).__name__}: {err.message}")}
        usage = response.get("usage") or {}
        exchange = Exchange(
            backend,
            response,
            (time.perf_counter() - started) * 1000,
            self.config.cost(backend, self.backends[backend].model, usage),
            usage,
        )
        text = answer_text(response) or ""
        values, errors = self.evaluate(case, text, exchange)
        side = {
            "backend": backend,
            "error": None,
            "answer": text,
            "latency_ms": exchange.latency_ms,
            "usage": usage,
            "cost_usd": exchange.cost_usd,
            "metrics": values,
        }
        if errors:
            side["metric_errors"] = errors
        return side

    async def run_case(self, generation: Generation, judge: PairwiseJudge, case: Case) -> dict[str, Any]:
        baseline, candidate = await asyncio.gather(
            self.answer(generation, self.route.baseline, case), self.answer(generation, self.candidate, case)
        )
        record = {
            "key": case.key,
            "index": case.index,
            "line": case.line,
            "baseline": baseline,
            "candidate": candidate,
            "outcome": "run_error",
        }
        if baseline["error"] or candidate["error"]:
            return record
        verdict = await judge.compare(case.data["messages"], candidate["answer"], baseline["answer"])
        record["outcome"] = OUTCOMES[verdict.outcome]
        record["judge"] = {
            "confidence": verdict.confidence,
            "reasoning": verdict.reasoning,
            "error": verdict.error and self.scrub(verdict.error),
            "orders": verdict.orders,
            "prompt_tokens": verdict.usage.prompt_tokens,
            "completion_tokens": verdict.usage.completion_tokens,
        }
        return record

    async def run(self, cases: list[Case], results: Path, concurrency: int) -> list[dict]:
        """Every case's record, in dataset order: the finished ones read back, the others run now."""
        for case in cases:
            case.key = self.key(case)
        previous = read_results(results)
        records = {
            c.key: previous[c.key] for c in cases if c.key in previous and previous[c.key]["outcome"] != "run_error"
        }
        todo = [c for c in cases if c.key not in records]
        if records:
            print(f"resuming: {len(records)} of {len(cases)} cases already done in {results}", file=sys.stderr)
        needed = {self.route.baseline, self.candidate, self.judge_backend}
        generation = Generation(self.config, {name: self.backends[name] for name in needed})
        judge = PairwiseJudge(self.backends[self.judge_backend])
        limit = asyncio.Semaphore(concurrency)
        results.parent.mkdir(parents=True, exist_ok=True)
        progress = Progress(len(cases), len(records))
        try:
            for name in needed:
                await self.backends[name].start()
            with results.open("a") as sink:
                if not _ends_a_line(results):
                    sink.write("\n")  # end a line cut short by a killed run before appending

                async def one(case: Case) -> None:
                    async with limit:
                        record = await self.run_case(generation, judge, case)
                    sink.write(json.dumps(record) + "\n")
                    sink.flush()
                    records[case.key] = record
                    progress.add(record)

                await asyncio.gather(*(one(case) for case in todo))
        finally:
            progress.close()
            for name in needed:
                await self.backends[name].close()
        return [records[c.key] for c in cases]


# --- the report and the gate ---------------------------------------------------------------------


@dataclass
class Gate:
    """When a candidate may ship: it wins clearly enough, enough cases were judged, no metric regressed."""

    min_win_rate: float = MIN_WIN_RATE
    min_lower_bound: float = MIN_LOWER_BOUND
    min_judged: float = MIN_JUDGED
    tolerances: dict[str, float | None] = field(default_factory=dict)  # metric -> relative regression allowed

    def conditions(self, counts: dict, judge: dict, metrics: dict) -> list[dict]:
        judged_share = counts["judged"] / counts["cases"]
        low = judge["ci95"]["low"] if judge["ci95"] else None
        found = [
            _condition("judged_share", "share of cases judged", judged_share, ">=", self.min_judged),
            _condition("win_rate", "win rate, ties split", judge["win_rate"], ">=", self.min_win_rate),
            _condition(
                "win_rate_lower_bound", "lower bound of the win rate's 95% interval", low, ">", self.min_lower_bound
            ),
        ]
        for name, metric in metrics.items():
            tolerance = self.tolerances.get(name)
            if tolerance is None or not metric["n"]:
                continue  # not gated, or no case says what to expect: missing data never fails
            found.append(
                _condition(
                    f"regression:{name}",
                    f"{name}: how much worse than the baseline, relatively",
                    _regression(metric),
                    "<=",
                    tolerance,
                )
            )
        return found


def _condition(name: str, what: str, value: float | None, op: str, threshold: float) -> dict:
    passed = value is not None and COMPARE[op](value, threshold)
    return {"name": name, "description": what, "value": value, "op": op, "threshold": threshold, "passed": passed}


def _regression(metric: dict) -> float | None:
    """How much worse the candidate's mean is, relative to the baseline's (negative: better).

    None when the baseline's mean is 0 and the candidate is worse: no ratio can be tolerated."""
    base, cand = metric["baseline"], metric["candidate"]
    worse = base - cand if metric["higher_is_better"] else cand - base
    if base == 0:
        return 0.0 if worse <= 0 else None
    return worse / abs(base)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _metric(evaluator, answered: list[dict]) -> dict[str, Any]:
    """The evaluator's means over the cases where both sides have a value: a paired comparison."""
    name = evaluator.name
    pairs = [
        (r["baseline"]["metrics"][name], r["candidate"]["metrics"][name])
        for r in answered
        if name in r["baseline"]["metrics"] and name in r["candidate"]["metrics"]
    ]
    base, cand = _mean([b for b, _ in pairs]), _mean([c for _, c in pairs])
    errors = sum(name in r[side].get("metric_errors", {}) for r in answered for side in ("baseline", "candidate"))
    return {
        "higher_is_better": evaluator.higher_is_better,
        "n": len(pairs),
        "baseline": base,
        "candidate": cand,
        "difference": None if base is None else cand - base,
        "unavailable": getattr(evaluator, "unavailable", None),
        "errors": errors,
    }


def build_report(evaluation: Evaluation, records: list[dict], gate: Gate, dataset: str) -> dict[str, Any]:
    outcomes = Counter(r["outcome"] for r in records)
    wins, losses, ties = outcomes["win"], outcomes["loss"], outcomes["tie"]
    judged = wins + losses + ties
    interval = wilson_interval(wins + ties / 2, judged)
    counts = {
        "cases": len(records),
        "judged": judged,
        "judge_errors": outcomes["judge_error"],
        "run_errors": outcomes["run_error"],
    }
    judged_records = [r for r in records if "judge" in r]
    judge = {
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "win_rate": win_rate(wins, losses, ties),
        "ci95": {"low": interval[0], "high": interval[1]} if interval else None,
        "prompt_tokens": sum(r["judge"]["prompt_tokens"] for r in judged_records),
        "completion_tokens": sum(r["judge"]["completion_tokens"] for r in judged_records),
    }
    answered = [r for r in records if r["outcome"] != "run_error"]
    metrics = {e.name: _metric(e, answered) for e in evaluation.evaluators}
    latency = {
        side: {f"p{p}": percentile([r[side]["latency_ms"] for r in answered], p) for p in (50, 95)}
        for side in ("baseline", "candidate")
    }
    conditions = gate.conditions(counts, judge, metrics)
    failed = [c["name"] for c in conditions if not c["passed"]]
    errors = [
        {
            "index": r["index"],
            "line": r["line"],
            "outcome": r["outcome"],
            "message": (
                r["judge"]["error"]
                if r["outcome"] == "judge_error"
                else r["baseline"]["error"] or r["candidate"]["error"]
            ),
        }
        for r in records
        if r["outcome"] in ("judge_error", "run_error")
    ]
    return {
        "run": {**evaluation.identity, "dataset": dataset, "config": evaluation.config.source},
        "counts": counts,
        "judge": judge,
        "metrics": metrics,
        "latency_ms": latency,
        "gate": {"passed": not failed, "failed": failed, "conditions": conditions},
        "verdict": "fail" if failed else "pass",
        "errors": errors[:ERRORS_LISTED],
    }


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def render_table(report: dict) -> str:
    """The report for a person at a terminal."""
    run, counts, judge = report["run"], report["counts"], report["judge"]
    ci = judge["ci95"] or {"low": None, "high": None}
    lines = [
        f"route {run['route']}: candidate {run['candidate']} vs baseline {run['baseline']}, judge {run['judge']}",
        f"cases {counts['cases']}  judged {counts['judged']}  judge errors {counts['judge_errors']}  "
        f"run errors {counts['run_errors']}",
        f"judge: {judge['wins']} wins, {judge['losses']} losses, {judge['ties']} ties; win rate "
        f"{_pct(judge['win_rate'])} (95% CI {_pct(ci['low'])} to {_pct(ci['high'])})",
        "",
        f"{'metric (mean per request)':<28}{'baseline':>12}{'candidate':>12}{'difference':>12}{'n':>6}",
    ]
    for name, m in report["metrics"].items():
        if m["unavailable"]:
            lines.append(f"{name:<28}unavailable: {m['unavailable']}")
            continue
        lines.append(
            f"{name:<28}{_num(m['baseline']):>12}{_num(m['candidate']):>12}{_num(m['difference']):>12}"
            f"{m['n']:>6}" + (f"  ({m['errors']} evaluator errors)" if m["errors"] else "")
        )
    for p in ("p50", "p95"):
        lines.append(
            f"{'latency ' + p + ' ms':<28}{_num(report['latency_ms']['baseline'][p]):>12}"
            f"{_num(report['latency_ms']['candidate'][p]):>12}"
        )
    lines += ["", "gate:"]
    for c in report["gate"]["conditions"]:
        lines.append(
            f"  {'pass' if c['passed'] else 'FAIL'}  {c['name']:<28}{_num(c['value']):>10} "
            f"{c['op']:<2} {c['threshold']:g}   {c['description']}"
        )
    verdict = "PASS" if report["gate"]["passed"] else f"FAIL ({', '.join(report['gate']['failed'])})"
    lines.append(f"verdict: {verdict}")
    return "\n".join(lines)


# --- the command ---------------------------------------------------------------------------------


def prepare(args: argparse.Namespace) -> Evaluation:
    """The config's plugins, backends and evaluators, checked against the arguments."""
    config = load_config(args.config)
    pm, plugin_settings = build_plugin_manager(config)
    hooks = HookRunner(pm, plugin_settings, order=list(config.settings.plugins))
    kinds: dict[str, type[Backend]] = {}
    for provided in hooks.collect("register_backend_kinds").values():
        kinds.update(provided)
    backends = build_backends(config, kinds)
    for backend in backends.values():  # an evaluation wants every case's own answer, not a breaker's refusal
        backend.breaker.settings = backend.breaker.settings.model_copy(update={"enabled": False})
    route = config.settings.routes.get(args.route)
    if route is None:
        raise UsageError(
            f"unknown route '{args.route}' (routes: {', '.join(sorted(config.settings.routes)) or 'none'})"
        )
    for flag, name in (("--candidate", args.candidate), ("--judge", args.judge)):
        if name not in backends:
            raise UsageError(f"{flag}: unknown backend '{name}' (defined: {', '.join(sorted(backends))})")
    if args.candidate == route.baseline:
        raise UsageError(f"--candidate: '{args.candidate}' is the route's baseline; name another backend")
    missing = [
        f"backend '{n}' needs {', '.join(m)}"
        for n in {route.baseline, args.candidate, args.judge}
        if (m := backends[n].missing_credentials())
    ]
    if missing:
        raise UsageError("missing credentials: " + "; ".join(sorted(missing)))
    evaluators, owners = [], {}
    for plugin, provided in hooks.collect("register_evaluators").items():
        for evaluator in provided:
            if evaluator.name in owners:
                raise ConfigError(
                    config.source,
                    [
                        f"plugins.{plugin}: evaluator '{evaluator.name}' is already "
                        f"registered by plugin '{owners[evaluator.name]}'"
                    ],
                )
            owners[evaluator.name] = plugin
            evaluators.append(evaluator)
    unknown = sorted({name for name, _ in args.tolerance} - set(owners))
    if unknown:
        raise UsageError(f"--tolerance: unknown metric {', '.join(unknown)} (metrics: {', '.join(owners)})")
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    return Evaluation(
        config, args.route, route, args.candidate, args.judge, backends, evaluators, Scrubber(config.secrets)
    )


def main(args: argparse.Namespace) -> int:
    """Exit 0 when the gate passes, 1 when it fails, 2 when the command cannot run as asked."""
    try:
        evaluation = prepare(args)
        cases = load_dataset(args.dataset)
    except (ConfigError, UsageError) as exc:
        print(f"llmgate eval: {exc}", file=sys.stderr)
        return 2
    gate = Gate(
        args.min_win_rate,
        args.min_lower_bound,
        args.min_judged,
        {**{e.name: getattr(e, "tolerance", None) for e in evaluation.evaluators}, **dict(args.tolerance)},
    )
    records = asyncio.run(evaluation.run(cases, results_path(args.out), args.concurrency))
    report = build_report(evaluation, records, gate, args.dataset)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(render_table(report))
    print(f"report: {args.out}  cases: {results_path(args.out)}")
    return 0 if report["gate"]["passed"] else 1
