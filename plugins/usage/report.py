"""What `GET /v1/usage` is asked (a date or a range, a grouping, a team) and how its aggregates add up.

Dates are UTC days written `YYYY-MM-DD`; a range is `from` and `to`, both included. Every bad
parameter is a 400 naming it and saying what to send instead, so a caller never gets an empty
report for a typo.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Mapping

from gateway.config import choices
from gateway.errors import InvalidRequest

from .store import MEASURES

GROUPS = ("team", "key", "route", "variant", "day")
DEFAULT_GROUP_BY = ("team", "key", "route", "variant")
PARAMETERS = ("date", "from", "to", "group_by", "team")
_POSITION = {"day": 0, "team": 1, "key": 2, "route": 3, "variant": 4}  # in a stored aggregate
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Query:
    first: date
    last: date
    group_by: tuple[str, ...]
    team: str | None


def _day(params: Mapping[str, str], name: str, today: date) -> date:
    text = params[name]
    if _DAY.fullmatch(text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise InvalidRequest(f"'{name}' is not a calendar date: {text}", param=name, code="invalid_date") from None
    raise InvalidRequest(
        f"'{name}' must be a UTC day written YYYY-MM-DD, e.g. {name}={today.isoformat()}",
        param=name,
        code="invalid_date",
    )


def parse(params: Mapping[str, str], today: date, max_days: int) -> Query:
    """The query of `params` (a request's query string); an InvalidRequest names what is wrong."""
    for name in params:
        if name not in PARAMETERS:
            raise InvalidRequest(f"unknown parameter '{name}' {choices(name, PARAMETERS, 'parameters')}", param=name)
    if "date" in params and ("from" in params or "to" in params):
        raise InvalidRequest("ask for one day (date=) or a range (from= and to=), not both", param="date")
    if "to" in params and "from" not in params:
        raise InvalidRequest("a range needs its first day: from=YYYY-MM-DD&to=YYYY-MM-DD", param="from")
    if "date" in params:
        first = last = _day(params, "date", today)
    elif "from" in params:
        first = _day(params, "from", today)
        last = _day(params, "to", today) if "to" in params else today
    else:
        first = last = today
    if last < first:
        raise InvalidRequest(
            f"'to' ({last}) is before 'from' ({first}): a range runs from its first day to its last, both included",
            param="to",
            code="invalid_range",
        )
    if (last - first).days + 1 > max_days:
        raise InvalidRequest(
            f"the range {first} to {last} is {(last - first).days + 1} days; ask for at most {max_days} at a time",
            param="from",
            code="range_too_long",
        )
    group_by = DEFAULT_GROUP_BY
    if "group_by" in params:
        asked = [name.strip() for name in params["group_by"].split(",")]
        for name in asked:
            if name and name not in GROUPS:
                raise InvalidRequest(
                    f"group_by: no grouping '{name}' {choices(name, GROUPS, 'group by any of')}, comma-separated",
                    param="group_by",
                )
        group_by = tuple(dict.fromkeys(name for name in asked if name))
    return Query(first, last, group_by, params.get("team") or None)


def _figures(values: list) -> dict:
    out = dict(zip(MEASURES, values))
    out["cost_usd"] = round(out["cost_usd"], 9)  # sums of prices: no float noise in the answer
    return out


def grouped(aggregates: list[tuple], group_by: tuple[str, ...]) -> tuple[list[dict], dict]:
    """Stored aggregates (day, team, key, route, variant, *measures) summed per `group_by`, in order of
    the groups, and their total. No team, key or variant reads as None."""
    positions = [_POSITION[name] for name in group_by]
    sums: dict[tuple, list] = {}
    total = [0] * (len(MEASURES) - 1) + [0.0]
    for row in aggregates:
        values = sums.setdefault(tuple(row[i] for i in positions), [0] * (len(MEASURES) - 1) + [0.0])
        for i, value in enumerate(row[5:]):
            values[i] += value
            total[i] += value
    rows = [
        {**{name: value or None for name, value in zip(group_by, key)}, **_figures(values)}
        for key, values in sorted(sums.items())
    ]
    return rows, _figures(total)
