"""What a parsed JSON body must hold before the gateway passes it on, stores it or logs it.

Python's JSON parser accepts more than JSON: `NaN`, `Infinity`, and lone surrogate escapes
("\\ud800") that decode to strings no UTF-8 encoder can write. Passed on, such a value fails far
from its cause: at the provider, or in the traffic log's batch write, where it would take other
requests' rows down with it. So it is refused up front, as the caller's mistake, naming where it is.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from .errors import InvalidRequest

MAX_DEPTH = 128  # arrays and objects inside one another in a request body; the top-level object is depth 1
# A run of 20 digits may be an integer past 64 bits, and a minus sign before 19 one below -2**63, which
# orjson reads as a float: such a body goes the standard library's way, which keeps it exact (a string
# holding such a run only takes the slower way). Found by mapping every digit to "0", the minus sign to
# itself and every other byte to a space (one C-speed pass), then looking for the two runs: a regular
# expression, tried at every position, took ten times as long on a coding agent's 36 KB request.
_DIGITS = bytes(0x30 if 0x30 <= byte <= 0x39 else byte if byte == 0x2D else 0x20 for byte in range(256))
_LONG_RUN, _LONG_NEGATIVE = b"0" * 20, b"-" + b"0" * 19


def _has_long_digits(raw: bytes | str) -> bool:
    if type(raw) is not bytes:
        raw = raw.encode("utf-8", "surrogatepass")
    digits = raw.translate(_DIGITS)
    return _LONG_RUN in digits or _LONG_NEGATIVE in digits


def loads(raw: bytes | str) -> Any:
    """JSON parsed as `json.loads` parses it, by orjson (several times faster) where that gives the same:
    strict JSON without a 20-digit number. What orjson refuses (NaN, a lone surrogate, deep nesting, a
    byte-order mark) is parsed, or refused with the same error, by the standard library."""
    return _loads(raw)[0]


def _loads(raw: bytes | str) -> tuple[Any, bool]:
    """(`loads(raw)`, whether orjson parsed it: then it holds no NaN, infinity or lone surrogate)."""
    if not _has_long_digits(raw):
        try:
            return orjson.loads(raw), True
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw), False


def parse_json(raw: bytes) -> tuple[Any, bool]:
    """A request body parsed, and whether it was strict JSON (nothing `check_encodable` would refuse can be in
    it, so a validator may skip that walk); or InvalidRequest (400 `invalid_json`): not JSON, or nested
    deeper than MAX_DEPTH.

    The depth is checked before anything else reads the body: Python's parser accepts nesting (about
    975 deep) that its encoder then cannot write back, which failed far from its cause (a 500, a lost
    traffic-log record). A body with fewer brackets than the limit cannot be too deep: two C-speed
    counts decide it for most requests; only the others are walked."""
    try:
        body, strict = _loads(raw)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and depth_of(body) > MAX_DEPTH:
        raise _too_deep()
    return body, strict


def _too_deep() -> InvalidRequest:
    return InvalidRequest(
        f"the request body is not valid JSON here: it nests arrays and objects deeper than {MAX_DEPTH} levels",
        code="invalid_json",
    )


def depth_of(body: Any) -> int:
    """How deeply arrays and objects nest in `body` (a scalar: 0), walked a level at a time, without recursion:
    what sits at each level is gathered in one list, no tuple or generator per value."""
    level = [body] if type(body) is dict or type(body) is list else []
    depth = 0
    while level:
        depth += 1
        inner = []
        for value in level:
            for item in value.values() if type(value) is dict else value:
                if type(item) is dict or type(item) is list:
                    inner.append(item)
        level = inner
    return depth


def unusable_value(body: Any) -> Any | None:
    """The first NaN or infinite number, or string that is not valid Unicode, in `body`; None when there is none.

    An iterative walk (no recursion, whatever the nesting) that checks scalars in place and costs one
    `isascii()` per string in the common case: it runs on every chat request.
    """
    stack = [body] if isinstance(body, (dict, list)) else [[body]]
    while stack:
        container = stack.pop()
        if type(container) is dict:
            if not "".join(container).isascii():
                for key in container:
                    if _not_unicode(key):
                        return key
            items = container.values()
        else:
            items = container
        for item in items:
            kind = type(item)
            if kind is str:
                if not item.isascii() and _not_unicode(item):
                    return item
            elif kind is dict or kind is list:
                stack.append(item)
            elif kind is float and not math.isfinite(item):
                return item
    return None


def _not_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def path_to(body: Any, target: Any) -> str:
    """Where `target` (found by `unusable_value`) sits, as a parameter name: `messages[0].content`.

    Only run once a request has failed; a bad key names the object that holds it.
    """
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        path, value = stack.pop()
        if value is target:
            return path or "body"
        if isinstance(value, dict):
            for key, item in value.items():
                if key is target:
                    return path or "body"
                stack.append((f"{path}.{key}" if path else str(key), item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
    return "body"


def check_encodable(body: Any) -> None:
    """Raise InvalidRequest (400) naming the first value of `body` that cannot be passed on."""
    bad = unusable_value(body)
    if bad is None:
        return
    where = path_to(body, bad)[:200]
    if isinstance(bad, float):
        raise InvalidRequest(
            f"'{where}' is {bad!r}: NaN and Infinity are not JSON numbers", param=where, code="invalid_value"
        )
    raise InvalidRequest(
        f"'{where}' is not valid Unicode text (it holds a lone surrogate such as \\ud800)",
        param=where,
        code="invalid_value",
    )
