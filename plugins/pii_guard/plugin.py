"""pii_guard: personal data kept from the backends (and, optionally, from the callers), on the request path.

`guard_request` looks at every text a request carries, in the chat form every dialect is translated
into (messages, their text parts, tool calls' arguments, tool results) and in an embeddings input:
`redact` replaces each value with its kind's placeholder (`[EMAIL]`) before the cache, the traffic
log, shadows, judges or the backend see it; `block` refuses the request with a 400 that names the
kinds and where they are, never the values. With `output`, the answer is guarded too (whole, or
chunk by chunk: stream.py holds back enough text that a value split across chunks is still found),
and `block` then ends the answer with an error (`answer_refused`) rather than send a value.

Policies apply gateway-wide, per route and per team; where several apply, the strictest wins (block
over redact over off, every kind any of them names, the request and the answer if any asks). The detector is the
scrubber the datasets and the traffic log use (gateway/text/pii.py), regular expressions with
checksums: bench/pii_eval.py measures it against a general detector on labelled sets.

Set the plugin's `fail_closed: true` so a fault in the guard refuses the request instead of passing
it unguarded; an answer filter that fails always ends the answer with an error.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.errors import InvalidRequest
from gateway.filters import AnswerRefused
from gateway.hookspecs import hookimpl
from gateway.plugins import unknown_routes
from gateway.text.pii import KINDS, find, redact

from .stream import Spans, StreamRedactor

NAME = "pii_guard"
STRICTNESS = {"off": 0, "redact": 1, "block": 2}


def _known_kinds(kinds: list[str] | None) -> list[str] | None:
    unknown = [kind for kind in kinds or () if kind not in KINDS]
    if unknown:
        raise ValueError(f"unknown PII kind {', '.join(map(repr, unknown))}: the kinds are {', '.join(KINDS)}")
    return kinds


class Policy(BaseModel):
    """A route's or a team's policy: what it leaves unset, the gateway-wide one decides."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["redact", "block", "off"] | None = Field(None, description="redact, block or off")
    kinds: list[str] | None = Field(None, description="the kinds looked for (added to the gateway-wide ones)")
    input: bool | None = Field(None, description="guard the request")
    output: bool | None = Field(None, description="guard the answer too")

    _kinds = field_validator("kinds")(_known_kinds)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["redact", "block", "off"] = Field(
        "redact", description="redact: typed placeholders; block: a 400 naming the kinds; off: where no policy asks"
    )
    kinds: list[str] = Field(list(KINDS), description=f"the kinds looked for: {', '.join(KINDS)}")
    input: bool = Field(True, description="guard requests (before any plugin or backend sees them)")
    output: bool = Field(False, description="guard answers too (redacted, or ended with an error in block mode)")
    routes: dict[str, Policy] = Field({}, description="route -> its policy (the strictest that applies wins)")
    teams: dict[str, Policy] = Field({}, description="team -> its policy (the strictest that applies wins)")
    stream_holdback_chars: int = Field(
        96, ge=16, le=4096, description="text of a streamed answer held back so a value split across chunks is found"
    )

    _kinds = field_validator("kinds")(_known_kinds)


class Effective:
    """The policy one request is under."""

    __slots__ = ("mode", "kinds", "input", "output")

    def __init__(self, mode: str, kinds: frozenset[str], input: bool, output: bool):
        self.mode, self.kinds, self.input, self.output = mode, kinds, input, output


