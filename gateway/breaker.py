"""A circuit breaker per backend: stop sending requests to a backend that keeps failing.

closed → (`failures` backend-side failures in a row) → open → (`open_seconds` later) → half-open,
where one probe request at a time may pass: its success closes the breaker, its failure opens it
again for another `open_seconds`. Only the backend's failures count (5xx, 429, timeouts, broken
connections); a caller's own mistake (a 4xx) says nothing about the backend's health.

With `max_open_seconds` set, it opens as Envoy's outlier detection ejects a host: each opening waits
`open_seconds` × the openings counted so far, up to `max_open_seconds`, and every `open_seconds` it
stays closed forgives one, so a backend that keeps failing is kept out longer and longer while one
that failed once long ago starts again from `open_seconds` (pools give each member such a breaker).

A provider's Retry-After longer than the gateway waits between retries cools the backend down for that
long (`cool_down`): no request goes to it until then, whatever the breaker's state.

Each backend object holds its breaker, so a config reload that leaves a backend unchanged keeps
its breaker's state; a backend whose settings change is a new upstream and starts closed.
Every transition is logged as a `breaker_changed` line.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field

from .errors import GatewayError

log = logging.getLogger("llmgate.breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class BreakerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    failures: int = Field(5, ge=1, description="backend-side failures in a row that open the breaker")
    open_seconds: float = Field(30.0, gt=0, description="seconds an open breaker refuses requests before a probe")
    max_open_seconds: float | None = Field(
        None,
        gt=0,
        description="growing openings, up to this many seconds: each opening lasts open_seconds times the "
        "openings counted, one forgiven per open_seconds closed; unset: every opening lasts open_seconds",
    )


class CircuitOpen(GatewayError):
    """Every backend that could answer is behind an open breaker: come back after `Retry-After`."""

    status, type = 503, "server_error"

    def __init__(self, message: str, retry_after: float):
        seconds = max(1, math.ceil(retry_after))
        super().__init__(message, code="circuit_open", headers={"Retry-After": str(seconds)})
        self.retry_after = seconds


def counts_against_backend(error: GatewayError) -> bool:
    """A failure that is the backend's: 5xx-class answers from the gateway's view, and 429."""
    return error.status >= 500 or error.status == 429


class CircuitBreaker:
    """The breaker of one backend. Not thread-safe: it lives on the event loop, like the requests."""

    def __init__(
        self, backend: str, settings: BreakerSettings | None = None, clock: Callable[[], float] = time.monotonic
    ):
        self.backend = backend
        self.settings = settings or BreakerSettings()
        self._clock = clock
        self.state = CLOSED
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self.last_failure: str | None = None
        self.times_opened = 0
        self.open_for = self.settings.open_seconds  # how long the current (or last) opening lasts
        self._openings = 0  # counted towards the next opening's length (max_open_seconds), less those forgiven
        self._closed_at: float | None = None
        self._probing = False
        self._cool_until: float | None = None  # the provider's Retry-After: nothing goes to it before

    def allow(self) -> bool:
        """May a request go to the backend now? In half-open, True for one probe at a time.

        A True must be followed by exactly one of `succeeded`, `failed` or `released`."""
        if self._cool_until is not None and self.cooling():
            return False
        if not self.settings.enabled or self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self._clock() - self.opened_at < self.open_for:
                return False
            self._move(HALF_OPEN, f"{self.open_for:g}s passed: probing")
        if self._probing:
            return False
        self._probing = True
        return True

    def available(self) -> bool:
        """Whether `allow` would say yes now, without taking the probe: for a balancer choosing between backends."""
        if self._cool_until is not None and self.cooling():
            return False
        if not self.settings.enabled or self.state == CLOSED:
            return True
        return self.current_state() == HALF_OPEN and not self._probing

    def succeeded(self) -> None:
        self._probing = False
        self.consecutive_failures = 0
        if self.state != CLOSED:
            self._closed_at = self._clock()
            self._move(CLOSED, "a probe succeeded")

    def failed(self, reason: str) -> None:
        """The backend failed a request (its fault, not the caller's)."""
        self._probing = False
        self.consecutive_failures += 1
        self.last_failure = reason[:200]
        if self.state == HALF_OPEN:
            self._open("the probe failed")
        elif self.state == CLOSED and self.settings.enabled and self.consecutive_failures >= self.settings.failures:
            self._open(f"{self.consecutive_failures} failures in a row")

    def released(self) -> None:
        """The request ended without saying anything about the backend (a caller's 4xx, a cancellation)."""
        self._probing = False

    def record(self, error: GatewayError) -> None:
        if counts_against_backend(error):
            self.failed(error.message)
        else:
            self.released()

    def cool_down(self, seconds: float) -> None:
        """The provider asked for `seconds` of rest (a Retry-After longer than a retry waits): none goes to it
        until then, so the request moves along its chain at once rather than retry inside that window."""
        self._cool_until = self._clock() + seconds
        log.warning("breaker_cooling backend=%s seconds=%g reason=%s", self.backend, seconds, self.last_failure)

    def cooling(self) -> float:
        """Seconds of the provider's Retry-After still to wait (0 when none)."""
        if self._cool_until is None:
            return 0.0
        left = self._cool_until - self._clock()
        if left <= 0:
            self._cool_until = None
            return 0.0
        return left

    def retry_after(self) -> float:
        """Seconds until a request may pass again (0 when it may now)."""
        if cooling := self.cooling():
            return max(cooling, self._breaker_retry_after())
        return self._breaker_retry_after()

    def _breaker_retry_after(self) -> float:
        if self.state == OPEN:
            return max(0.0, self.open_for - (self._clock() - self.opened_at))
        if self.state == HALF_OPEN and self._probing:
            return self.open_for
        return 0.0

    def snapshot(self) -> dict:
        return {
            "state": self.current_state(),
            "consecutive_failures": self.consecutive_failures,
            "times_opened": self.times_opened,
            "last_failure": self.last_failure,
            "retry_after_seconds": round(self.retry_after(), 3),
            "failures": self.settings.failures,
            "open_seconds": self.open_for,
            "cooling_down_seconds": round(self.cooling(), 3),
        }

    def current_state(self) -> str:
        """The state a request would see now: an open breaker whose time is up reads as half-open."""
        if self.state == OPEN and self._clock() - self.opened_at >= self.open_for:
            return HALF_OPEN
        return self.state

    def _open(self, why: str) -> None:
        self.opened_at = self._clock()
        self.times_opened += 1
        base, longest = self.settings.open_seconds, self.settings.max_open_seconds
        if longest is not None:
            if self._closed_at is not None:  # one opening forgiven for each open_seconds it stayed closed
                self._openings = max(0, self._openings - int((self.opened_at - self._closed_at) // base))
                self._closed_at = None
            self._openings = min(self._openings + 1, math.ceil(longest / base))  # counted no further than the cap
            self.open_for = min(base * self._openings, max(base, longest))
            why = f"{why}, for {self.open_for:g}s"
        self._move(OPEN, why)

    def _move(self, state: str, why: str) -> None:
        before, self.state = self.state, state
        level = logging.INFO if state == CLOSED or (before == OPEN and state == HALF_OPEN) else logging.WARNING
        log.log(
            level,
            "breaker_changed backend=%s from=%s to=%s reason=%s last_failure=%s",
            self.backend,
            before,
            state,
            why,
            self.last_failure,
        )


def breaker_problems(backends: dict) -> str | None:
    """One line for /readyz naming each backend (a pool's member as pool/member) whose breaker is not
    closed (None when all are)."""
    problems = []
    breakers = {name: b for backend in backends.values() for name, b in backend.breakers().items()}
    for name, breaker in sorted(breakers.items()):
        state = breaker.current_state()
        if state != CLOSED:
            state = state.replace("_", "-")
            problems.append(f"backend '{name}' circuit {state} (last failure: {breaker.last_failure})")
        elif cooling := breaker.cooling():
            problems.append(f"backend '{name}' cooling down for {cooling:.0f}s more, as it asked (Retry-After)")
    return "; ".join(problems) or None
