"""`llmgate check-config`: every problem a config has, in one run.

The daemon stops at the first phase that fails: the file, its keys and values, the references between
its sections, the plugins and their options, the backends, the plugins' own checks. A check runs each
phase that does not depend on a failed one, so a misspelt key does not hide an unknown backend, nor one
plugin's bad option another plugin's. What a problem makes unusable is left out of the later phases
(a key, a route, a plugin's options); a phase that cannot run at all is named, with the reason.

Imported by the command only: it loads pydantic, PyYAML and every plugin.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from ..config import (
    PLUGIN_CORE_KEYS,
    Config,
    ConfigError,
    GatewaySettings,
    PluginSettings,
    _format_validation,
    _interpolate,
    config_path,
    load_config,
)
from ..gateway import build_backends
from ..plugins import HookRunner, build_plugin_manager

_PLUGIN = re.compile(r"plugins\.([^.:]+)")
LATER = "the references between sections, the plugins and the backends"


class _Unreferenced(GatewaySettings):
    """The settings without the check of what routes and pools name, which runs on its own."""

    def _references(self) -> GatewaySettings:
        return self


@dataclass
class Report:
    """What one check found: every problem, the phases it could not run and why, and what it built."""

    source: str
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    config: Config | None = None
    plugins: list[str] = field(default_factory=list)
    backends: dict[str, Any] = field(default_factory=dict)

    def add(self, problems: list[str]) -> None:
        self.problems += [p for p in problems if p not in self.problems]

    def error(self) -> ConfigError:
        skipped = [f"not checked: {line}" for line in self.skipped]
        return ConfigError(self.source, self.problems + skipped)


def _drop(node: Any, loc: tuple) -> bool:
    """Delete what `loc` points at in `node`, or the deepest part of it that exists (a missing key's section)."""
    parent, key = None, None
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            parent, key, node = node, part, node[part]
        else:
            break
    if parent is None:
        return False
    del parent[key]
    return True


def _usable(raw: dict, report: Report) -> Config | None:
    """The config without the parts its schema problems name, for the phases after the schema; the
    references it makes between sections checked on what is left."""
    pruned = copy.deepcopy(raw)
    for _ in range(200):  # one problem's part a round: a list's indices move as its items go
        unset: dict[str, str] = {}
        data = _interpolate(pruned, "", unset, set())
        try:
            settings = _Unreferenced.model_validate(data)
            break
        except ValidationError as exc:
            if not _drop(pruned, exc.errors()[0]["loc"]):
                report.skipped.append(f"{LATER}: the config's top level does not validate")
                return None
    else:
        report.skipped.append(f"{LATER}: too many problems in the config's keys and values")
        return None
    try:
        GatewaySettings.model_validate(data)
    except ValidationError as exc:
        report.add(_format_validation(exc, unset, GatewaySettings))
    kinds = {name: b for name, b in settings.backends.items() if isinstance(b.get("kind"), str)}  # else unbuildable
    settings = settings.model_copy(update={"backends": kinds})
    return Config(settings=settings, source=report.source, unset_env=unset, secrets=set())


def _load(path: str | None) -> tuple[Config | None, Report]:
    try:
        config = load_config(path)
        return config, Report(config.source)
    except ConfigError as exc:
        report = Report(exc.source, list(exc.problems))
    try:
        raw = yaml.safe_load(config_path(path).read_text())
    except (OSError, yaml.YAMLError):
        raw = None
    if not isinstance(raw, dict):  # unreadable, not YAML, or not a mapping: nothing else can be read
        report.skipped.append(f"the keys and values, {LATER}: the file could not be read as a config")
        return None, report
    return _usable(raw, report), report


def _plugins(config: Config, report: Report):
    """The plugin manager for `config`; each plugin that fails is retried with its options left out, then off."""
    sections = dict(config.settings.plugins)
    tries: dict[str, int] = {}
    for _ in range(2 * len(sections) + 2):
        trial = dataclasses.replace(config, settings=config.settings.model_copy(update={"plugins": sections}))
        try:
            return (*build_plugin_manager(trial), trial)
        except ConfigError as exc:
            report.add(exc.problems)
            named: dict[str, bool] = {}  # each plugin a problem names: whether it is not a plugin at all
            for problem in exc.problems:
                if match := _PLUGIN.match(problem):
                    named[match[1]] = named.get(match[1], False) or ": no such plugin" in problem
            if not named:
                break
            for name, unknown in named.items():
                tries[name] = tries.get(name, 0) + 1
                if unknown or name not in sections:
                    sections.pop(name, None)
                elif tries[name] == 1:  # its own options left out, the core's keys (enabled, module, ...) kept
                    kept = sections[name].model_dump()
                    sections[name] = PluginSettings(**{k: v for k, v in kept.items() if k in PLUGIN_CORE_KEYS})
                else:
                    sections[name] = PluginSettings(enabled=False)
    report.skipped.append("the backends and the plugins' own checks: the plugins could not be loaded")
    return None


def check(path: str | None) -> Report:
    """Every problem the config at `path` has that one run can find (as `serve` finds a config without one)."""
    config, report = _load(path)
    if config is None:
        return report
    report.config = config
    built = _plugins(config, report)
    if built is None:
        return report
    pm, core, config = built
    report.plugins = sorted(name for name, _ in pm.list_name_plugin())
    hooks = HookRunner(pm, core, order=list(config.settings.plugins))
    kinds: dict[str, type] = {}
    for provided in hooks.collect("register_backend_kinds").values():
        kinds.update(provided)
    try:
        report.backends = build_backends(config, kinds)
    except ConfigError as exc:
        report.add(exc.problems)
    report.add([p for found in hooks.collect("config_problems", config=config).values() for p in found])
    return report