class PiiGuard:
    Settings = Settings
    DEFAULT_ENABLED = False

    def __init__(self, settings: Settings):
        self.settings = settings
        self.found: Counter = Counter()  # (where, kind) -> values found, for /metrics
        self.refused: Counter = Counter()  # where -> requests or answers refused
        self._cache: dict[tuple[str, str | None], Effective] = {}

    @hookimpl
    def config_problems(self, config):
        return unknown_routes(f"plugins.{NAME}.routes", self.settings.routes, config)

    def policy(self, route: str, team: str | None) -> Effective:
        """The strictest of the gateway-wide policy, the route's and the team's."""
        if (found := self._cache.get((route, team))) is not None:
            return found
        s = self.settings
        mode, kinds, guard_input, output = s.mode, set(s.kinds), s.input, s.output
        for extra in (s.routes.get(route), s.teams.get(team) if team else None):
            if extra is None:
                continue
            if extra.mode is not None and STRICTNESS[extra.mode] > STRICTNESS[mode]:
                mode = extra.mode
            kinds |= set(extra.kinds or ())
            guard_input = guard_input or bool(extra.input)
            output = output or bool(extra.output)
        self._cache[(route, team)] = found = Effective(mode, frozenset(kinds), guard_input, output)
        return found

    # --- the request ------------------------------------------------------------------------------

    @hookimpl
    def guard_request(self, ctx):
        policy = self.policy(ctx.route_name, ctx.tenant)
        if policy.mode == "off" or not policy.input:
            return
        found: dict[str, Counter] = {}  # where -> kinds
        if ctx.dialect == "embeddings":
            ctx.body = _embeddings(ctx.body, policy, found)
        else:
            ctx.body = {**ctx.body, "messages": _messages(ctx.body["messages"], policy, found)}
        if not found:
            return
        total = sum(found.values(), Counter())
        self.found.update(("request", kind) for kind in total.elements())
        ctx.annotations[NAME] = {"request": dict(total)}
        if policy.mode == "block":
            self.refused["request"] += 1
            where = next(iter(found))
            raise InvalidRequest(
                f"the request holds personal data ({', '.join(sorted(total))}) in {', '.join(found)}, "
                "which this route does not accept: remove it, or use a route that redacts it",
                code="pii_detected",
                param=where,
            )

    # --- the answer -------------------------------------------------------------------------------

    @hookimpl
    def answer_filter(self, ctx):
        policy = self.policy(ctx.route_name, ctx.tenant)
        if policy.mode == "off" or not policy.output or ctx.dialect == "embeddings":
            return None
        return AnswerGuard(self, ctx, policy)

    def answered(self, ctx, kinds: Counter, policy: Effective) -> None:
        """Count what an answer held; in block mode, end it instead."""
        self.found.update(("answer", kind) for kind in kinds.elements())
        mine = ctx.annotations.setdefault(NAME, {})
        mine["answer"] = dict(Counter(mine.get("answer") or {}) + kinds)
        if policy.mode == "block":
            self.refused["answer"] += 1
            raise AnswerRefused(
                f"the answer held personal data ({', '.join(sorted(kinds))}), which this route does not send; "
                f"nothing of it was sent (request id {ctx.request_id})",
                code="pii_detected",
            )

    # --- operators ---------------------------------------------------------------------------------

    @hookimpl
    def admin_status(self, gateway):
        found: dict[str, dict[str, int]] = {}
        for (where, kind), n in self.found.items():
            found.setdefault(where, {})[kind] = n
        return {NAME: {"found": found, "refused": dict(self.refused)}}

    @hookimpl
    def collect_metrics(self, gateway):
        rows = [
            ("llmgate_pii_found_total", "Personal data values found, by where and kind.", {"where": w, "kind": k}, n)
            for (w, k), n in self.found.items()
        ]
        rows += [
            ("llmgate_pii_refused_total", "Requests and answers refused for personal data.", {"where": w}, n)
            for w, n in self.refused.items()
        ]
        return rows


