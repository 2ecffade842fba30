"""Pools: several deployments of one model (other ARNs, regions, base URLs) serving as one variant.

A route names a pool wherever it names a backend. Rollout, shadow, the windows and the traffic log
see the pool's name, as the variant; the member that answered is recorded beside it (each attempt's
`member`, the `pool_member` annotation, `x-llmgate-tried` as pool/member). Each try goes to one
member, among the healthy ones, as the pool's `balance` says:

- weighted: at random, in proportion to the weights;
- least_in_flight: the fewest requests in flight for its weight (ties drawn by weight);
- latency: power of two choices: two members drawn by weight, the one whose latency (a peak EWMA,
  counting half every `latency_half_life` seconds it is not renewed) times its requests in flight
  plus one is lower.

With `affinity: user`, a request that names its user (the rollout's sticky key: `user`,
x-llmgate-user, the caller's key) goes to the member that user hashes to (weighted rendezvous
hashing), so a provider's prompt cache or vLLM's prefix cache stays warm; an ejected member moves
only its own users, each to their next member, and takes them back when it returns.

Each member has its own breaker with growing openings (`ejection`, after Envoy's outlier detection):
`failures` backend-side failures in a row (5xx, 429, timeouts) eject it for `open_seconds` × its
ejections, up to `max_open_seconds`; then one request probes it, and its success takes the member
back. A retry goes to another member; a pool with no healthy member is passed over like an open
breaker, along the route's chain.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Collection
from contextlib import contextmanager
from typing import Any, AsyncIterator, Callable, Iterator

from .backends.base import Backend, BackendSettings
from .breaker import BreakerSettings, CircuitBreaker
from .config import Config, PoolSettings
from .context import stable_hash
from .errors import UpstreamError

MEMBER = "pool_member"  # the annotation naming the member of a pool that answered
EWMA_WEIGHT = 0.3  # how much a faster sample moves a member's latency estimate (a slower one counts whole)
UNMEASURED_BUSY = 1e9  # the cost of a member not yet measured that has a request in flight: any other first


class Member(Backend):
    """One deployment in a pool: its backend, called through here so that the pool sees what it does
    (requests in flight, latency), and the pool's own breaker for it (its ejections)."""

    def __init__(
        self,
        pool: str,
        backend: Backend,
        weight: float,
        ejection: BreakerSettings,
        half_life: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(backend.name, backend.settings, {})
        self.backend = backend
        self.weight = weight
        self.breaker = CircuitBreaker(f"{pool}/{backend.name}", ejection, clock)
        self.in_flight = 0
        self.latency_ms: float | None = None
        self._half_life = half_life
        self._sampled_at = 0.0
        self._clock = clock

    @property
    def kind(self) -> str:  # type: ignore[override]  # the deployment's, for traces and parameter policies
        return self.backend.kind

    def missing_credentials(self) -> list[str]:
        return self.backend.missing_credentials()

    def upstream_body(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.backend.upstream_body(body)

    def ignored_params(self, body: dict[str, Any]) -> list[str]:
        return self.backend.ignored_params(body)

    def expected_ms(self, now: float) -> float | None:
        """Its latency estimate now: the EWMA, halved for every `half_life` without a sample."""
        if self.latency_ms is None:
            return None
        return self.latency_ms * 0.5 ** ((now - self._sampled_at) / self._half_life)

    def cost(self, now: float) -> float:
        """What the latency balancer minimises. A member never measured costs nothing, so that it is tried,
        but one request at a time (as Finagle's peak EWMA does): a slow one is not flooded before it answers."""
        expected = self.expected_ms(now)
        if expected is None:
            return UNMEASURED_BUSY + self.in_flight if self.in_flight else 0.0
        return expected * (self.in_flight + 1)

    def observe(self, ms: float) -> None:
        """One answer's latency (a stream's: to its first chunk). A peak EWMA: slower counts at once."""
        now = self._clock()
        current = self.expected_ms(now)
        self.latency_ms = ms if current is None or ms >= current else current + EWMA_WEIGHT * (ms - current)
        self._sampled_at = now

    def rendezvous(self, key: str) -> float:
        """This member's score for `key` in weighted rendezvous hashing: the highest of a pool's wins."""
        uniform = (int(stable_hash(key, self.name)[:16], 16) + 0.5) / 2**64
        return -self.weight / math.log(uniform)

    @contextmanager
    def _busy(self) -> Iterator[None]:
        self.in_flight += 1
        started = self._clock()
        try:
            yield
            self.observe((self._clock() - started) * 1000)
        finally:
            self.in_flight -= 1

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._busy():
            return await self.backend.complete(body)

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._busy():
            return await self.backend.embed(body)

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The backend's stream, in flight here until it ends or is closed."""
        self.in_flight += 1
        started, waiting = self._clock(), True
        chunks = self.backend.stream(body)
        try:
            async for chunk in chunks:
                if waiting:
                    self.observe((self._clock() - started) * 1000)
                    waiting = False
                yield chunk
        finally:
            self.in_flight -= 1
            await chunks.aclose()


class Pool(Backend):
    """Deployments of one model behind one name. In the generation's backends like any backend, so that
    whatever calls a backend by name (a shadow, a judge) may call a pool: it picks a member each call."""

    kind = "pool"

    def __init__(
        self,
        name: str,
        settings: PoolSettings,
        members: list[Member],
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        windows = [m.settings.context_window for m in members if m.settings.context_window]
        own = BackendSettings(kind=self.kind, model=members[0].model, context_window=min(windows, default=None))
        super().__init__(name, own, {})
        self.pool_settings = settings
        self.members = members
        self.rng = rng or random.Random()
        self._clock = clock

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)

    def breakers(self) -> dict[str, CircuitBreaker]:
        return {m.breaker.backend: m.breaker for m in self.members}

    def missing_credentials(self) -> list[str]:
        """What to set before the pool can serve at all: nothing while one member has its credentials."""
        missing = [m.missing_credentials() for m in self.members]
        return [] if not all(missing) else sorted({variable for found in missing for variable in found})

    def upstream_body(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.members[0].upstream_body(body)  # deployments of one model: for a context-window estimate

    def ignored_params(self, body: dict[str, Any]) -> list[str]:
        return self.members[0].ignored_params(body)

    def pick(self, key: str | None = None, avoid: Collection[str] = ()) -> Member | None:
        """The member that takes the next try: a healthy one (its breaker would let the request through, it
        has its credentials), not one of `avoid` (those this request tried) while another is healthy;
        None when no member is. `key` names the request's user, for affinity."""
        ready = [m for m in self.members if m.breaker.available() and not m.missing_credentials()]
        fresh = [m for m in ready if m.name not in avoid] or ready
        if len(fresh) <= 1:
            return fresh[0] if fresh else None
        if key is not None and self.pool_settings.affinity == "user":
            return max(fresh, key=lambda m: m.rendezvous(key))
        balance = self.pool_settings.balance
        if balance == "least_in_flight":
            lowest = min(m.in_flight / m.weight for m in fresh)
            return self._draw([m for m in fresh if m.in_flight / m.weight == lowest])
        if balance == "latency":
            first = self._draw(fresh)
            second = self._draw([m for m in fresh if m is not first])
            now = self._clock()
            return second if second.cost(now) < first.cost(now) else first
        return self._draw(fresh)

    def _draw(self, members: list[Member]) -> Member:
        return self.rng.choices(members, weights=[m.weight for m in members])[0]

    def _member_for(self, body: dict[str, Any]) -> Member:
        """For a caller that has no request context (a shadow, a judge): the request's `user` is its key."""
        user = body.get("user")
        member = self.pick(f"user:{user}" if isinstance(user, str) and user else None)
        if member is None:
            raise UpstreamError(f"pool '{self.name}' has no healthy member now", status=503, retryable=True)
        return member

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._member_for(body).complete(body)

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._member_for(body).embed(body)

    def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._member_for(body).stream(body)


def build_pools(
    config: Config, backends: dict[str, Backend], reuse: dict[str, Backend] | None = None
) -> dict[str, Pool]:
    """The config's pools over its `backends`. A pool whose settings and member backends are unchanged is
    kept, and with it its members' ejections, loads and latencies."""
    pools = {}
    for name, settings in config.settings.pools.items():
        old = (reuse or {}).get(name)
        if (
            isinstance(old, Pool)
            and old.pool_settings == settings
            and all(m.backend is backends.get(m.name) for m in old.members)
        ):
            pools[name] = old
            continue
        members = [
            Member(name, backends[m.backend], m.weight, settings.ejection, settings.latency_half_life)
            for m in settings.members
        ]
        pools[name] = Pool(name, settings, members)
    return pools
