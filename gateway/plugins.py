"""Finding, enabling and calling plugins.

Built-in plugins go through the same door as third-party ones: each is a name and an import
path, loaded by one function. Third-party plugins arrive through the `llmgate` entry-point group.
A plugin that is not packaged can be named by import path in its config section
(`plugins: {mine: {module: "my_plugins:Mine"}}`). A plugin is a module or a class of hook
implementations; a class is instantiated once per gateway, with its settings when its constructor
takes an argument (validated by its nested `Settings` model when it has one).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import time
from types import CoroutineType
from typing import Any

import pluggy

from . import hookspecs, tracing
from .config import Config, ConfigError, PluginSettings, choices, own_options, validated_options
from .errors import GatewayError

log = logging.getLogger("llmgate.plugins")

# Which plugins exist: in a module of their own, light to import for the command line.
from .known_plugins import DEFAULT_PLUGINS, ENTRY_POINT_GROUP, command_plugins, discover  # noqa: E402,F401


class PluginFault(GatewayError):
    status, type = 503, "plugin_error"


def _import(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def _validated_settings(obj: Any, name: str, raw: PluginSettings, source: str, unknown_keys_only: bool = False) -> Any:
    """The plugin's options checked by its `Settings` model (a dict as written when it has none)."""
    model = getattr(obj, "Settings", None)
    options = own_options(raw)
    return options if model is None else validated_options(name, model, options, source, unknown_keys_only)


def _instantiate(cls: type, options: Any) -> Any:
    """A plugin class takes its settings as its one argument, or no argument if it has none to read."""
    takes_settings = len(inspect.signature(cls).parameters) > 0
    return cls(options) if takes_settings else cls()


def is_enabled(plugin: Any, setting: bool | None) -> bool:
    """Whether a plugin runs: as its config says, else as the plugin says (DEFAULT_ENABLED; on if unsaid)."""
    return setting if setting is not None else getattr(plugin, "DEFAULT_ENABLED", True)


def requirements(plugin: Any) -> tuple[str, ...]:
    """The plugins `plugin` cannot work without (its `requires`): the loader refuses a config without them."""
    return tuple(getattr(plugin, "requires", ()))


def unknown_routes(where: str, named, config: Config) -> list[str]:
    """`config_problems` for the routes a plugin's options name (`where`: their key) that the config lacks."""
    routes = config.settings.routes
    return [
        f"{where} names {route!r}, which is not a route (routes: {', '.join(routes)})"
        for route in named
        if route not in routes
    ]


def plugin_order(pm: pluggy.PluginManager, listed: list[str]) -> list[str]:
    """Registered plugins in the order their hooks run: as `plugins:` lists them, then the rest in
    registration order, each moved after what it `requires` or `uses` (so their `startup` has run
    when its own does, and their `shutdown` comes after its own)."""
    names = [name for name, _ in pm.list_name_plugin()]
    wanted = [name for name in listed if name in names] + [name for name in names if name not in listed]
    placed: list[str] = []

    def place(name: str, path: tuple[str, ...]) -> None:
        if name in placed or name in path:  # a circle of `uses` keeps the listed order
            return
        plugin = pm.get_plugin(name)
        for needed in (*requirements(plugin), *getattr(plugin, "uses", ())):
            if pm.get_plugin(needed) is not None:
                place(needed, (*path, name))
        placed.append(name)

    for name in wanted:
        place(name, ())
    return placed


