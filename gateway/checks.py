"""The small checks every request validator shares (chat completions and each dialect), so that each
one names a bad parameter, and quotes a caller's value, the same way."""

from __future__ import annotations

from typing import Any

from .errors import InvalidRequest

SHOWN_CHARS = 60  # of a caller's value echoed in an error: enough to recognise it, never the whole of a hostile one


def bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    """The 400 for a bad parameter: `param` names it, `message` says what to send instead. Raised as
    `if not ok: raise bad(...)`, so a message quoting the caller's value is made only for a request that
    fails: validators run on every request, and most of their checks pass."""
    return InvalidRequest(message, param=param, code=code)


def shown(value: Any) -> str:
    """A caller's value as an error quotes it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
