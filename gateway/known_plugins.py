"""Which plugins exist, and where the command line finds their subcommands.

Kept apart from gateway.plugins, and light to import (pluggy and the standard library), because
every `llmgate` command reads it before parsing its arguments: `llmgate --help` must not load
aiohttp, pydantic, redis, boto3 or OpenTelemetry to list the commands.
"""

from __future__ import annotations

import importlib

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = "llmgate"

# name -> "module:attribute"; enabled unless the plugin says otherwise (DEFAULT_ENABLED = False).
DEFAULT_PLUGINS = {
    "backends": "gateway.backends:BuiltinBackends",
    "api_keys": "plugins.api_keys.plugin:ApiKeys",
    "quotas": "plugins.quotas:Quotas",
    "usage": "plugins.usage.plugin:Usage",
    "budgets": "plugins.budgets.plugin:Budgets",
    "pii_guard": "plugins.pii_guard.plugin:PiiGuard",
    "traffic_log": "plugins.traffic_log.plugin:TrafficLog",
    "shadow": "plugins.shadow.plugin:Shadow",
    "rollout": "plugins.rollout.plugin:Rollout",
    "auto_rollback": "plugins.auto_rollback.plugin:AutoRollback",
    "semantic_cache": "plugins.semantic_cache.plugin:SemanticCache",
    "judge": "plugins.judge:Judge",
    "feedback": "plugins.feedback:Feedback",
    "log_sink_s3": "plugins.log_sink_s3:LogSinkS3",
    "evaluators": "evaluators.metrics:BuiltinEvaluators",
    "console": "plugins.console:Console",
    "metrics": "plugins.metrics:Metrics",
    "tracing": "plugins.tracing:Tracing",
    "dataset": "flywheel.dataset.builder",
    "roi": "flywheel.roi.estimate",
    "embeddings_build": "gateway.text.embeddings_build",
    "retrain": "plugins.retrain.plugin:Retrain",
    "retrain_trigger": "plugins.retrain.trigger:RetrainTrigger",
    "flywheel": "flywheel.pipeline.plugin:Flywheel",
}

# The module holding each built-in plugin's `register_commands`: argument parsing only, each handler
# importing its plugin when it runs. A built-in plugin not named here has no commands and is not
# imported to list them. Third-party plugins' modules are imported as they are (keep them light).
COMMAND_MODULES = {
    "api_keys": "plugins.api_keys.commands",
    "traffic_log": "plugins.traffic_log.commands",
    "budgets": "plugins.budgets.commands",
    "usage": "plugins.usage.commands",
    "shadow": "plugins.shadow.commands",
    "rollout": "plugins.rollout.commands",
    "auto_rollback": "plugins.auto_rollback.commands",
    "semantic_cache": "plugins.semantic_cache.commands",
    "evaluators": "evaluators.offline_commands",
    "dataset": "flywheel.dataset.commands",
    "roi": "flywheel.roi.commands",
    "embeddings_build": "gateway.text.embeddings_build",
    "retrain": "plugins.retrain.commands",
    "flywheel": "flywheel.pipeline.commands",
}


def discover() -> dict[str, str]:
    """Every known plugin: the built-in ones, then entry points (which may not shadow a built-in)."""
    from importlib.metadata import entry_points  # start-up: only when plugins are looked up

    found = dict(DEFAULT_PLUGINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found and found[ep.name] != ep.value:
            import logging  # only here: importing it costs every command a few milliseconds

            logging.getLogger("llmgate.plugins").warning(
                "plugin %r from %s ignored: the name is taken by %s", ep.name, ep.value, found[ep.name]
            )
            continue
        found[ep.name] = ep.value
    return found


def command_module(name: str, target: str) -> str | None:
    """The module whose `register_commands` adds a plugin's subcommands (None: a built-in without any)."""
    if DEFAULT_PLUGINS.get(name) == target:
        return COMMAND_MODULES.get(name)
    return target.partition(":")[0]


def command_plugins() -> pluggy.PluginManager:
    """A manager holding each known plugin's command module, for the command line's `register_commands`."""
    pm = pluggy.PluginManager("llmgate")
    pm.add_hookspecs(hookspecs)
    for name, target in discover().items():
        module_name = command_module(name, target)
        if module_name is None:
            continue
        module = importlib.import_module(module_name)
        if pm.get_plugin(module.__name__) is None:
            pm.register(module, name=module.__name__)
    return pm