def build_plugin_manager(config: Config) -> tuple[pluggy.PluginManager, dict[str, PluginSettings]]:
    """Load and register every enabled plugin; return the manager and each plugin's core settings."""
    pm = pluggy.PluginManager("llmgate")
    pm.add_hookspecs(hookspecs)
    configured = config.settings.plugins
    known = discover()
    for name, settings in configured.items():  # a plugin that is not packaged: named by import path
        if isinstance((settings.model_extra or {}).get("module"), str):
            known[name] = settings.model_extra["module"]
    unknown = sorted(set(configured) - set(known))
    if unknown:
        raise ConfigError(config.source, [f"plugins.{n}: no such plugin {choices(n, known, 'known')}" for n in unknown])
    core_settings: dict[str, PluginSettings] = {}
    for name, target in known.items():
        settings = configured.get(name, PluginSettings())
        obj = _import(target)
        if not is_enabled(obj, settings.enabled):
            if name in configured:
                _validated_settings(obj, name, settings, config.source, unknown_keys_only=True)
            continue
        options = _validated_settings(obj, name, settings, config.source)
        plugin = _instantiate(obj, options) if inspect.isclass(obj) else obj
        pm.register(plugin, name=name)
        core_settings[name] = settings
    missing = [
        f"plugins.{name}: needs the {needed} plugin: enable it too (plugins.{needed}.enabled: true)"
        for name in core_settings
        for needed in requirements(pm.get_plugin(name))
        if needed not in core_settings
    ]
    if missing:
        raise ConfigError(config.source, missing)
    if os.environ.get("LLMGATE_TRACE_HOOKS"):
        pm.add_hookcall_monitoring(
            lambda hook, impls, kw: log.info("hook %s -> %s %s", hook, [i.plugin_name for i in impls], kw),
            lambda outcome, hook, impls, kw: log.info("hook %s returned %r", hook, outcome.get_result()),
        )
    return pm, core_settings


