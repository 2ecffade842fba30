"""dataset: fine-tuning datasets built from the traffic the gateway logged (`llmgate dataset ...`).

`llmgate dataset build` reads a route's logged exchanges (flywheel.traffic_source: the local
traffic log or the S3 sink), keeps those that pass the filters (time, variant, status, judge
score, user feedback), cleans them (incomplete answers and image content dropped, tool-use
exchanges kept for the formats that train them, PII replaced by typed placeholders,
per-message length bounds, exact then near duplicates removed), converts them to a provider's
format (flywheel.dataset.formats), splits them 80/10/10 by a seeded hash (the same input and
seed give the same files), and writes train/validation/test JSONL plus `manifest.json`: counts,
filters, the source's time range, file hashes, what was dropped and why, and the PII replaced
per kind. Each record is dropped for the first reason that applies.

`llmgate dataset validate FILE --format F` checks a file line by line and names every bad line.

A command-line module only: no hooks run while the gateway serves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from flywheel import traffic_source
from gateway.config import Config, load_config
from gateway.text.pii import KINDS, scrub, scrub_value

from .formats import SPLITS, ChatFormat, Unfit, make_format, split_of, validate_file
from .near_duplicates import NearDuplicateIndex

# Why a record was left out, in the order the checks run (the manifest repeats the ones that occurred).
REASONS = {
    "status": "the exchange's status is not one kept (--status, default 200)",
    "variant": "answered by a backend other than --variant",
    "judge_unscored": "no judge score for the answer (--min-judge-score)",
    "judge_below_min": "the judge scored the answer below --min-judge-score",
    "feedback_missing": "no user rating for the answer (--feedback)",
    "feedback_mismatch": "the user rating does not match --feedback",
    "no_bodies": "the traffic log kept no request or response body",
    "incomplete": "no answer text, an answer cut off (length, content filter), or no user turn to answer",
    "unsupported_content": "content other than text (images, audio), a tool that is not a function, or a tool "
    "call with no tool offered",
    "tools_unsupported_by_format": "a tool-use exchange, and the format takes no tool-use examples (only openai does)",
    "multi_turn_unsupported_by_format": "several user turns, and the format holds one prompt and its completion",
    "too_short": "a message shorter than --min-chars",
    "too_long": "a message longer than --max-chars",
    "invalid_for_format": "the record breaks the format's rules or its token limit",
    "duplicate_exact": "the same record (after PII scrubbing) as one kept earlier",
    "duplicate_near": "nearly the same text as one kept earlier (--near-duplicate-threshold)",
    "over_provider_limit": "more records than the provider takes in one file",
}
HELPFUL_SCORE = 0.75  # "helpful", or 4-5 of 5 (feedback normalises a rating r to (r-1)/4)
TRUNCATED = {"length", "content_filter"}


@dataclass
class BuildOptions:
    route: str
    format: ChatFormat
    out: Path
    since: float | None = None
    until: float | None = None
    variants: list[str] | None = None
    statuses: tuple[int, ...] = (200,)
    min_judge_score: float | None = None
    feedback: str | None = None
    min_chars: int = 1
    max_chars: int = 32_000
    near_duplicate_threshold: float = 0.85
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0


@dataclass
class Example:
    request_id: str
    ts: float
    line: str  # the record in the output format, as written
    pii: Counter = field(default_factory=Counter)
    tool_use: bool = False  # a tool-use example: tool calls, the tools' answers, the tools offered


class Drop(Exception):
    """A record left out of the dataset, for `reason` (one of REASONS)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason


# --- conversations from logged exchanges ----------------------------------------------------------


