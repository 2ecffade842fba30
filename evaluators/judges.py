"""LLM-as-judge: a pairwise judge and a rubric judge, each backed by any configured backend.

The pairwise judge asks twice, with the answers in both orders, and keeps a verdict only when
both orders agree: a judge that favours a position (a known bias of LLM judges) produces ties,
not wins. Output that is not the JSON asked for is retried once, then counted as a judge error,
never as a verdict.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Literal

from gateway.backends.base import Backend
from gateway.errors import GatewayError

DEFAULT_CRITERIA = ("accuracy", "helpfulness", "completeness", "tone")

PAIRWISE_SYSTEM = """You are an impartial judge comparing two answers to the same conversation.
Judge them on: {criteria}. Ignore the order in which the answers are shown and their length
except as it serves the criteria. Reply with JSON only, no other text:
{{"winner": "A" | "B" | "tie", "confidence": <0-100>, "reasoning": "<one or two sentences>"}}"""

RUBRIC_SYSTEM = """You are an impartial judge scoring one answer to a conversation.
Score each criterion from 1 (very poor) to 10 (excellent): {criteria}.{reference_note}
Reply with JSON only, no other text:
{{"scores": {{{score_keys}}}, "reasoning": "<one or two sentences>"}}"""


class JudgeOutputError(ValueError):
    """The judge did not answer in the required JSON shape."""


def render_conversation(messages: list[dict]) -> str:
    """The conversation as plain text for a judge prompt."""
    lines = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        lines.append(f"{message.get('role', 'user')}: {content or ''}")
    return "\n".join(lines)


def parse_json_object(text: str) -> dict:
    """The first JSON object in `text` (judges sometimes wrap it in prose or a code fence)."""
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    start = text.find("{")
    while start != -1:
        try:
            value, _ = json.JSONDecoder().raw_decode(text[start:])
            if isinstance(value, dict):
                return value
        except ValueError:
            pass
        start = text.find("{", start + 1)
    raise JudgeOutputError(f"no JSON object in the judge's answer: {text[:200]!r}")


@dataclass
class JudgeCall:
    """What one judge request cost, for budgets."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