class AnswerGuard:
    """The answer filter of one request (gateway.filters.AnswerFilter)."""

    def __init__(self, guard: PiiGuard, ctx, policy: Effective):
        self.guard, self.ctx, self.policy = guard, ctx, policy
        self.stream = StreamRedactor(policy.kinds, guard.settings.stream_holdback_chars, self._found)

    def _found(self, spans: Spans) -> None:
        self.guard.answered(self.ctx, Counter(kind for _, _, kind in spans), self.policy)

    def completion(self, answer: dict) -> dict:
        found: dict[str, Counter] = {}
        choices = []
        for i, choice in enumerate(answer.get("choices") or ()):
            message = choice.get("message") or {}
            guarded = _message(message, f"choices[{i}].message", self.policy, found)
            choices.append(choice if guarded is message else {**choice, "message": guarded})
        if not found:
            return answer
        self.guard.answered(self.ctx, sum(found.values(), Counter()), self.policy)
        return {**answer, "choices": choices}

    def chunk(self, chunk: dict) -> dict:
        return self.stream.chunk(chunk)

    def finish(self) -> dict | None:
        return self.stream.finish()


# --- walking a request's texts ---------------------------------------------------------------------


def _text(text: str, where: str, policy: Effective, found: dict[str, Counter]) -> str:
    spans = find(text, policy.kinds)
    if not spans:
        return text
    found.setdefault(where, Counter()).update(kind for _, _, kind in spans)
    return redact(text, spans)


def _arguments(arguments: str, where: str, policy: Effective, found: dict[str, Counter]) -> str:
    """A tool call's arguments: each string of the JSON (so the JSON stays valid), or the text as it is."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return _text(arguments, where, policy, found)
    before = sum(found.get(where, Counter()).values())
    guarded = _value(value, where, policy, found)
    return arguments if sum(found.get(where, Counter()).values()) == before else json.dumps(guarded, ensure_ascii=False)


def _value(value: Any, where: str, policy: Effective, found: dict[str, Counter]) -> Any:
    if isinstance(value, str):
        return _text(value, where, policy, found)
    if isinstance(value, list):
        return [_value(item, where, policy, found) for item in value]
    if isinstance(value, dict):
        return {key: _value(item, where, policy, found) for key, item in value.items()}
    return value


def _content(content: Any, where: str, policy: Effective, found: dict[str, Counter]) -> Any:
    if isinstance(content, str):
        return _text(content, where, policy, found)
    if not isinstance(content, list):
        return content
    parts = []
    for j, part in enumerate(content):
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            text = _text(part["text"], f"{where}[{j}].text", policy, found)
            part = part if text is part["text"] else {**part, "text": text}
        parts.append(part)
    return parts


def _message(message: dict, where: str, policy: Effective, found: dict[str, Counter]) -> dict:
    """A copy of a chat message with its texts guarded (the message itself when nothing was found)."""
    out = message
    for field in ("content", "reasoning_content"):
        if message.get(field) is not None:
            guarded = _content(message[field], f"{where}.{field}", policy, found)
            if guarded is not message[field]:
                out = {**out, field: guarded}
    calls = message.get("tool_calls")
    if calls:
        new_calls = []
        for k, call in enumerate(calls):
            function = call.get("function") or {}
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                guarded = _arguments(arguments, f"{where}.tool_calls[{k}].function.arguments", policy, found)
                if guarded is not arguments:
                    call = {**call, "function": {**function, "arguments": guarded}}
            new_calls.append(call)
        if any(a is not b for a, b in zip(new_calls, calls)):
            out = {**out, "tool_calls": new_calls}
    return out


def _messages(messages: list[dict], policy: Effective, found: dict[str, Counter]) -> list[dict]:
    return [_message(m, f"messages[{i}]", policy, found) for i, m in enumerate(messages)]


def _embeddings(body: dict, policy: Effective, found: dict[str, Counter]) -> dict:
    value = body.get("input")
    if isinstance(value, str):
        return {**body, "input": _text(value, "input", policy, found)}
    if isinstance(value, list) and any(isinstance(item, str) for item in value):
        guarded = [
            _text(item, f"input[{i}]", policy, found) if isinstance(item, str) else item for i, item in enumerate(value)
        ]
        return {**body, "input": guarded}
    return body
