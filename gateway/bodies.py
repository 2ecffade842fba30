"""What a parsed JSON body must hold before the gateway passes it on, stores it or logs it.

Python's JSON parser accepts more than JSON: `NaN`, `Infinity`, and lone surrogate escapes
("\\ud800") that decode to strings no UTF-8 encoder can write. Passed on, such a value fails far
from its cause: at the provider, or in the traffic log's batch write, where it would take other
requests' rows down with it. So it is refused up front, as the caller's mistake, naming where it is.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import InvalidRequest


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
