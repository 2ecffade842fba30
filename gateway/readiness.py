"""GET /readyz from what the gateway already holds: it never waits on the state store.

A probe pings the store in the background (once a second, each ping bounded), and /readyz reads its
last verdict: a Redis that is paused, sleeping or gone makes the answer "degraded" within a second or
two, and the answer itself always takes as long as reading a few fields does. A Kubernetes probe with a
one-second timeout therefore never takes every replica out because Redis is slow.

A reload refused (SIGHUP with an invalid file) is said there too, until a reload succeeds (the daemon
notes it on the gateway, `Gateway.reload_refused`), so a rollout of a bad ConfigMap shows in the probe
and not only in a log line.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from .background import stop_tasks
from .banner import NO_ROUTE, unanswerable
from .breaker import breaker_problems
from .gateway import GATEWAY, Gateway

PROBE_EVERY = 1.0  # seconds between pings of the state store
PROBE_TIMEOUT = 2.0  # a ping that takes longer failed
SLOW_AFTER = 0.5  # a ping in flight this long already reads as the store not answering


class StoreProbe:
    """The state store's health as last seen, kept fresh by a background task."""

    def __init__(self, gateway: Gateway, clock=time.monotonic):
        self.gateway = gateway
        self._clock = clock
        self.ok: bool | None = None  # None: not probed yet
        self.problem: str | None = None
        self._pinging_since: float | None = None
        self._task: asyncio.Task | None = None

    async def probe(self) -> None:
        self._pinging_since = self._clock()
        try:
            self.ok = await asyncio.wait_for(self.gateway.store.ping(), PROBE_TIMEOUT)
            self.problem = None if self.ok else "it does not answer"
        except (TimeoutError, asyncio.TimeoutError):
            self.ok, self.problem = False, f"it did not answer a ping within {PROBE_TIMEOUT:g}s"
        except Exception as exc:  # a ping is not supposed to raise: report it, keep probing
            self.ok, self.problem = False, f"its ping failed: {type(exc).__name__}"
        finally:
            self._pinging_since = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(PROBE_EVERY)
            await self.probe()

    async def start(self) -> None:
        await self.probe()  # the first answer after start-up already knows (bounded by PROBE_TIMEOUT)
        self._task = asyncio.create_task(self._run(), name="state store probe")

    async def stop(self) -> None:
        await stop_tasks([self._task])

    def verdict(self) -> tuple[bool, str | None]:
        """(answers, why not): a Redis ping in flight past SLOW_AFTER already counts as no answer (degraded,
        still 200); the embedded store's only once it failed (its failure is a 503, not for a busy moment)."""
        pinging = self._pinging_since
        if pinging is not None and self.gateway.store.engine == "redis":
            if (waited := self._clock() - pinging) >= SLOW_AFTER:
                return False, f"slow: a ping has waited {waited:.1f}s for an answer"
        return bool(self.ok), self.problem


def reload_problem(refused: tuple[float, str] | None) -> str | None:
    """The refused reload in a line: when, and the config error's first specific line."""
    if refused is None:
        return None
    when, error = refused
    lines = error.strip().splitlines() or [""]
    first = next((line.strip(" -") for line in lines[1:] if line.strip()), lines[0])
    at = time.strftime("%H:%M:%S", time.localtime(when))
    return f"the reload at {at} was refused, still serving the previous config: {first[:300]}"


PROBE = web.AppKey("readiness_probe", StoreProbe)


def install(app: web.Application) -> None:
    """Probe the store while the app runs."""

    async def lifetime(app: web.Application):
        app[PROBE] = probe = StoreProbe(app[GATEWAY])
        await probe.start()
        yield
        await probe.stop()

    app.cleanup_ctx.append(lifetime)


async def readyz(request: web.Request) -> web.Response:
    """Ready when the config is loaded and the state store answers; lists what would fail a request.

    A shared store (Redis) that is away or slow leaves the gateway serving with the state it last knew,
    so it reads "degraded" (200): failing the probe would take every replica out at once. A route that
    cannot answer (its backends lack credentials) is named under `degraded.routes` as the banner names
    it; when no route can answer, the status is "degraded" too (200: a caller's 503 names what to set)."""
    gateway = request.app[GATEWAY]
    store_ok, store_problem = request.app[PROBE].verdict()
    degraded = {
        name: problem
        for checks in (await gateway.hooks.call("readiness", gateway=gateway)).values()
        for name, problem in checks.items()
        if problem
    }
    if problem := breaker_problems(gateway.backends):
        degraded["breakers"] = problem
    if problem := unanswerable(gateway):
        degraded["routes"] = problem
    if refused := reload_problem(gateway.reload_refused):
        degraded["config_reload"] = refused
    answering = not problem or not problem.startswith(NO_ROUTE)
    serving = store_ok or gateway.store.engine == "redis"
    if not store_ok:
        why = gateway.store.degraded or f"{gateway.store.engine} {store_problem or 'does not answer'}"
        degraded.setdefault("state_store", why)
    body = {
        "status": ("ready" if store_ok and answering else "degraded") if serving else "not_ready",
        "config": gateway.config.source,
        "state_store": {"engine": gateway.store.engine, "reachable": store_ok},
        "missing_credentials": gateway.missing_credentials(),
        "degraded": degraded,
        "plugin_faults": dict(gateway.hooks.faults),
    }
    return web.json_response(body, status=200 if serving else 503)