async def _ask(backend: Backend, system: str, user: str, parse, retries: int, usage: JudgeCall):
    """Ask the judge; retry malformed output `retries` times; raise JudgeOutputError after that."""
    last: Exception | None = None
    for _ in range(retries + 1):
        body = {
            "model": backend.model,
            "temperature": 0,
            "max_tokens": 400,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        }
        answer = await backend.complete(body)
        u = answer.get("usage") or {}
        usage.prompt_tokens += u.get("prompt_tokens") or 0
        usage.completion_tokens += u.get("completion_tokens") or 0
        content = ((answer.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
        try:
            return parse(content)
        except JudgeOutputError as exc:
            last = exc
    raise last  # type: ignore[misc]


Outcome = Literal["first", "second", "tie", "error"]


@dataclass
class PairVerdict:
    """The outcome for the answers as the caller passed them: `first` won, `second` won, a tie, or an error."""

    outcome: Outcome
    confidence: float | None = None
    reasoning: str = ""
    error: str | None = None
    orders: list[str] = field(default_factory=list)  # each order's raw winner, for audit
    usage: JudgeCall = field(default_factory=JudgeCall)


def _parse_pairwise(content: str) -> dict:
    data = parse_json_object(content)
    winner = str(data.get("winner", "")).strip().upper()
    winner = {"TIE": "tie"}.get(winner, winner)
    if winner not in ("A", "B", "tie"):
        raise JudgeOutputError(f"'winner' must be A, B or tie, got {data.get('winner')!r}")
    confidence = data.get("confidence")
    if not isinstance(confidence, (int, float)) or isinstance(confidence, bool) or not 0 <= confidence <= 100:
        raise JudgeOutputError(f"'confidence' must be a number from 0 to 100, got {confidence!r}")
    return {"winner": winner, "confidence": float(confidence), "reasoning": str(data.get("reasoning", ""))}


class PairwiseJudge:
    def __init__(self, backend: Backend, criteria: tuple[str, ...] | list[str] = DEFAULT_CRITERIA, retries: int = 1):
        self.backend = backend
        self.criteria = tuple(criteria)
        self.retries = retries
        self.system = PAIRWISE_SYSTEM.format(criteria=", ".join(self.criteria))

    def _prompt(self, conversation: str, a: str, b: str) -> str:
        return f"Conversation:\n{conversation}\n\n[Answer A]\n{a}\n\n[Answer B]\n{b}"

    async def compare(self, messages: list[dict], first: str, second: str) -> PairVerdict:
        """Judge `first` against `second` in both orders; agreement wins, disagreement is a tie."""
        conversation = render_conversation(messages)
        usage = JudgeCall()
        try:  # one order after the other: a failed first order spends no more of the judge's budget
            straight = await _ask(
                self.backend,
                self.system,
                self._prompt(conversation, first, second),
                _parse_pairwise,
                self.retries,
                usage,
            )
            swapped = await _ask(
                self.backend,
                self.system,
                self._prompt(conversation, second, first),
                _parse_pairwise,
                self.retries,
                usage,
            )
        except (JudgeOutputError, GatewayError) as exc:
            return PairVerdict("error", error=f"{type(exc).__name__}: {exc}", usage=usage)
        # In the swapped order, A is `second`: map both to the caller's answers.
        picks = (
            {"A": "first", "B": "second", "tie": "tie"}[straight["winner"]],
            {"A": "second", "B": "first", "tie": "tie"}[swapped["winner"]],
        )
        outcome: Outcome = picks[0] if picks[0] == picks[1] else "tie"
        return PairVerdict(
            outcome,
            (straight["confidence"] + swapped["confidence"]) / 2,
            straight["reasoning"],
            orders=[straight["winner"], swapped["winner"]],
            usage=usage,
        )


@dataclass
class RubricVerdict:
    scores: dict[str, float]
    reasoning: str = ""
    error: str | None = None
    usage: JudgeCall = field(default_factory=JudgeCall)

    @property
    def mean(self) -> float | None:
        return sum(self.scores.values()) / len(self.scores) if self.scores else None


class RubricJudge:
    def __init__(self, backend: Backend, criteria: tuple[str, ...] | list[str] = DEFAULT_CRITERIA, retries: int = 1):
        self.backend = backend
        self.criteria = tuple(criteria)
        self.retries = retries

    def _parse(self, content: str) -> dict:
        data = parse_json_object(content)
        scores = data.get("scores")
        if not isinstance(scores, dict):
            raise JudgeOutputError("'scores' must be an object")
        out = {}
        for criterion in self.criteria:
            value = scores.get(criterion)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 1 <= value <= 10:
                raise JudgeOutputError(f"score for '{criterion}' must be a number from 1 to 10, got {value!r}")
            out[criterion] = float(value)
        return {"scores": out, "reasoning": str(data.get("reasoning", ""))}

    async def score(self, messages: list[dict], answer: str, reference: str | None = None) -> RubricVerdict:
        note = "\nA reference answer is given: judge accuracy and completeness against it." if reference else ""
        system = RUBRIC_SYSTEM.format(
            criteria=", ".join(self.criteria),
            reference_note=note,
            score_keys=", ".join(f'"{c}": <1-10>' for c in self.criteria),
        )
        user = f"Conversation:\n{render_conversation(messages)}\n\n[Answer]\n{answer}"
        if reference:
            user += f"\n\n[Reference answer]\n{reference}"
        usage = JudgeCall()
        try:
            result = await _ask(self.backend, system, user, self._parse, self.retries, usage)
        except (JudgeOutputError, GatewayError) as exc:
            return RubricVerdict({}, error=f"{type(exc).__name__}: {exc}", usage=usage)
        return RubricVerdict(result["scores"], result["reasoning"], usage=usage)


EQUIVALENCE_SYSTEM = """You decide whether an answer stored for one user question may be reused for another.
Two questions are "same" only when one correct answer serves both fully and correctly. A different
negation, number, name, identifier, action, direction or scope makes them different, however alike
they read. Reply with JSON only, no other text:
{"same": true | false, "reasoning": "<one sentence>"}"""


def _parse_equivalence(content: str) -> bool:
    same = parse_json_object(content).get("same")
    if not isinstance(same, bool):
        raise JudgeOutputError(f"'same' must be true or false, got {same!r}")
    return same


class EquivalenceJudge:
    """Asks whether two questions want the same answer (the semantic cache's check on borderline hits)."""

    def __init__(self, backend: Backend, retries: int = 1):
        self.backend = backend
        self.retries = retries

    async def same(self, asked: str, cached: str) -> bool:
        """True when the answer to `cached` may answer `asked`; raises JudgeOutputError on malformed output."""
        prompt = f"[Question 1]\n{asked}\n\n[Question 2]\n{cached}"
        return await _ask(self.backend, EQUIVALENCE_SYSTEM, prompt, _parse_equivalence, self.retries, JudgeCall())
