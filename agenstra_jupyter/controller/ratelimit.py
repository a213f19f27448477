"""A token bucket: `rate` actions per `per` seconds, bursts up to `rate`."""

from __future__ import annotations

import time


class RateLimiter:
    def __init__(self, rate: int, per: float) -> None:
        self.rate = rate
        self.per = per
        self._tokens = float(rate)
        self._last = time.monotonic()

    def allow(self) -> bool:
        if self.rate <= 0:
            return True  # 0 disables the limit
        now = time.monotonic()
        self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate / self.per)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
