"""The host-wide cost of holding executors' children (docs/tracking.md).

    .venv/bin/python bench/executor_hold.py [--syscalls 2000000] [--runs 5]

While an executor is registered, bpf/tracker.c's hold_at_first_syscall runs on every
system call of the host (raw_syscalls:sys_enter, one hash lookup). This measures a
system-call-bound program (dd with 1-byte blocks: two syscalls per block) with the
tracker loaded but nothing held (baseline) and with an executor registered (hold
attached), alternating, several runs; it prints the median time of each, the ratio
and the spread, and the load average. Root and bcc are needed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from agentd.tracking.ebpf import EbpfSource


def dd_seconds(blocks: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={blocks}"],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--syscalls", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    blocks = args.syscalls // 2

    source = EbpfSource(usage=False)
    source.start(lambda _event: None)
    # A stand-in executor: a process of ours that forks nothing while we measure.
    executor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    base: list[float] = []
    held: list[float] = []
    try:
        dd_seconds(blocks // 10)  # warm the page cache and the binary
        for _ in range(args.runs):
            base.append(dd_seconds(blocks))
            source.watch(executor.pid, key=1, hold_children=True)
            assert source.holding
            held.append(dd_seconds(blocks))
            source.unwatch(1)
            assert not source.holding
    finally:
        executor.kill()
        executor.wait()
        source.stop()

    def per_call_ns(samples: list[float]) -> float:
        return statistics.median(samples) / args.syscalls * 1e9

    ratios = [h / b for h, b in zip(held, base, strict=True)]
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    print(
        f"baseline (tracker loaded, nothing held): median {statistics.median(base):.3f} s "
        f"({per_call_ns(base):.0f} ns per syscall), runs {', '.join(f'{x:.3f}' for x in base)}"
    )
    print(
        f"executor registered (hold attached):     median {statistics.median(held):.3f} s "
        f"({per_call_ns(held):.0f} ns per syscall), runs {', '.join(f'{x:.3f}' for x in held)}"
    )
    print(
        f"ratio held/baseline: median {statistics.median(ratios):.3f}, "
        f"min {min(ratios):.3f}, max {max(ratios):.3f}; extra per syscall "
        f"{per_call_ns(held) - per_call_ns(base):+.0f} ns"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
