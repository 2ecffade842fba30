"""The circuit breaker's state machine, on a clock the test moves (no sleeping, no timing)."""

import logging

import pytest

from gateway.backends.base import BackendSettings
from gateway.breaker import CLOSED, HALF_OPEN, OPEN, BreakerSettings, CircuitBreaker, CircuitOpen
from gateway.config import ConfigError, parse_config
from gateway.errors import InvalidRequest, UpstreamError, UpstreamTimeout


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def breaker(clock, failures=3, open_seconds=10.0, **kw) -> CircuitBreaker:
    return CircuitBreaker("b", BreakerSettings(failures=failures, open_seconds=open_seconds, **kw), clock=clock)


def fail(b: CircuitBreaker, error=None) -> None:
    assert b.allow()
    b.record(error or UpstreamError("backend 'b' answered 503", upstream_status=503, retryable=True))


def test_opens_after_consecutive_backend_failures_only(clock):
    b = breaker(clock)
    fail(b), fail(b)
    assert b.allow()
    b.succeeded()  # a success in between resets the count
    fail(b), fail(b)
    assert b.state == CLOSED
    fail(b, UpstreamTimeout("backend 'b' did not answer"))
    assert b.state == OPEN and not b.allow()
    assert b.retry_after() == 10.0


def test_callers_mistakes_and_cancellations_do_not_count(clock):
    b = breaker(clock, failures=1)
    for _ in range(5):
        fail(b, InvalidRequest("bad param"))
        fail(b, UpstreamError("backend 'b' answered 400: bad", status=400, upstream_status=400))
        assert b.allow()
        b.released()
    assert b.state == CLOSED and b.consecutive_failures == 0


def test_a_429_counts_against_the_backend(clock):
    b = breaker(clock, failures=2)
    fail(b, UpstreamError("rate limited", status=429, upstream_status=429, retryable=True))
    fail(b, UpstreamError("rate limited", status=429, upstream_status=429, retryable=True))
    assert b.state == OPEN


def test_half_open_admits_one_probe_success_closes(clock):
    b = breaker(clock, failures=1)
    fail(b)
    clock.now += 9.9
    assert not b.allow() and b.current_state() == OPEN
    clock.now += 0.1
    assert b.current_state() == HALF_OPEN
    assert b.allow(), "the probe"
    assert not b.allow() and not b.allow(), "no second request while the probe runs"
    b.succeeded()
    assert b.state == CLOSED and b.allow() and b.allow()


def test_a_failed_probe_reopens_for_another_period(clock):
    b = breaker(clock, failures=1)
    fail(b)
    clock.now += 10
    fail(b)
    assert b.state == OPEN and b.times_opened == 2 and not b.allow()
    clock.now += 10
    assert b.allow()


def test_a_released_probe_lets_the_next_one_through(clock):
    b = breaker(clock, failures=1)
    fail(b)
    clock.now += 10
    assert b.allow()
    b.released()  # the caller went away: nothing learnt
    assert b.state == HALF_OPEN and b.allow()


def test_a_disabled_breaker_never_opens(clock):
    b = breaker(clock, failures=1, enabled=False)
    for _ in range(10):
        fail(b)
    assert b.state == CLOSED and b.allow()


def test_every_transition_is_logged(clock, caplog):
    caplog.set_level(logging.INFO, logger="llmgate.breaker")
    b = breaker(clock, failures=1)
    fail(b)
    clock.now += 10
    assert b.allow()
    b.succeeded()
    assert [r.getMessage().split(" reason=")[0] for r in caplog.records] == [
        "breaker_changed backend=b from=closed to=open",
        "breaker_changed backend=b from=open to=half_open",
        "breaker_changed backend=b from=half_open to=closed",
    ]


def test_circuit_open_is_a_503_with_retry_after():
    err = CircuitOpen("all open", 2.2)
    assert err.status == 503 and err.headers == {"Retry-After": "3"}
    assert err.body()["error"] == {"message": "all open", "type": "server_error", "param": None, "code": "circuit_open"}


def test_breaker_settings_are_part_of_a_backend_and_validated():
    assert BackendSettings(kind="openai", model="m").breaker == BreakerSettings(failures=5, open_seconds=30)
    from gateway.app import create_app

    config = parse_config(
        {
            "backends": {"x": {"kind": "openai", "model": "m", "api_key": "none", "breaker": {"failures": 0}}},
            "routes": {"r": {"baseline": "x"}},
        }
    )
    with pytest.raises(ConfigError) as refused:
        create_app(config)
    assert "backends.x.breaker.failures" in str(refused.value)
