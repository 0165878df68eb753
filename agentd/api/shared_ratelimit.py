"""Per-caller token buckets shared by the daemon and its reader processes (readers.py).

With reader processes a caller's calls land on several processes (its connections
are spread over them, and what a reader does not answer goes to the daemon): a
bucket each would let a caller through at up to (readers + 1) times its rate. So the
buckets live in one small file that every process maps, one slot per caller, each
updated under a POSIX record lock on its slots (fcntl; a thread lock orders the
threads of one process, which such locks do not). CLOCK_MONOTONIC is the same in
every process. ~10 us a call.

Slots: the key's 64-bit hash, then linear probing over PROBES slots; when all of
them hold other callers, the one whose bucket is fullest (the quietest caller) is
taken over, which only ever gives that caller a full bucket again.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agentd.errors import RateLimitedError

SLOTS = 4096
PROBES = 8
_SLOT = struct.Struct("<Qdd")  # key hash (0 = free), tokens, last refill (monotonic)


def _key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") or 1


class SharedRateLimiter:
    """RateLimiter's behaviour (rate 0 = unlimited, RetryInfo delay), across processes."""

    def __init__(
        self, path: Path, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.clock = clock
        self._lock = threading.Lock()
        size = (SLOTS + PROBES) * _SLOT.size
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < size:
            os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size)

    def take(self, key: str) -> None:
        """Take a token for `key`, or raise RateLimitedError."""
        if self.rate <= 0:
            return
        wanted = _key_hash(key)
        first = wanted % SLOTS
        span = (first * _SLOT.size, PROBES * _SLOT.size)
        with self._lock:
            fcntl.lockf(self._fd, fcntl.LOCK_EX, span[1], span[0])
            try:
                now = self.clock()
                offset, tokens, last = self._find(first, wanted, now)
                tokens = min(self.burst, tokens + max(now - last, 0.0) * self.rate)
                if tokens < 1.0:
                    _SLOT.pack_into(self._map, offset, wanted, tokens, now)
                    wait = (1.0 - tokens) / self.rate
                    raise RateLimitedError(
                        f"{key} is over its rate of {self.rate:g} requests/s "
                        f"(burst {self.burst:g}); retry in {wait:.3f} s",
                        retry_after_seconds=wait,
                    )
                _SLOT.pack_into(self._map, offset, wanted, tokens - 1.0, now)
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, span[1], span[0])

    def _find(self, first: int, wanted: int, now: float) -> tuple[int, float, float]:
        """(offset, tokens, last refill) of `wanted`'s slot: its own, a free one (a full
        bucket), or the fullest other caller's (taken over: a full bucket)."""
        fullest, fullest_tokens = -1, -1.0
        for slot in range(first, first + PROBES):
            offset = slot * _SLOT.size
            key, tokens, last = _SLOT.unpack_from(self._map, offset)
            if key == wanted:
                return offset, tokens, last
            if key == 0:
                return offset, self.burst, now
            refilled = tokens + max(now - last, 0.0) * self.rate
            if refilled > fullest_tokens:
                fullest, fullest_tokens = offset, refilled
        return fullest, self.burst, now

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
