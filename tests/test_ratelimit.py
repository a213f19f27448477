"""RateLimiter alone, on a clock the test moves (no sleeping)."""

from __future__ import annotations

import pytest

from agenstra_jupyter.controller import ratelimit
from agenstra_jupyter.controller.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(ratelimit.time, "monotonic", clock)
    return clock


def allowed(limiter: RateLimiter, tries: int) -> int:
    return sum(limiter.allow() for _ in range(tries))


def test_a_burst_up_to_the_rate_then_refusals(clock):
    limiter = RateLimiter(5, 60.0)
    assert [limiter.allow() for _ in range(7)] == [True] * 5 + [False] * 2


def test_tokens_come_back_at_rate_per_period(clock):
    limiter = RateLimiter(4, 32.0)  # one every 8 s (binary fractions: exact arithmetic)
    assert allowed(limiter, 4) == 4
    clock.now += 7.75
    assert not limiter.allow()
    clock.now += 0.25
    assert limiter.allow() and not limiter.allow()
    clock.now += 20  # two and a half tokens
    assert allowed(limiter, 5) == 2
    clock.now += 4  # the half left over plus half of one
    assert allowed(limiter, 5) == 1


def test_a_long_pause_refills_to_the_rate_never_beyond(clock):
    limiter = RateLimiter(3, 1.0)
    assert allowed(limiter, 3) == 3
    clock.now += 3600
    assert allowed(limiter, 10) == 3


def test_refused_calls_do_not_cost_tokens(clock):
    limiter = RateLimiter(2, 8.0)  # one every 4 s (binary fractions: exact arithmetic)
    assert allowed(limiter, 2) == 2
    for _ in range(24):  # a client hammering while limited, for 3 s
        clock.now += 0.125
        assert not limiter.allow()
    clock.now += 1.0  # 4 s since the bucket emptied: exactly one token
    assert limiter.allow() and not limiter.allow()


def test_zero_or_negative_rate_means_no_limit(clock):
    for rate in (0, -1):
        assert allowed(RateLimiter(rate, 60.0), 10_000) == 10_000


def test_two_limiters_do_not_share_tokens(clock):
    first, second = RateLimiter(1, 60.0), RateLimiter(1, 60.0)
    assert first.allow() and not first.allow()
    assert second.allow()  # one socket's flood never limits another's
