"""The offline gate and replay: a candidate answers real questions before any user sees it.

Cases come from two places: a dataset's held-out test split (what the model was not trained on)
and a replay of recent real questions from the traffic log (sampled by a seeded hash, PII
scrubbed, never an exchange with tool side effects unless asked: replaying a tool call would ask
a model to act again on a user's behalf). Both go through `llmgate eval`'s machinery
(evaluators/offline.py): the candidate and the route's current model answer each case on fresh
backend objects (the serving ones are never started or closed here), the pairwise judge compares
them in both orders, the deterministic evaluators score both, and the report has the judge's win
rate with its 95% interval, latency, cost and errors. Results are appended as they finish, so a
gate interrupted by a restart resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluators.offline import Case, Evaluation, Gate, build_report
from flywheel import traffic_source
from gateway.config import Config, RouteSettings
from gateway.errors import Scrubber
from gateway.gateway import build_backends
from gateway.text.pii import scrub

SKIPS = {
    "not_answered": "the exchange did not end in a 200 with its bodies logged",
    "tool_side_effects": "the exchange offered tools or carried tool results (--include-tools replays them)",
    "no_question": "no user turn to answer, or content other than text",
    "duplicate": "the same question as one sampled already",
}


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    return None


def question_of(record: dict[str, Any], include_tools: bool = False) -> tuple[list[dict] | None, str]:
    """The logged request's messages, PII scrubbed, to ask again; (None, why) when it is not replayed."""
    request, response = record.get("request"), record.get("response")
    if record.get("status") != 200 or not isinstance(request, dict) or not isinstance(response, dict):
        return None, "not_answered"
    messages = request.get("messages") or []
    tools = request.get("tools") or any(
        isinstance(m, dict) and (m.get("tool_calls") or m.get("role") == "tool") for m in messages
    )
    if tools and not include_tools:
        return None, "tool_side_effects"
    asked = []
    for message in messages:
        text = _text(message.get("content")) if isinstance(message, dict) else None
        if text is None and not (include_tools and isinstance(message, dict) and message.get("tool_calls")):
            return None, "no_question"
        asked.append({**message, "content": scrub(text)[0] if text is not None else None})
    if not asked or asked[-1].get("role") != "user":
        return None, "no_question"
    return asked, ""


def replay_cases(
    config: Config,
    route: str,
    since: float,
    until: float | None = None,
    *,
    sample: int = 100,
    seed: int = 0,
    include_tools: bool = False,
) -> tuple[list[Case], dict[str, int]]:
    """Up to `sample` of the route's real questions since `since` (a seeded hash picks them), and what was skipped."""
    skipped: Counter = Counter()
    picked: dict[str, tuple[bytes, dict]] = {}
    for record in traffic_source.iter_records(config, route=route, since=since, until=until):
        messages, why = question_of(record, include_tools)
        if messages is None:
            skipped[why] += 1
            continue
        key = json.dumps(messages, sort_keys=True)
        if key in picked:
            skipped["duplicate"] += 1
            continue
        rank = hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()
        picked[key] = (rank, {"messages": messages, "request_id": record.get("request_id")})
    chosen = [data for _, data in sorted(picked.values(), key=lambda item: item[0])[:sample]]
    return [Case(i, i + 1, data) for i, data in enumerate(chosen)], dict(skipped)


def _split_messages(record: dict[str, Any], fmt: str) -> tuple[list[dict], str]:
    """A dataset record as (the messages to ask, the logged answer) in the chat API's shape."""
    if fmt in ("titan", "llama"):
        return [{"role": "user", "content": record["prompt"]}], record["completion"]
    if fmt == "nova":
        system = [{"role": "system", "content": " ".join(b["text"] for b in record.get("system", []))}]
        turns = [{"role": m["role"], "content": "".join(b["text"] for b in m["content"])} for m in record["messages"]]
        messages = (system if record.get("system") else []) + turns
    elif fmt == "bedrock":
        messages = ([{"role": "system", "content": record["system"]}] if record.get("system") else []) + record[
            "messages"
        ]
    else:
        messages = record["messages"]
    *asked, answer = messages
    return asked, answer.get("content") or ""


def test_split_cases(dataset_dir: str | Path, limit: int = 100) -> list[Case]:
    """The dataset's held-out test records as cases (tool-use examples left out: they would act)."""
    path = Path(dataset_dir)
    fmt = json.loads((path / "manifest.json").read_text())["format"]
    cases = []
    for line in (path / "test.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("tools"):
            continue
        asked, answer = _split_messages(record, fmt)
        cases.append(Case(len(cases), len(cases) + 1, {"messages": asked, "reference": answer}))
        if len(cases) >= limit:
            break
    return cases


class Pace:
    """At most `per_second` starts a second, spread evenly (None: no limit)."""

    def __init__(self, per_second: float | None):
        self.gap = 1 / per_second if per_second else 0.0
        self.next = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.gap:
            return
        async with self.lock:
            now = time.monotonic()
            if self.next > now:
                await asyncio.sleep(self.next - now)
            self.next = max(now, self.next) + self.gap


@dataclass
class PacedEvaluation(Evaluation):
    """An evaluation whose cases start no faster than its pace: replay never floods a provider."""

    pace: Pace | None = None

    async def run_case(self, generation, judge, case):
        if self.pace is not None:
            await self.pace.wait()
        return await super().run_case(generation, judge, case)


async def compare(
    config: Config,
    kinds: dict,
    evaluators: list,
    route: str,
    current: str,
    candidate: str,
    judge: str,
    cases: list[Case],
    results: Path,
    gate: Gate,
    *,
    concurrency: int = 4,
    per_second: float | None = None,
    label: str = "replay",
) -> dict[str, Any]:
    """The candidate against `current` on `cases`: the eval report (judge win rate and interval, latency, cost)."""
    names = {current, candidate, judge}
    missing = sorted(names - set(config.settings.backends))
    if missing:
        raise ValueError(f"no backend named {', '.join(missing)}")
    if not cases:
        raise ValueError("no case to compare on")
    subset = config.settings.model_copy(
        update={"backends": {n: b for n, b in config.settings.backends.items() if n in names}}
    )
    backends = build_backends(Config(settings=subset, source=config.source, secrets=set(config.secrets)), kinds)
    for backend in backends.values():  # each case's own answer, never a breaker's refusal
        backend.breaker.settings = backend.breaker.settings.model_copy(update={"enabled": False})
    settings = config.settings.routes.get(route)
    evaluation = PacedEvaluation(
        config,
        route,
        RouteSettings(baseline=current, retries=settings.retries if settings else 1),
        candidate,
        judge,
        backends,
        evaluators,
        Scrubber(config.secrets),
        pace=Pace(per_second),
    )
    records = await evaluation.run(cases, results, concurrency)
    return build_report(evaluation, records, gate, label)


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """What a registry record and an event keep of a report: the verdict and the figures it rests on."""
    judge = report["judge"]
    return {
        "verdict": report["verdict"],
        "failed": report["gate"]["failed"],
        "cases": report["counts"]["cases"],
        "judged": report["counts"]["judged"],
        "win_rate": judge["win_rate"],
        "ci95": judge["ci95"],
        "wins": judge["wins"],
        "losses": judge["losses"],
        "ties": judge["ties"],
        "latency_ms": report["latency_ms"],
        "errors": report["counts"]["run_errors"] + report["counts"]["judge_errors"],
        "cost_usd": {side: (report["metrics"].get("cost_usd") or {}).get(side) for side in ("baseline", "candidate")},
    }
