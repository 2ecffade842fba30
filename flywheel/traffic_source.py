"""Reading logged exchanges back, and what was later learnt about them, for offline tools.

`iter_records` is the one door the dataset builder and `llmgate roi` read traffic through: the
local SQLite traffic log (plugins.traffic_log.plugin) by default, or the S3 log sink when the config
enables the `log_sink_s3` plugin (each replica's log lands there). Records are shaped like the
traffic log's rows, oldest first.

Judge verdicts and user feedback are stored by their own plugins, keyed by request id:
`feedback_by_request` reads plugins.feedback's SQLite file, `judge_scores_by_request` the shadow
plugin's comparisons (whose `judge_score` the judge writes). Both read files read-only.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
from typing import TYPE_CHECKING, Any, Iterator

from gateway.known_plugins import discover

if TYPE_CHECKING:
    from gateway.config import Config, PluginSettings

S3_SINK = "log_sink_s3"


class SourceError(Exception):
    """The logged records cannot be read (no traffic log at the configured path, an unreadable file)."""


def _section(config: Config, name: str) -> PluginSettings | None:
    return config.settings.plugins.get(name)


def plugin_enabled(config: Config, name: str) -> bool:
    """Whether the gateway would load the plugin: its `enabled`, else the plugin's DEFAULT_ENABLED."""
    section = _section(config, name)
    if section is None and name == S3_SINK:
        return False
    if section is not None and section.enabled is not None:
        return section.enabled
    target = (section.model_extra or {}).get("module") if section else None
    target = target or discover().get(name)
    if target is None:
        return section is not None
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return section is not None
    return getattr(getattr(module, attribute) if attribute else module, "DEFAULT_ENABLED", True)


def _settings_path(config: Config, plugin: str, default_from: str) -> str:
    """The `path` option of a plugin, or the default its Settings model declares."""
    options = config.plugin_options(plugin)
    if isinstance(options.get("path"), str):
        return options["path"]
    module = importlib.import_module(default_from)
    return module.Settings.model_fields["path"].default


def traffic_log_path(config: Config) -> str:
    return _settings_path(config, "traffic_log", "plugins.traffic_log.plugin")


def describe_source(config: Config) -> dict[str, Any]:
    """Where `iter_records` reads from, for a manifest or a report."""
    if plugin_enabled(config, S3_SINK):
        options = config.plugin_options(S3_SINK)
        return {"kind": "s3", "bucket": options.get("bucket"), "prefix": options.get("prefix")}
    return {"kind": "sqlite", "path": traffic_log_path(config)}


def iter_records(
    config: Config, *, route: str | None = None, since: float | None = None, until: float | None = None
) -> Iterator[dict[str, Any]]:
    """Logged exchanges of `route` (all routes when None) with since <= ts < until, oldest first."""
    if plugin_enabled(config, S3_SINK):
        from plugins.log_sink_s3 import read_records_s3  # written alongside; only needed when enabled

        yield from read_records_s3(config.plugin_options(S3_SINK), route=route, since=since, until=until)
        return
    from plugins.traffic_log.plugin import read_records  # the plugin brings aiohttp: only when the log is read

    path = traffic_log_path(config)
    if not os.path.exists(path):
        raise SourceError(f"no traffic log at {path} (plugins.traffic_log.path): has the gateway served traffic?")
    where, params = [], []
    if route is not None:
        where.append("route = ?")
        params.append(route)
    if since is not None:
        where.append("ts >= ?")
        params.append(since)
    if until is not None:
        where.append("ts < ?")
        params.append(until)
    try:
        yield from read_records(path, " AND ".join(where), tuple(params))
    except sqlite3.Error as exc:
        raise SourceError(f"cannot read the traffic log at {path}: {exc}") from None


def _read_rows(path: str, sql: str) -> list[tuple]:
    """Rows from a plugin's SQLite file; none when the file (or its table) does not exist yet."""
    if not os.path.exists(path):
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # the plugin never wrote its table
        return []
    finally:
        conn.close()


def feedback_path(config: Config) -> str:
    return _settings_path(config, "feedback", "plugins.feedback")


def shadow_path(config: Config) -> str:
    return _settings_path(config, "shadow", "plugins.shadow.plugin")


def feedback_by_request(config: Config) -> dict[str, dict[str, Any]]:
    """request id -> {"rating": as posted, "score": 0..1}: the users' ratings (plugins.feedback)."""
    rows = _read_rows(feedback_path(config), "SELECT request_id, rating, score FROM feedback")
    return {request_id: {"rating": rating, "score": score} for request_id, rating, score in rows}


def judge_scores_by_request(config: Config) -> dict[str, float]:
    """request id -> the judge's score of the answer the caller got, 0 (worse) .. 1 (better).

    The judge scores shadow comparisons from the shadow's side (1: the shadow's answer won), so the
    logged primary answer's score is 1 - that; with several judged shadows, their mean."""
    rows = _read_rows(
        shadow_path(config), "SELECT request_id, judge_score FROM comparisons WHERE judge_score IS NOT NULL"
    )
    sums: dict[str, list[float]] = {}
    for request_id, score in rows:
        tally = sums.setdefault(request_id, [0.0, 0])
        tally[0] += 1.0 - score
        tally[1] += 1
    return {request_id: total / count for request_id, (total, count) in sums.items()}