def _text(content: Any) -> str:
    """A message's text; content parts other than text cannot go into a text dataset."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise Drop("unsupported_content", "a content part that is not text")
            parts.append(part["text"])
        return "".join(parts)
    raise Drop("unsupported_content", "content that is not text")


def _tools_of(request: dict[str, Any]) -> list[dict] | None:
    """The function tools a request offered (None: none); other kinds of tool cannot be trained."""
    if request.get("functions"):
        raise Drop("unsupported_content", "legacy 'functions' instead of 'tools'")
    tools = request.get("tools")
    if not tools:
        return None
    if not isinstance(tools, list) or not all(
        isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict) for t in tools
    ):
        raise Drop("unsupported_content", "a tool that is not a function")
    return tools


def _tool_calls(message: dict[str, Any], tools: list[dict] | None) -> list[dict] | None:
    calls = message.get("tool_calls")
    if message.get("function_call"):
        raise Drop("unsupported_content", "a legacy function_call")
    if not calls:
        return None
    if tools is None:
        raise Drop("unsupported_content", "a tool call with no tool offered")
    if not isinstance(calls, list) or not all(
        isinstance(c, dict) and c.get("type", "function") == "function" for c in calls
    ):
        raise Drop("unsupported_content", "a tool call that is not a function call")
    return [{"id": c.get("id"), "type": "function", "function": dict(c.get("function") or {})} for c in calls]


def conversation_of(record: dict[str, Any]) -> dict[str, Any]:
    """The exchange as {"system", "tools", "messages"}: the request's turns and the answer the caller got.

    System (and developer) messages are joined into `system`; consecutive text turns of one role
    are joined, as the providers would read them. Tool calls, the tools' answers and the tools
    offered are kept (a format without tool use drops them later, for that reason). Raises Drop
    when the exchange cannot be an example."""
    request, response = record.get("request"), record.get("response")
    if not isinstance(request, dict) or not isinstance(response, dict):
        raise Drop("no_bodies", "the traffic log kept no bodies (plugins.traffic_log.bodies: false)")
    tools = _tools_of(request)
    choices = response.get("choices") or []
    answer = (choices[0].get("message") or {}) if choices and isinstance(choices[0], dict) else {}
    answer_calls = _tool_calls(answer, tools)
    if choices and choices[0].get("finish_reason") in TRUNCATED:
        raise Drop("incomplete", f"the answer was cut off ({choices[0]['finish_reason']})")
    answer_text = _text(answer.get("content"))
    if not answer_text.strip() and not answer_calls:
        raise Drop("incomplete", "no answer text")
    system, turns = [], []
    for message in request.get("messages") or []:
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            system.append(_text(message.get("content")))
        elif role in ("user", "assistant"):
            calls = _tool_calls(message, tools) if role == "assistant" else None
            text = _text(message.get("content"))
            if calls:
                turns.append({"role": role, "content": text or None, "tool_calls": calls})
            elif turns and turns[-1]["role"] == role and not turns[-1].get("tool_calls"):
                turns[-1]["content"] += "\n\n" + text
            else:
                turns.append({"role": role, "content": text})
        elif role == "tool" and tools is not None:
            turns.append(
                {"role": "tool", "content": _text(message.get("content")), "tool_call_id": message.get("tool_call_id")}
            )
        else:
            raise Drop("unsupported_content", f"a {role!r} message")
    if not turns or turns[-1]["role"] not in ("user", "tool") or turns[0]["role"] != "user":
        raise Drop("incomplete", "the conversation does not start with the user's turn and end with one to answer")
    final = {"role": "assistant", "content": answer_text or None}
    if answer_calls:
        final["tool_calls"] = answer_calls
    turns.append(final)
    return {"system": "\n\n".join(s for s in system if s) or None, "tools": tools, "messages": turns}


def _scrub_call(call: dict[str, Any], counts: Counter) -> dict[str, Any]:
    """A tool call with PII replaced inside its arguments (kept a JSON text when it was one)."""
    function = dict(call["function"])
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            function["arguments"] = json.dumps(scrub_value(json.loads(arguments), counts), ensure_ascii=False)
        except ValueError:
            function["arguments"] = scrub(arguments, counts)[0]
    return {**call, "function": function}


def scrub_conversation(conversation: dict[str, Any]) -> tuple[dict[str, Any], Counter]:
    counts: Counter = Counter()
    system = scrub(conversation["system"], counts)[0] if conversation.get("system") else None
    messages = []
    for m in conversation["messages"]:
        message = {**m, "content": scrub(m["content"], counts)[0] if m.get("content") else m.get("content")}
        if m.get("tool_calls"):
            message["tool_calls"] = [_scrub_call(c, counts) for c in m["tool_calls"]]
        messages.append(message)
    return {"system": system, "tools": conversation.get("tools"), "messages": messages}, counts


def _texts(conversation: dict[str, Any]) -> list[str]:
    """Every text of a conversation a person wrote or read: the system prompt, turns, tool calls."""
    texts = [conversation["system"]] if conversation.get("system") else []
    for m in conversation["messages"]:
        if m.get("content"):
            texts.append(m["content"])
        texts += [json.dumps(c["function"], sort_keys=True) for c in m.get("tool_calls") or ()]
    return texts


def _check_lengths(conversation: dict[str, Any], options: BuildOptions) -> None:
    texts = _texts(conversation)
    if any(len(t.strip()) < options.min_chars for t in texts):
        raise Drop("too_short", f"a message shorter than {options.min_chars} characters")
    if any(len(t) > options.max_chars for t in texts):
        raise Drop("too_long", f"a message longer than {options.max_chars} characters")


# --- selection -------------------------------------------------------------------------------------


@dataclass
class Selection:
    """The joins the filters need: judge scores and feedback by request id."""

    judge: dict[str, float]
    feedback: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, config: Config, options: BuildOptions) -> "Selection":
        judge = traffic_source.judge_scores_by_request(config) if options.min_judge_score is not None else {}
        feedback = traffic_source.feedback_by_request(config) if options.feedback else {}
        return cls(judge, feedback)

    def judge_score(self, record: dict[str, Any]) -> float | None:
        noted = (record.get("annotations") or {}).get("judge_score")
        if isinstance(noted, (int, float)) and not isinstance(noted, bool):
            return float(noted)
        return self.judge.get(record["request_id"])

    def check(self, record: dict[str, Any], options: BuildOptions) -> None:
        if record.get("status") not in options.statuses:
            raise Drop("status")
        if options.variants and record.get("served_by") not in options.variants:
            raise Drop("variant")
        if options.min_judge_score is not None:
            score = self.judge_score(record)
            if score is None:
                raise Drop("judge_unscored")
            if score < options.min_judge_score:
                raise Drop("judge_below_min")
        if options.feedback:
            rated = self.feedback.get(record["request_id"])
            if rated is None:
                raise Drop("feedback_missing")
            helpful = rated["score"] >= HELPFUL_SCORE
            if (options.feedback == "helpful" and not helpful) or (options.feedback == "not_helpful" and helpful):
                raise Drop("feedback_mismatch")


# --- the build -------------------------------------------------------------------------------------


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def _split_sizes(n: int, split: tuple[float, float, float]) -> tuple[int, int, int]:
    validation, test = round(n * split[1]), round(n * split[2])
    return n - validation - test, validation, test


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def select_examples(
    records: Iterable[dict[str, Any]], selection: Selection, options: BuildOptions, dropped: Counter, seen_range: list
) -> list[Example]:
    """Records that pass the filters and cleaning, oldest first; `dropped` counts the others by reason."""
    fmt = options.format
    exact: set[str] = set()
    near = NearDuplicateIndex(options.near_duplicate_threshold)
    kept: list[Example] = []
    for record in records:
        ts = record.get("ts")
        if ts is not None:
            seen_range[0] = ts if seen_range[0] is None else min(seen_range[0], ts)
            seen_range[1] = ts if seen_range[1] is None else max(seen_range[1], ts)
        try:
            selection.check(record, options)
            conversation, pii = scrub_conversation(conversation_of(record))
            _check_lengths(conversation, options)
            try:
                converted = fmt.fit(conversation)
            except Unfit as unfit:
                raise Drop(unfit.reason, str(unfit)) from None
            if fmt.record_problems(converted):
                raise Drop("invalid_for_format")
            line = _dumps(converted)
            digest = hashlib.sha256(line.encode()).hexdigest()
            if digest in exact:
                raise Drop("duplicate_exact")
            exact.add(digest)
            if near.seen("\n".join(_texts(conversation))):
                raise Drop("duplicate_near")
        except Drop as drop:
            dropped[drop.reason] += 1
            continue
        kept.append(Example(record["request_id"], ts, line, pii, bool(conversation.get("tools"))))
    return kept


def split_examples(examples: list[Example], options: BuildOptions, dropped: Counter) -> dict[str, list[Example]]:
    """Seeded, order-free split: examples sorted by a hash of the seed and their content."""
    ordered = sorted(examples, key=lambda e: hashlib.sha256(f"{options.seed}\x1f{e.line}".encode()).digest())
    n_train, n_validation, _ = _split_sizes(len(ordered), options.split)
    parts = {
        "train": ordered[:n_train],
        "validation": ordered[n_train : n_train + n_validation],
        "test": ordered[n_train + n_validation :],
    }
    for name, limit in options.format.max_records.items():
        if len(parts[name]) > limit:  # the provider refuses bigger files: keep the first `limit`
            dropped["over_provider_limit"] += len(parts[name]) - limit
            parts[name] = parts[name][:limit]
    return parts


def build(config: Config, options: BuildOptions) -> dict[str, Any]:
    """Build the dataset into `options.out`; the manifest written there is returned."""
    if abs(sum(options.split) - 1) > 1e-6 or any(p < 0 for p in options.split):
        raise ValueError("the split shares must be non-negative and add up to 100")
    started = time.time()
    selection = Selection.load(config, options)
    dropped: Counter = Counter()
    seen_range: list = [None, None]
    read = 0

    def counted(records: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        nonlocal read
        for record in records:
            read += 1
            yield record

    records = traffic_source.iter_records(config, route=options.route, since=options.since, until=options.until)
    kept = select_examples(counted(records), selection, options, dropped, seen_range)
    parts = split_examples(kept, options, dropped)
    written = [e for name in SPLITS for e in parts[name]]

    options.out.mkdir(parents=True, exist_ok=True)
    files, problems, pii = {}, [], Counter()
    for name in SPLITS:
        path = options.out / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for example in parts[name]:
                f.write(example.line + "\n")
        report = validate_file(path, options.format, name)
        problems += [f"{path.name}: {p}" for p in report.problems]
        files[path.name] = {
            "records": len(parts[name]),
            "sha256": _sha256(path),
            "bytes": path.stat().st_size,
            "valid": report.ok,
        }
    for example in written:
        pii.update(example.pii)
    kept_ts = [e.ts for e in written if e.ts is not None]
    manifest = {
        "created_at": _iso(started),
        "route": options.route,
        "format": options.format.name,
        "format_limits": options.format.limits(),
        "filters": {
            "route": options.route,
            "since": _iso(options.since),
            "until": _iso(options.until),
            "variants": options.variants,
            "statuses": list(options.statuses),
            "min_judge_score": options.min_judge_score,
            "feedback": options.feedback,
        },
        "cleaning": {
            "min_chars_per_message": options.min_chars,
            "max_chars_per_message": options.max_chars,
            "near_duplicate_threshold": options.near_duplicate_threshold,
            "pii_kinds": list(KINDS),
        },
        "split": {"shares": dict(zip(SPLITS, options.split)), "seed": options.seed},
        "source": {
            **traffic_source.describe_source(config),
            "time_range": {"first": _iso(seen_range[0]), "last": _iso(seen_range[1])},
            "judge_scores": traffic_source.shadow_path(config) if options.min_judge_score is not None else None,
            "feedback": traffic_source.feedback_path(config) if options.feedback else None,
        },
        "counts": {
            "read": read,
            "kept": len(written),
            **{name: len(parts[name]) for name in SPLITS},
            "dropped": sum(dropped.values()),
            "tool_use": sum(e.tool_use for e in written),
        },
        "dropped": {reason: dropped[reason] for reason in REASONS if dropped[reason]},
        "drop_reasons": {reason: why for reason, why in REASONS.items() if dropped[reason]},
        "pii_replaced": {kind: pii[kind] for kind in KINDS},
        "kept_time_range": {
            "first": _iso(min(kept_ts)) if kept_ts else None,
            "last": _iso(max(kept_ts)) if kept_ts else None,
        },
        "files": files,
        "problems": problems,
    }
    with open(options.out / "manifest.json", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return manifest


# --- the command line (parsed by commands.py) ------------------------------------------------------


def cmd_build(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    options = BuildOptions(
        route=args.route,
        format=make_format(args.format, args.max_tokens),
        out=Path(args.out),
        since=args.since,
        until=args.until,
        variants=args.variant,
        statuses=tuple(args.status or (200,)),
        min_judge_score=args.min_judge_score,
        feedback=args.feedback,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        near_duplicate_threshold=args.near_duplicate_threshold,
        split=args.split,
        seed=args.seed,
    )
    if args.route not in config.settings.routes:
        print(
            f"llmgate: note: route '{args.route}' is not in {config.source}; reading its logged traffic anyway",
            file=sys.stderr,
        )
    try:
        manifest = build(config, options)
    except traffic_source.SourceError as exc:
        print(f"llmgate: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        counts = manifest["counts"]
        print(
            f"{options.out}: {counts['kept']} of {counts['read']} exchanges of route '{options.route}' "
            f"({options.format.name}): train {counts['train']}, validation {counts['validation']}, "
            f"test {counts['test']}"
        )
        if manifest["dropped"]:
            print("  dropped: " + ", ".join(f"{reason} {n}" for reason, n in manifest["dropped"].items()))
        replaced = {k: v for k, v in manifest["pii_replaced"].items() if v}
        print("  PII replaced: " + (", ".join(f"{k} {v}" for k, v in replaced.items()) or "none"))
    for problem in manifest["problems"]:
        print(f"  problem: {problem}", file=sys.stderr)
    if not manifest["counts"]["kept"]:
        print("llmgate: no exchange was kept: loosen the filters or widen --since", file=sys.stderr)
    return 1 if manifest["problems"] or not manifest["counts"]["kept"] else 0


def cmd_validate(args: argparse.Namespace) -> int:
    fmt = make_format(args.format, args.max_tokens)
    split = args.split or split_of(args.file)
    try:
        report = validate_file(args.file, fmt, split)
    except OSError as exc:
        print(f"llmgate: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except UnicodeDecodeError:
        print(f"llmgate: {args.file} is not UTF-8 text", file=sys.stderr)
        return 1
    for problem in report.problems:
        print(f"{args.file}: {problem}")
    verdict = "valid" if report.ok else f"{len(report.bad_lines)} bad lines, {len(report.problems)} problems"
    print(f"{args.file}: {report.records} records ({fmt.name}{', ' + split if split else ''}): {verdict}")
    return 0 if report.ok else 1
