"""Token buckets shared by processes (the daemon and its reader processes): one
bucket per caller whichever process takes from it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agentd.api.shared_ratelimit import PROBES, SLOTS, SharedRateLimiter, _key_hash
from agentd.errors import RateLimitedError

BURST = 50


TAKE_ALL = """
import sys
from pathlib import Path
from agentd.api.shared_ratelimit import SharedRateLimiter
from agentd.errors import RateLimitedError
# A slow rate: nothing refills during the test.
limiter = SharedRateLimiter(Path(sys.argv[1]), rate=0.001, burst=int(sys.argv[2]))
granted = 0
for _ in range(int(sys.argv[3])):
    try:
        limiter.take("tcp:kube")
        granted += 1
    except RateLimitedError:
        pass
print(granted)
"""


def test_processes_share_one_bucket_per_caller(tmp_path):
    path = tmp_path / "buckets"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", TAKE_ALL, str(path), str(BURST), "40"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for _ in range(3)
    ]
    granted = [int(w.communicate(timeout=60)[0]) for w in workers]
    # 120 attempts from three processes, one bucket of 50: exactly 50 go through
    # (a bucket per process would have let all 120 through).
    assert sum(granted) == BURST
    limiter = SharedRateLimiter(path, rate=0.001, burst=BURST)
    with pytest.raises(RateLimitedError):
        limiter.take("tcp:kube")
    limiter.take("tcp:sched2")  # another caller has a bucket of its own


def test_refill_and_retry_delay(tmp_path):
    now = [100.0]
    limiter = SharedRateLimiter(tmp_path / "b", rate=2.0, burst=2, clock=lambda: now[0])
    limiter.take("k")
    limiter.take("k")
    with pytest.raises(RateLimitedError) as refused:
        limiter.take("k")
    assert refused.value.retry_after_seconds == pytest.approx(0.5)
    now[0] += 0.5
    limiter.take("k")


def test_unlimited_takes_nothing(tmp_path):
    limiter = SharedRateLimiter(tmp_path / "b", rate=0, burst=1)
    for _ in range(100):
        limiter.take("k")


def test_a_full_probe_run_gives_the_quietest_callers_slot_to_a_new_one(tmp_path, monkeypatch):
    now = [0.0]
    limiter = SharedRateLimiter(tmp_path / "b", rate=1.0, burst=1, clock=lambda: now[0])
    # PROBES + 1 callers whose hashes all start at the same slot.
    keys = [f"caller{n}" for n in range(PROBES + 1)]
    monkeypatch.setattr(
        "agentd.api.shared_ratelimit._key_hash", lambda key: 7 + keys.index(key) * SLOTS
    )
    for key in keys[:PROBES]:
        limiter.take(key)  # each empties its bucket
    now[0] += 0.5  # half a token back for everyone
    limiter.take(keys[PROBES])  # the run is full: it takes a slot over, with a full bucket
    # The displaced one is the first of the equally full; the others keep their buckets.
    for key in keys[1:PROBES]:
        with pytest.raises(RateLimitedError):
            limiter.take(key)
    with pytest.raises(RateLimitedError):
        limiter.take(keys[PROBES])  # the newcomer's slot is its own now


def test_key_hash_is_never_the_free_marker():
    assert all(_key_hash(f"k{n}") != 0 for n in range(1000))
