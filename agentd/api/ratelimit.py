"""Per-principal request rates: a token bucket each.

A bucket holds up to `burst` tokens and refills at `rate` per second; a request
takes one. An empty bucket refuses with the time until the next token, which the
API sends as RetryInfo. Buckets of callers that went quiet are dropped once full
again, so the table stays as small as the set of active callers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from agentd.errors import RateLimitedError

#: Past this many callers, full buckets (idle callers) are forgotten.
PRUNE_ABOVE = 4096


class RateLimiter:
    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)

    def take(self, key: str) -> None:
        """Take a token for `key`, or raise RateLimitedError. rate 0 = unlimited."""
        if self.rate <= 0:
            return
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise RateLimitedError(
                    f"{key} is over its rate of {self.rate:g} requests/s "
                    f"(burst {self.burst:g}); retry in {wait:.3f} s",
                    retry_after_seconds=wait,
                )
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > PRUNE_ABOVE:
                self._prune(now)

    def _prune(self, now: float) -> None:
        idle = [
            k
            for k, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self.rate >= self.burst
        ]
        for key in idle:
            del self._buckets[key]
