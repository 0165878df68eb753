"""A workload for the pressure tests and bench/isolation.py, run as a tool call.

    python pressure_workload.py cpu PROGRESS
        a busy loop; PROGRESS holds the number of work units done so far
    python pressure_workload.py mem PROGRESS MB [STEP_MB]
        grows its resident memory by STEP_MB (default 20) every 0.1 s up to MB, then
        holds it, touching it; PROGRESS counts loops (0 while frozen, as for cpu)

PROGRESS is rewritten (atomically: write then rename) about every 50 ms, so a reader
measures the work rate, and a frozen or throttled workload is visible as a rate of 0
or a low one. Runs until killed.
"""

from __future__ import annotations

import os
import sys
import time


def publish(path: str, count: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(str(count))
    os.replace(tmp, path)


def cpu(progress: str) -> None:
    count = 0
    last = 0.0
    while True:
        sum(range(2000))  # one work unit: ~20-50 us of pure CPU
        count += 1
        now = time.monotonic()
        if now - last >= 0.05:
            publish(progress, count)
            last = now


def mem(progress: str, mb: int, step_mb: int) -> None:
    chunks: list[bytes] = []
    count = 0
    while True:
        if len(chunks) * step_mb < mb:
            chunks.append(b"x" * (step_mb << 20))  # written, so resident (not calloc'ed)
        count += 1
        publish(progress, count)
        time.sleep(0.1)


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "cpu":
        cpu(path)
    else:
        mem(path, int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 20)
