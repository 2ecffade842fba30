"""rollout: sticky percentage rollout, canary users and a kill switch, and the audited operations on them.

Each route's rollout state lives in the state store under `rollout:<route>`: which buckets each
candidate holds (see gateway.allocation), canary users, the kill switch, and candidates that were
rolled back. Requests read an in-memory copy; a change made on any replica is written atomically,
recorded as an audit event, and announced on the store's change channel so every replica reloads
it at once (a periodic resync covers notices missed while the store was unreachable).

The config's `candidates` percents are where a route starts, and a later edit of the config is
applied as a change by "config". Between config edits, operators own the percents: their changes
survive restarts. A candidate that was rolled back stays out until an operator gives it a percent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import ClientSession, ClientTimeout, web
from pydantic import BaseModel, ConfigDict, Field

from gateway.admin import actor, audit, read_body
from gateway.allocation import Allocation, bucket_of
from gateway.background import stop_tasks
from gateway.errors import InvalidRequest, NotFound, StoreUnavailable
from gateway.gateway import GATEWAY
from gateway.hookspecs import hookimpl

from .snapshot import RolloutSnapshot

log = logging.getLogger("llmgate.rollout")
KEY = "rollout:"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resync_interval: float = Field(
        30.0, gt=0, description="seconds between full reloads, a safety net for missed notices"
    )
    canary: dict[str, dict[str, list[str]]] = Field({}, description="route -> candidate -> users always sent to it")
    webhooks: list[str] = Field([], description="URLs that receive a JSON POST for each event of webhook_kinds")
    webhook_kinds: list[str] = ["rollback", "promote", "kill"]
    snapshot_path: str | None = Field(
        None,
        description="local copy of the shared rollout state, used when a "
        "replica starts while Redis is unreachable (default: next to state.sqlite_path)",
    )


@dataclass
class RouteRollout:
    allocation: Allocation = field(default_factory=Allocation)
    canary: dict[str, list[str]] = field(default_factory=dict)
    killed: bool = False
    rolled_back: dict[str, dict] = field(default_factory=dict)
    applied_config: dict[str, float] = field(default_factory=dict)  # the config percents last applied

    @classmethod
    def from_json(cls, data: dict | None) -> "RouteRollout":
        data = data or {}
        return cls(
            Allocation.from_json(data.get("allocation")),
            dict(data.get("canary") or {}),
            bool(data.get("killed")),
            dict(data.get("rolled_back") or {}),
            dict(data.get("applied_config") or {}),
        )

    def to_json(self) -> dict:
        return {
            "allocation": self.allocation.to_json(),
            "canary": self.canary,
            "killed": self.killed,
            "rolled_back": self.rolled_back,
            "applied_config": self.applied_config,
        }

    def summary(self) -> dict:
        return {
            "percents": self.allocation.percents(),
            "killed": self.killed,
            "rolled_back": self.rolled_back,
            "canary": {c: len(users) for c, users in self.canary.items()},
        }


def _sticky_id(sticky_key: str) -> str:
    return sticky_key.split(":", 1)[1] if ":" in sticky_key else sticky_key


class Rollout:
    Settings = Settings

    def __init__(self, settings: Settings):
        self.settings = settings
        self.routes: dict[str, RouteRollout] = {}
        self._canary_index: dict[str, dict[str, str]] = {}  # route -> user -> candidate
        self.gateway = None
        self._tasks: list[asyncio.Task] = []  # loops that live as long as the gateway
        self._webhook_queue: asyncio.Queue | None = None
        self._snapshot: RolloutSnapshot | None = None  # only with a shared store: SQLite is local already
        self._offline: str | None = None  # set while serving a state the store has not confirmed (started without it)
        self._pending_config = None  # (config, why) still to apply to the store once it answers

    # --- lifetime -----------------------------------------------------------------------------

    @hookimpl
    async def startup(self, gateway):
        self.gateway = gateway
        if gateway.store.engine == "redis":
            path = self.settings.snapshot_path or str(
                Path(gateway.config.settings.state.sqlite_path).parent / "rollout-snapshot.json"
            )
            self._snapshot = RolloutSnapshot(path)
        gateway.store.subscribe(self._on_change)
        try:
            await self._sync(gateway.config, "startup")
        except StoreUnavailable as exc:  # start anyway: route with the last state known, join the store later
            self._start_offline(gateway.config, "startup", exc)
        self._tasks.append(asyncio.create_task(self._resync_forever(), name="rollout resync"))
        if self.settings.webhooks:
            self._webhook_queue = asyncio.Queue(1000)
            self._tasks.append(asyncio.create_task(self._send_webhooks(), name="rollout webhooks"))

    @hookimpl
    async def shutdown(self, gateway):
        await stop_tasks(self._tasks)

    @hookimpl
    async def config_reloaded(self, gateway, config):
        try:
            await self._sync(config, "config reload")
        except StoreUnavailable as exc:
            self._start_offline(config, "config reload", exc)

    # --- serving without the store ------------------------------------------------------------

    async def _sync(self, config, why: str) -> None:
        """Apply the config's percents to the store and read every route back; raises StoreUnavailable."""
        await self._apply_config(config, why)
        self._pending_config = None
        await self.reload()
        if self._offline:
            log.warning("rollout state shared again through the state store (was: %s)", self._offline)
            self._offline = None
            await self._save_snapshot()

    def _start_offline(self, config, why: str, exc: StoreUnavailable) -> None:
        """Serve each route from the local snapshot (else from the config) until the store answers."""
        snapshot = self._snapshot.load() if self._snapshot is not None else None
        stored, source = {}, "the config's percents (no local snapshot)"
        if snapshot is not None:
            stored, saved_at = snapshot
            source = f"the local snapshot saved {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(saved_at))}"
        for route, settings in config.settings.routes.items():
            if route in self.routes and route not in stored:
                continue  # keep what was being served
            self._install(route, RouteRollout.from_json(_with_config(route, stored.get(route), settings.candidates)))
        self._pending_config = (config, why)
        self._offline = f"the state store did not answer at {why}; routing with {source}"
        log.warning("rollout: %s", self._offline)
        if not any(t.get_name() == "rollout rejoin" and not t.done() for t in self._tasks):
            self._tasks.append(asyncio.create_task(self._rejoin(), name="rollout rejoin"))

    async def _rejoin(self) -> None:
        """Retry with backoff until the store takes the pending config and the state is read back."""
        pause = 0.5
        while self._pending_config is not None:
            await asyncio.sleep(pause)
            if self._pending_config is None:  # a resync notice got there first
                return
            try:
                await self._sync(*self._pending_config)
            except Exception as exc:
                log.debug("rollout: the state store still does not answer: %s", exc)
                pause = min(pause * 2, 5.0)

    # --- the request path ---------------------------------------------------------------------

    @hookimpl
    def choose_variant(self, ctx):
        state = self.routes.get(ctx.route_name)
        if state is None or state.killed:
            return None
        canary = self._canary_index.get(ctx.route_name)
        if canary:
            chosen = canary.get(_sticky_id(ctx.sticky_key))
            if chosen is not None and chosen not in state.rolled_back:
                return chosen
        return state.allocation.variant_for(bucket_of(ctx.route_name, ctx.sticky_key))

    # --- keeping the in-memory copy current ---------------------------------------------------

    def _install(self, route: str, state: RouteRollout) -> None:
        self.routes[route] = state
        canary = {u: c for c, users in self.settings.canary.get(route, {}).items() for u in users}
        canary.update({u: c for c, users in state.canary.items() for u in users})
        self._canary_index[route] = canary

    async def reload(self, route: str | None = None) -> None:
        if route is not None:
            self._install(route, RouteRollout.from_json(await self.gateway.store.get(KEY + route)))
            await self._save_snapshot()
            return
        stored = await self.gateway.store.items(KEY)
        for name in self.gateway.config.settings.routes:
            state = stored.get(KEY + name)
            if state is None and name in self.routes:
                state = await self._reseed(name)
            self._install(name, RouteRollout.from_json(state))
        await self._save_snapshot()

    async def _reseed(self, route: str) -> dict:
        """The store lost a route's state (a Redis restarted empty): give it back the state this replica serves.

        Atomic, so when several replicas do it at once the first one's copy is the one every replica reads."""
        mine = self.routes[route].to_json()
        _, state = await self.gateway.store.update(KEY + route, lambda old: old if old is not None else mine)
        if state == mine:
            log.warning(
                "rollout: the state store had no state for route %s; restored the one this replica served", route
            )
        return state

    async def _save_snapshot(self) -> None:
        if self._snapshot is not None and self._offline is None:
            await self._snapshot.save({name: state.to_json() for name, state in self.routes.items()})

    async def _on_change(self, message: dict) -> None:
        if message.get("kind") == "resync":
            try:
                if self._pending_config is not None:
                    await self._sync(*self._pending_config)
                else:
                    await self.reload()
            except StoreUnavailable as exc:  # lost again already: the resync loop tries later
                log.warning("rollout resync failed, keeping the state served: %s", exc.message)
        elif message.get("kind") == "rollout" and message.get("route") in self.gateway.config.settings.routes:
            await self.reload(message["route"])

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_interval)
            try:
                if self._pending_config is not None:
                    await self._sync(*self._pending_config)
                else:
                    await self.reload()
            except Exception as exc:  # the store is down: keep serving with what we know
                log.warning("rollout state resync failed, keeping the last state known: %s", exc)

    async def _apply_config(self, config, why: str) -> None:
        """Apply the config's candidate percents that changed since they were last applied."""
        for route, settings in config.settings.routes.items():
            served = self.routes[route].to_json() if route in self.routes else None

            def change(old: dict | None, route=route, wanted=dict(settings.candidates), served=served) -> dict:
                # A store that lost the route (restarted empty) gets the state this replica serves, not the config's.
                return _with_config(route, old if old is not None else served, wanted)

            old, new = await self.gateway.store.update(KEY + route, change)
            before = RouteRollout.from_json(old).allocation.percents()
            after = RouteRollout.from_json(new).allocation.percents()
            if old is not None and before != after:
                await self._record("rollout", route, "config", before, after, f"config changed ({why})")

    # --- operations (admin API, CLI, rules) ---------------------------------------------------

    def _check(self, route: str, candidate: str | None = None) -> None:
        settings = self.gateway.config.settings.routes.get(route)
        if settings is None:
            raise NotFound(f"no route named '{route}'", param="route", code="route_not_found")
        if candidate is not None and candidate not in settings.candidates:
            known = ", ".join(sorted(settings.candidates)) or "none"
            raise InvalidRequest(
                f"'{candidate}' is not a candidate of route '{route}' (candidates: {known}); "
                "add it under routes.<route>.candidates in the config first",
                param="candidate",
            )

    async def _change(self, route: str, kind: str, who: str, reason: str | None, mutate, **details) -> dict:
        """Apply `mutate` to the route's state atomically, then audit, announce and install it."""

        def change(old: dict | None) -> dict:
            state = RouteRollout.from_json(old)
            mutate(state)
            return state.to_json()

        try:
            old, new = await self.gateway.store.update(KEY + route, change)
        except ValueError as exc:
            raise InvalidRequest(str(exc), code="invalid_percent") from None
        old_state, new_state = RouteRollout.from_json(old), RouteRollout.from_json(new)
        self._install(route, new_state)
        before, after = old_state.summary(), new_state.summary()
        return await self._record(kind, route, who, before["percents"], after["percents"], reason, **details)

    async def _record(self, kind: str, route: str, who: str, before, after, reason, **details) -> dict:
        event = await audit(self.gateway, kind, route, who, before=before, after=after, reason=reason, **details)
        await self.gateway.store.publish({"kind": "rollout", "route": route})
        await self.gateway.hooks.call("rollout_changed", event=event)
        if self._webhook_queue is not None and kind in self.settings.webhook_kinds:
            try:
                self._webhook_queue.put_nowait(event)
            except asyncio.QueueFull:
                log.error("webhook queue full: event %s not sent", event.get("id"))
        return event

    async def set_percent(
        self, route: str, candidate: str, percent: float, *, actor: str, reason: str | None = None, **details
    ) -> dict:
        """Give `candidate` `percent` of the route's users; re-enables a rolled-back candidate."""
        self._check(route, candidate)

        def mutate(state: RouteRollout) -> None:
            state.allocation = state.allocation.set_percent(candidate, percent)
            if percent > 0:
                state.rolled_back.pop(candidate, None)

        return await self._change(
            route, "rollout", actor, reason, mutate, candidate=candidate, percent=percent, **details
        )

    async def rollback(self, route: str, candidate: str | None = None, *, actor: str, reason: str, **details) -> dict:
        """Send a candidate's users (all candidates' without one) back to the baseline, and keep them there."""
        self._check(route, candidate)
        targets = [candidate] if candidate else list(self.gateway.config.settings.routes[route].candidates)
        record = {"reason": reason, "actor": actor, "ts": time.time(), **details}

        def mutate(state: RouteRollout) -> None:
            for name in targets:
                state.allocation = state.allocation.set_percent(name, 0)
                state.rolled_back[name] = record

        return await self._change(route, "rollback", actor, reason, mutate, candidate=candidate, **details)

    async def promote(self, route: str, candidate: str, *, actor: str, reason: str | None = None) -> dict:
        """Give one candidate every user; make it permanent by making it the baseline in the config."""
        self._check(route, candidate)

        def mutate(state: RouteRollout) -> None:
            for other in list(state.allocation.ranges):
                if other != candidate:
                    state.allocation = state.allocation.set_percent(other, 0)
            state.allocation = state.allocation.set_percent(candidate, 100)
            state.rolled_back.pop(candidate, None)

        return await self._change(route, "promote", actor, reason, mutate, candidate=candidate)

    async def kill(self, route: str, on: bool, *, actor: str, reason: str | None = None) -> dict:
        """The kill switch: every request of the route goes to the baseline while it is on."""
        self._check(route)

        def mutate(state: RouteRollout) -> None:
            state.killed = on

        return await self._change(route, "kill" if on else "unkill", actor, reason, mutate)

    async def set_canary(
        self, route: str, candidate: str, users: list[str], *, actor: str, reason: str | None = None
    ) -> dict:
        """Users (the sticky ids: `user` field, x-llmgate-user, or API key) always sent to `candidate`."""
        self._check(route, candidate)

        def mutate(state: RouteRollout) -> None:
            if users:
                state.canary[candidate] = sorted(set(users))
            else:
                state.canary.pop(candidate, None)

        return await self._change(route, "canary", actor, reason, mutate, candidate=candidate, users=len(users))

    # --- operator surface ---------------------------------------------------------------------

    @hookimpl
    def config_problems(self, config):
        problems = []
        for route, candidates in self.settings.canary.items():
            settings = config.settings.routes.get(route)
            if settings is None:
                problems.append(f"plugins.rollout.canary.{route}: unknown route")
                continue
            problems += [
                f"plugins.rollout.canary.{route}.{c}: not a candidate of route '{route}'"
                for c in candidates
                if c not in settings.candidates
            ]
        return problems

    @hookimpl
    def admin_status(self, gateway):
        return {"rollout": {"routes": {name: state.summary() for name, state in self.routes.items()}}}

    @hookimpl
    def readiness(self, gateway):
        if self._offline:
            return {"rollout": f"serving with a rollout state the store has not confirmed: {self._offline}"}
        problem = gateway.store.degraded
        return {"rollout": f"serving with the last rollout state known: {problem}" if problem else None}

    @hookimpl
    def register_routes(self, gateway):
        async def act(request: web.Request) -> web.Response:
            gw = request.app[GATEWAY]
            gw.require_admin(request)
            body = await read_body(request)
            route, action, who = request.match_info["route"], request.match_info["action"], actor(request)
            reason = body.get("reason")
            if action == "rollout":
                percent = body.get("percent")
                if not isinstance(percent, (int, float)) or isinstance(percent, bool):
                    raise InvalidRequest("'percent' must be a number from 0 to 100", param="percent")
                event = await self.set_percent(
                    route, _required(body, "candidate"), float(percent), actor=who, reason=reason
                )
            elif action == "rollback":
                if not reason:
                    raise InvalidRequest("a rollback needs a 'reason'", param="reason")
                event = await self.rollback(route, body.get("candidate"), actor=who, reason=reason)
            elif action == "promote":
                event = await self.promote(route, _required(body, "candidate"), actor=who, reason=reason)
            elif action == "kill":
                event = await self.kill(route, bool(body.get("on", True)), actor=who, reason=reason)
            elif action == "canary":
                users = body.get("users")
                if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
                    raise InvalidRequest("'users' must be an array of strings", param="users")
                event = await self.set_canary(route, _required(body, "candidate"), users, actor=who, reason=reason)
            else:
                raise NotFound(f"no admin action '{action}' (rollout, rollback, promote, kill, canary)")
            return web.json_response(event)

        # "schedule" is left to auto_rollback's /admin/routes/{route}/schedule, whatever the plugin order.
        return [web.post("/admin/routes/{route}/{action:(?!schedule$)[^/]+}", act)]

    async def _send_webhooks(self) -> None:
        """POST each event to every webhook, off the request path, retrying a failed delivery twice."""
        async with ClientSession(timeout=ClientTimeout(total=5)) as session:
            while True:
                event = await self._webhook_queue.get()
                for url in self.settings.webhooks:
                    for attempt in range(3):
                        try:
                            async with session.post(url, json={"source": "llmgate", "event": event}) as resp:
                                if resp.status < 500:
                                    break
                        except Exception as exc:
                            log.warning("webhook %s failed (%s), attempt %d", url, type(exc).__name__, attempt + 1)
                        await asyncio.sleep(0.5 * 2**attempt)


def _with_config(route: str, stored: dict | None, candidates: dict[str, float]) -> dict:
    """A route's stored state with the config's candidate percents applied where they changed since last applied."""
    wanted = dict(candidates)
    state = RouteRollout.from_json(stored)
    for candidate in list(state.allocation.ranges):
        if candidate not in wanted:  # removed from the config: its users go back to the baseline
            state.allocation = state.allocation.set_percent(candidate, 0)
    for candidate, percent in sorted(wanted.items()):
        if state.applied_config.get(candidate) != percent and candidate not in state.rolled_back:
            try:
                state.allocation = state.allocation.set_percent(candidate, percent)
            except ValueError as exc:
                log.error("route %s: config percent for %s not applied: %s", route, candidate, exc)
                continue
    state.applied_config = wanted
    return state.to_json()


def _required(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{name}' is required", param=name)
    return value