class HookRunner:
    """Calls hook implementations one by one with isolation, awaiting async ones.

    pluggy gives registration, validation and ordering; this gives what an async gateway needs
    from a call: a per-plugin time budget, fault isolation, and first-result-wins over coroutines,
    each as the hook's spec in gateway/hookspecs.py declares it.
    """

    def __init__(self, pm: pluggy.PluginManager, settings: dict[str, PluginSettings], order: list[str]):
        self.pm = pm
        self.settings = settings
        self.faults: dict[str, int] = {}
        self.trace = bool(os.environ.get("LLMGATE_TRACE_HOOKS"))
        # The OpenTelemetry tracer when the tracing plugin is on (set as the app is built); None costs nothing.
        self.tracer = None
        position = {name: i for i, name in enumerate(plugin_order(pm, order))}
        self._impls: dict[str, list] = {}
        self._first: set[str] = set()  # hooks whose spec says the first non-None answer wins
        for hook_name in dir(pm.hook):
            caller = getattr(pm.hook, hook_name)
            if not isinstance(caller, pluggy.HookCaller):
                continue
            impls = list(reversed(caller.get_hookimpls()))  # pluggy calls the last registered first
            impls.sort(key=lambda impl: position.get(impl.plugin_name, len(position)))
            for impl in impls:
                if impl.hookwrapper or impl.wrapper:
                    raise TypeError(f"plugin {impl.plugin_name}: hook wrappers are not supported on {hook_name}")
            self._impls[hook_name] = impls[::-1] if hook_name in hookspecs.REVERSED else impls
            if caller.spec is not None and caller.spec.opts.get("firstresult"):
                self._first.add(hook_name)

    def implemented(self, hook_name: str) -> bool:
        return bool(self._impls.get(hook_name))

    def _call(self, impl, kwargs: dict, hook_name: str) -> Any:
        """One implementation's result, or an awaitable of it when the implementation is async.

        A synchronous implementation (most observers are) is called without making a coroutine:
        the request path calls a dozen of them. With tracing on, the call is a child span of the
        request's, recorded only when it did work (answered, failed, or took a while): a dozen
        observers that each put a record on a queue would otherwise triple a trace's size and cost."""
        if self.tracer is not None and tracing.in_trace():
            return self._traced(impl, kwargs, hook_name)
        return self._run(impl, kwargs, hook_name)

    async def _traced(self, impl, kwargs: dict, hook_name: str) -> Any:
        name, faults, started_ns, clock = (
            impl.plugin_name,
            self.faults.get(impl.plugin_name),
            time.time_ns(),
            time.perf_counter(),
        )
        try:
            result = self._run(impl, kwargs, hook_name)
            if type(result) is CoroutineType:  # _call made one: the implementation is async
                result = await result
        except GatewayError as err:  # a refusal on purpose is work done
            tracing.record_hook(self.tracer, hook_name, name, started_ns, answered=False, error=err.type)
            raise
        failed = self.faults.get(name) != faults
        if result is not None or failed or time.perf_counter() - clock >= tracing.HOOK_SPAN_MIN_SECONDS:
            tracing.record_hook(
                self.tracer,
                hook_name,
                name,
                started_ns,
                answered=result is not None,
                error="plugin_fault" if failed else None,
            )
        return result

    def _run(self, impl, kwargs: dict, hook_name: str) -> Any:
        try:
            result = impl.function(*[kwargs[arg] for arg in impl.argnames])
        except GatewayError:
            raise
        except Exception as exc:
            return self._fault(impl, exc, hook_name)
        if inspect.isawaitable(result):
            return self._finish(impl, result, hook_name)
        return self._answered(impl, result)

    async def _finish(self, impl, pending, hook_name: str) -> Any:
        """Await an async implementation within its plugin's budget."""
        settings = self.settings.get(impl.plugin_name)
        # The budget guards requests; start-up and shutdown (a drain, a flush) take what they need.
        budget = settings.timeout_ms / 1000 if settings and hook_name in hookspecs.TIMED else None
        try:
            async with asyncio.timeout(budget):
                result = await pending
        except GatewayError:
            raise
        except Exception as exc:
            return self._fault(impl, exc, hook_name)
        return self._answered(impl, result)

    def _answered(self, impl, result: Any) -> Any:
        """An implementation's result, logged when LLMGATE_TRACE_HOOKS is set."""
        if self.trace:
            log.info("hook %s.%s -> %r", impl.plugin_name, impl.function.__name__, result)
        return result

    def _fault(self, impl, exc: Exception, hook_name: str) -> None:
        """Count and log a plugin's failure; the request goes on without it unless the plugin is fail-closed
        or the hook guards access."""
        name = impl.plugin_name
        self.faults[name] = self.faults.get(name, 0) + 1
        if isinstance(exc, TimeoutError):
            log.error("plugin %s timed out in %s", name, impl.function.__name__)
        else:
            log.error("plugin %s raised in %s", name, impl.function.__name__, exc_info=exc)
        settings = self.settings.get(name)
        if hook_name in hookspecs.GUARDS:
            raise PluginFault(f"plugin '{name}' failed checking access: the request is refused") from exc
        if settings and settings.fail_closed:
            raise PluginFault(f"plugin '{name}' failed and is configured fail-closed") from exc
        return None

    async def call(self, hook_name: str, **kwargs) -> dict[str, Any]:
        """{plugin name: result} of the implementations that returned non-None, in plugin order.

        For a `firstresult` hook the calls stop at the first answer, so it holds at most one entry."""
        results = {}
        first = hook_name in self._first
        for impl in self._impls.get(hook_name, ()):
            result = self._call(impl, kwargs, hook_name)
            if type(result) is CoroutineType:  # _call made one: the implementation is async
                result = await result
            if result is not None:
                results[impl.plugin_name] = result
                if first:
                    break
        return results

    def collect(self, hook_name: str, **kwargs) -> dict[str, Any]:
        """`call` for the synchronous registration hooks of start-up, where a fault stops the gateway."""
        results = {}
        for impl in self._impls.get(hook_name, ()):
            if (result := impl.function(*[kwargs[a] for a in impl.argnames])) is not None:
                results[impl.plugin_name] = result
                if hook_name in self._first:
                    break
        return results


def answer(results: dict[str, Any]) -> tuple[str | None, Any]:
    """(plugin, result) of a `firstresult` hook's call; (None, None) when no plugin answered."""
    return next(iter(results.items()), (None, None))
