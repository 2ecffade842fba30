"""Scrubbing personal data out of text: typed placeholders in place of the values, counted per kind.

A small standalone API (no gateway imports), so the dataset builder uses it now and a log sink
can use it later on logged bodies:

    text, counts = scrub("mail bob@example.com")   # ("mail [EMAIL]", Counter({"EMAIL": 1}))
    body = scrub_value(body, counts)               # every string inside a JSON value, counts added

Kinds, in the order they are looked for (an earlier kind claims its text first): PASSWORD (the
value after `password:` / `password=`), AWS_ACCESS_KEY, EMAIL, CREDIT_CARD (13-19 digits that
pass the Luhn check), SSN (NNN-NN-NNNN outside the ranges never issued), IPV6 and IPV4 (checked
by `ipaddress`), PHONE (North American numbers, and international ones written with `+`).
A placeholder holds no `@`, `:` or run of digits, so later kinds never match inside one.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from typing import Any, Callable

KINDS = ("PASSWORD", "AWS_ACCESS_KEY", "EMAIL", "CREDIT_CARD", "SSN", "IPV6", "IPV4", "PHONE")


def placeholder(kind: str) -> str:
    return f"[{kind}]"


def luhn_valid(digits: str) -> bool:
    """The card-number checksum: double every second digit from the right, the sum ends in 0."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match) -> bool:
    digits = re.sub(r"\D", "", match.group(0))
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _ipv6(match: re.Match) -> bool:
    text = match.group(0)
    if text.count(":") < 2 or not re.search(r"\d", text):  # a::b and Foo::Bar are code, not addresses
        return False
    try:
        ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _phone(match: re.Match) -> bool:
    return 10 <= len(re.sub(r"\D", "", match.group(0))) <= 15


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"

# (kind, pattern, check of a match or None, group replaced: 0 the whole match)
_RULES: list[tuple[str, re.Pattern, Callable[[re.Match], bool] | None, int]] = [
    (
        "PASSWORD",
        re.compile(r"""(?i)\b(?:password|passwd|passcode|pwd)\s*[:=]\s*("[^"\n]*"|'[^'\n]*'|[^\s,;]+)"""),
        None,
        1,
    ),
    (
        "AWS_ACCESS_KEY",
        re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA|ASCA)[A-Z0-9]{16}\b"),
        None,
        0,
    ),
    ("EMAIL", re.compile(r"\b[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b"), None, 0),
    ("CREDIT_CARD", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), _card, 0),
    ("SSN", re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])"), None, 0),
    (
        "IPV6",
        re.compile(
            rf"(?<![\w:.])(?:[0-9A-Fa-f]{{0,4}}:){{2,7}}(?:{_OCTET}(?:\.{_OCTET}){{3}}|"
            r"[0-9A-Fa-f]{1,4})?(?:%[\w.]+)?(?![\w:]|\.\d)"
        ),
        _ipv6,
        0,
    ),
    ("IPV4", re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)(?!\w)"), None, 0),
    (
        "PHONE",
        re.compile(
            r"(?<![\w+])(?:"
            r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"  # +44 20 7946 0958
            r"|(?:1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}"  # (555) 123-4567
            r")(?![\w-])"
        ),
        _phone,
        0,
    ),
]


def find(text: str, kinds: frozenset[str] | None = None) -> list[tuple[int, int, str]]:
    """Where the values are: (start, end, kind) spans of `text`, sorted and never overlapping.

    An earlier kind in `KINDS` claims its text first; a later kind's match over claimed text is
    not a value. `kinds` limits the search (all kinds by default)."""
    claimed: list[tuple[int, int, str]] = []
    for kind, pattern, check, group in _RULES:
        if kinds is not None and kind not in kinds:
            continue
        if kind == "PASSWORD" and "ass" not in (lowered := text.lower()) and "pwd" not in lowered:
            continue  # the cheap pre-check keeps the common case fast
        for match in pattern.finditer(text):
            if check is not None and not check(match):
                continue
            start, end = match.span(group)
            if not any(start < e and s < end for s, e, _ in claimed):
                claimed.append((start, end, kind))
    return sorted(claimed)


def redact(text: str, spans: list[tuple[int, int, str]]) -> str:
    """`text` with each of `spans` (from `find`) replaced by its kind's placeholder."""
    parts, at = [], 0
    for start, end, kind in spans:
        parts += (text[at:start], placeholder(kind))
        at = end
    parts.append(text[at:])
    return "".join(parts)


def scrub(text: str, counts: Counter | None = None, kinds: frozenset[str] | None = None) -> tuple[str, Counter]:
    """`text` with every value found replaced by its kind's placeholder, and the count per kind.

    Pass `counts` to add to a running tally (it is also returned)."""
    counts = Counter() if counts is None else counts
    spans = find(text, kinds)
    if not spans:
        return text, counts
    counts.update(kind for _, _, kind in spans)
    return redact(text, spans), counts


def scrub_value(value: Any, counts: Counter | None = None, kinds: frozenset[str] | None = None) -> Any:
    """A copy of a JSON value with every string scrubbed; `counts` (when given) gets the counts."""
    counts = Counter() if counts is None else counts
    if isinstance(value, str):
        return scrub(value, counts, kinds)[0]
    if isinstance(value, list):
        return [scrub_value(item, counts, kinds) for item in value]
    if isinstance(value, dict):
        return {key: scrub_value(item, counts, kinds) for key, item in value.items()}
    return value
