"""The gateway's runtime: config, plugins, backends and state, started and stopped as one.

Requests take a `Generation` (the backends of one config) when they start and keep it to the
end, so a SIGHUP reload swaps in new backends without touching requests in flight; the old
generation's replaced backends are closed once its last request finishes.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import web
from pydantic import ValidationError

from .admin import registry as models_registry
from .backends.base import Backend
from .config import Config, ConfigError, RouteSettings, _format_validation, choices
from .errors import NotFound, Scrubber, Unauthorized
from .plugins import HookRunner, answer, build_plugin_manager
from .pools import build_pools
from .state import StateStore, open_state_store

P = TypeVar("P")
log = logging.getLogger("llmgate")
# Server settings a reload cannot apply: the listening socket and the event loop are made once, at start-up.
RESTART_ONLY = ("host", "port", "event_loop", "workers")


@dataclass
class Generation:
    config: Config
    backends: dict[str, Backend]
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def enter(self) -> None:
        self.inflight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()


def build_backends(
    config: Config, kinds: dict[str, type[Backend]], reuse: dict[str, Backend] | None = None
) -> dict[str, Backend]:
    """Validate each backend's settings against its kind and make it, then the pools over them; reuse
    unchanged ones (a breaker, a pool's ejections and latencies live on)."""
    problems, backends = [], {}
    for name, raw in config.settings.backends.items():
        kind_cls = kinds.get(raw["kind"])
        if kind_cls is None:
            kind = raw["kind"]
            problems.append(f"backends.{name}.kind: unknown kind '{kind}' {choices(kind, kinds, 'known')}")
            continue
        prefix = f"backends.{name}."
        unset = {path[len(prefix) :]: var for path, var in config.unset_env.items() if path.startswith(prefix)}
        try:
            settings = kind_cls.Settings.model_validate(raw)
        except ValidationError as exc:
            problems += [prefix + p for p in _format_validation(exc, unset, kind_cls.Settings)]
            continue
        old = (reuse or {}).get(name)
        if old is not None and type(old) is kind_cls and old.settings == settings and old._unset_env == unset:
            backends[name] = old
        else:
            backends[name] = kind_cls(name, settings, unset)
    if problems:
        raise ConfigError(config.source, problems)
    backends.update(build_pools(config, backends, reuse))  # named like backends: a route takes either
    return backends


class Gateway:
    """Everything a request needs, owned by the aiohttp app for its lifetime."""

    def __init__(self, config: Config):
        self.pm, plugin_settings = build_plugin_manager(config)
        self.hooks = HookRunner(self.pm, plugin_settings, order=list(config.settings.plugins))
        self.kinds: dict[str, type[Backend]] = {}
        for provided in self.hooks.collect("register_backend_kinds").values():
            self.kinds.update(provided)
        self.generation = Generation(config, build_backends(config, self.kinds))
        self._check_plugins(config)
        self.scrub = Scrubber(config.secrets)
        self.store: StateStore = open_state_store(config.settings.state)
        self._retiring: set[asyncio.Task] = set()
        # The config as the file says; `self.config` adds the models registered at run time (models_registry).
        self.file_config = config
        self.registered: dict[str, dict] = {}
        self.in_flight: Counter = Counter()  # route -> chat requests being served now (the app's IN_FLIGHT)
        self._swap_lock = asyncio.Lock()
        # (when, why) the last reload of the file was refused, until one succeeds: /readyz says it.
        self.reload_refused: tuple[float, str] | None = None
        self.connections = None  # the server's connection guard (gateway/connections.py) once it serves

    def _check_plugins(self, config: Config) -> None:
        problems = [p for found in self.hooks.collect("config_problems", config=config).values() for p in found]
        if problems:
            raise ConfigError(config.source, problems)

    @property
    def config(self) -> Config:
        return self.generation.config

    @property
    def backends(self) -> dict[str, Backend]:
        return self.generation.backends

    def route(self, name: str) -> RouteSettings:
        """The route `name` for the operator's own use (admin, plugins): a 404 names every route."""
        route = self.config.settings.routes.get(name)
        if route is None:
            raise no_such_route(name, sorted(self.config.settings.routes), scoped=False)
        return route

    async def visible_routes(self, request: web.Request) -> tuple[list[str], bool]:
        """The routes the caller of `request` may learn about, in config order, and whether a plugin
        narrowed them (`visible_routes` hook; it may refuse the caller with a 401)."""
        names = list(self.config.settings.routes)
        narrowed = await self.hooks.call("visible_routes", request=request, routes=list(names))
        for allowed in map(set, narrowed.values()):
            names = [name for name in names if name in allowed]
        return names, bool(narrowed)

    def plugin(self, kind: type[P]) -> P | None:
        """The enabled plugin that is a `kind`, None while it is off: plugins reach each other by type
        (`gateway.plugin(Rollout)`), so a renamed config key or a typo cannot hand one the wrong object."""
        return next((p for _, p in self.pm.list_name_plugin() if isinstance(p, kind)), None)

    def enabled(self, name: str) -> bool:
        """Whether the plugin registered as `name` is on (for the core, which never imports a plugin)."""
        return self.pm.get_plugin(name) is not None

    async def authenticate(self, request: web.Request) -> str | None:
        """The tenant the caller of `request` acts as (`authenticate` hook; it refuses a bad key with a 401),
        None where no plugin authenticates."""
        return answer(await self.hooks.call("authenticate", request=request))[1]

    async def route_for(self, request: web.Request, name: str) -> RouteSettings:
        """The route a caller asked for; a 404 names only the routes that caller may see, and a route it may not
        use answers the same 404 as one that does not exist (a caller learns no route names by asking)."""
        route = self.config.settings.routes.get(name)
        if route is None or self.hooks.implemented("visible_routes"):
            visible, scoped = await self.visible_routes(request)
            if route is None or name not in visible:
                raise no_such_route(name, sorted(visible), scoped)
        return route

    def require_admin(self, request: web.Request) -> None:
        """Refuse an admin request without the admin token (compared in constant time)."""
        expected = self.config.server.admin_token or os.environ.get("LLMGATE_ADMIN_TOKEN")
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        given = given.strip() if scheme.lower() == "bearer" else ""  # a bare token is no credential
        if not expected:
            raise Unauthorized(
                "admin actions are disabled on this gateway: start it with LLMGATE_ADMIN_TOKEN set (or "
                "server.admin_token in its config) to turn them on; `make demo` makes one for its run and prints it",
                code="admin_disabled",
            )
        if not given or not hmac.compare_digest(given.encode(), expected.encode()):
            raise Unauthorized(
                "a valid admin token is required (Authorization: Bearer <token>): the gateway's is server.admin_token "
                "in its config, else the LLMGATE_ADMIN_TOKEN it started with (`make demo` prints the one it made "
                "for its run); the token sent is not it",
                code="invalid_admin_token",
            )

    def missing_credentials(self) -> dict[str, list[str]]:
        return {name: missing for name, b in self.backends.items() if (missing := b.missing_credentials())}

    async def start(self) -> None:
        await self.store.open()
        await self._load_registered()
        self.store.subscribe(self._on_store_change)
        for backend in self.backends.values():
            await backend.start()
        await self.hooks.call("startup", gateway=self)

    async def stop(self) -> None:
        await self.hooks.call("shutdown", gateway=self)  # in reverse plugin order
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        for backend in self.backends.values():
            await backend.close()
        await self.store.close()

    async def reload(self, config: Config) -> None:
        """Swap in a new config; raise ConfigError (and keep serving the old one) if it is invalid."""
        if set(config.settings.plugins) != set(self.config.settings.plugins) or any(
            config.settings.plugins[n].enabled != self.config.settings.plugins[n].enabled
            for n in config.settings.plugins
        ):
            log.warning("plugins were enabled or disabled in the new config: that takes effect at the next restart")
        if changed := [
            f"server.{key}" for key in RESTART_ONLY if getattr(config.server, key) != getattr(self.config.server, key)
        ]:
            log.warning("%s changed in the new config: that takes effect at the next restart", ", ".join(changed))
        await self._swap(config, "config reloaded from")

    async def _load_registered(self) -> None:
        """At start-up, before backends start: add the registered models (a store outage only delays them)."""
        try:
            self.registered = await self.store.items(models_registry.KEY)
        except Exception as exc:
            log.warning("registered models not loaded (the state store failed: %s); they join when it answers", exc)
            return
        if self.registered:
            config = models_registry.merged(self.file_config, self.registered, self.kinds)
            self.generation = Generation(config, build_backends(config, self.kinds, reuse=self.backends))

    async def refresh_registered(self) -> None:
        """Re-read the registered models and swap in a Generation with them, when they changed."""
        registered = await self.store.items(models_registry.KEY)
        if registered == self.registered:
            return
        self.registered = registered
        await self._swap(self.file_config, "registered models changed:")

    async def _on_store_change(self, message: dict) -> None:
        if message.get("kind") in (models_registry.NOTICE, "resync"):
            await self.refresh_registered()

    async def _swap(self, file_config: Config, why: str) -> None:
        """One swap at a time: the file's config plus the registered models becomes the new Generation."""
        async with self._swap_lock:
            await self._swap_locked(models_registry.merged(file_config, self.registered, self.kinds), why)
            self.file_config = file_config

    async def _swap_locked(self, config: Config, why: str) -> None:
        old = self.generation
        backends = build_backends(config, self.kinds, reuse=old.backends)
        self._check_plugins(config)
        fresh = [b for name, b in backends.items() if old.backends.get(name) is not b]
        for backend in fresh:
            await backend.start()
        self.generation = Generation(config, backends)
        self.scrub = Scrubber(config.secrets | old.config.secrets)
        retired = [b for name, b in old.backends.items() if backends.get(name) is not b]
        task = asyncio.create_task(self._retire(old, retired))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        await self.hooks.call("config_reloaded", gateway=self, config=config)
        log.info(
            "%s %s: %d backends (%d new), %d routes",
            why,
            config.source,
            len(backends),
            len(fresh),
            len(config.settings.routes),
        )

    async def _retire(self, generation: Generation, backends: list[Backend]) -> None:
        if generation.inflight:
            try:
                await asyncio.wait_for(generation.idle.wait(), self.config.server.shutdown_timeout)
            except TimeoutError:
                log.warning("closing replaced backends with %d requests still in flight", generation.inflight)
        for backend in backends:
            await backend.close()


DEMO_ROUTE = "demo"  # config/demo.yaml's route, which the README's tour asks for


def no_such_route(name: str, visible: list[str], scoped: bool) -> NotFound:
    """The 404 for an unknown model: lists `visible`, which a plugin may have narrowed to the caller's."""
    if scoped:
        known = f"routes available to you: {', '.join(visible) or 'none'}"
    else:
        known = f"routes: {', '.join(visible) or 'none configured'}"
    # OpenAI's own words: the same for a route that does not exist and for one the caller may not use
    message = f"The model `{name}` does not exist or you do not have access to it ({known})"
    if not scoped and name == DEMO_ROUTE:  # the tour's request sent to `make run`
        message += f"; '{name}' is the route `make demo` serves (a local model, no provider keys needed)"
    return NotFound(message, param="model", code="model_not_found")


GATEWAY = web.AppKey("gateway", Gateway)
