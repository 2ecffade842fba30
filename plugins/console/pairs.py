"""Paired answers for the console: a primary's answer next to its shadow's, to read side by side.

The shadow report carries a few short previews; the console shows more of each answer along with
what makes a pair worth reading (both statuses and latencies, the shadow's error, the judge's
score). Read-only from the shadow plugin's SQLite file (opened `mode=ro`, so the console can never
write or create it), bounded in rows and characters, and always on a thread.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

MAX_PAIRS = 20
MAX_CHARS = 2000

_COLUMNS = (
    "id",
    "ts",
    "request_id",
    "primary_backend",
    "shadow_backend",
    "primary_status",
    "shadow_status",
    "shadow_error",
    "primary_latency_ms",
    "shadow_latency_ms",
    "primary_cost_usd",
    "shadow_cost_usd",
    "judge_score",
)


def read_pairs(path: str, route: str, shadow: str | None, limit: int, chars: int) -> list[dict[str, Any]]:
    """The route's latest comparisons (one shadow backend's when named), newest first."""
    file = Path(path)
    if path == ":memory:" or not file.exists():
        return []
    conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, timeout=5, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        where, params = "route = ?", [route]
        if shadow:
            where += " AND shadow_backend = ?"
            params.append(shadow)
        sql = (
            f"SELECT {', '.join(_COLUMNS)}, substr(primary_answer, 1, ?) AS primary_answer, "
            f"substr(shadow_answer, 1, ?) AS shadow_answer, length(primary_answer) AS primary_chars, "
            f"length(shadow_answer) AS shadow_chars FROM comparisons WHERE {where} ORDER BY id DESC LIMIT ?"
        )
        try:
            rows = conn.execute(sql, [chars, chars, *params, limit]).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        return [dict(row) for row in rows]
    finally:
        conn.close()
