#!/usr/bin/env python3
"""The pressure loop idle and reacting: its thread's CPU while nothing happens, and the
time from a memory crossing to the loop seeing HIGH, with the idle sleep (A: the kernel's
notifications, docs/pressure.md "Idle") and without it (B: a sample every interval, as
before), in the same run, alternating.

A Manager over real v1 groups under a root of its own; the controller as the daemon
builds it ([pressure] defaults: interval 0.5 s, usage_enter 0.9, usage_exit 0.75), with an
allocatable set so that a child allocating `--mib` crosses usage_enter. Per round and mode:
CPU ms per second of the loop's thread over `--seconds` idle (schedstat), then a child
in a group of the sessions tree allocates (pages written) and the reaction is the time
from its allocation's return (its "held" line read) to the loop's first HIGH
(negative: seen while it was still allocating). B is the loop as it was: the memory
PSI trigger at 100 ms of 1 s and a sample every interval.

    sudo .venv/bin/python bench/pressure_idle.py [--rounds 5] [--seconds 3] [--mib 96]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from agentd.cgroups.base import CgroupError, GroupLimits
from agentd.cgroups.detect import choose_backend, detect_layout
from agentd.control import Control
from agentd.enforcement.controller import PressureController
from agentd.enforcement.policy import Level, PressurePolicy, Thresholds
from agentd.enforcement.pressure import PressureMonitor
from agentd.enforcement.priorities import PriorityTable
from agentd.enforcement.wakeups import Wakeups
from agentd.manager import Manager, NodeLimits
from agentd.model import Resources
from agentd.store import Store

MiB = 1 << 20
GROW = "import sys\nsys.stdin.readline()\nb = b'\\1' * ({mib} << 20)\nprint('held', flush=True)\n"
GROW += "sys.stdin.readline()\n"


def thread_ms(tid: int) -> float:
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e6


def legacy_wakeups() -> Wakeups:
    wakeups = Wakeups()
    wakeups.add_psi("/proc/pressure/memory", 0.1)
    return wakeups


def one(manager: Manager, mode: str, args: argparse.Namespace, n: int) -> tuple[float, float]:
    usage = manager.backend.usage("sessions").memory_current
    # usage_enter (0.9) of the allocatable is `mib` / 2 above what is in use now.
    allocatable = int((usage + args.mib * MiB / 2) / 0.9)
    c = PressureController(
        manager,
        Control(manager, min_interval_seconds=0.0),
        PressureMonitor(manager.backend, allocatable, manager.bus),
        PressurePolicy(),
        Thresholds(),
        PriorityTable.default(),
    )
    if mode == "B":
        # As before the idle sleep: the memory PSI trigger (100 ms of 1 s) and the
        # interval, nothing else.
        c._notified = lambda sample: False  # type: ignore[method-assign]
        c._build_wakeups = legacy_wakeups  # type: ignore[method-assign]
    c.start()
    rel = f"sessions/bench-{n}"
    process = None
    try:
        assert c._thread is not None and c._thread.native_id is not None
        time.sleep(1.0)
        tid = c._thread.native_id
        before, started = thread_ms(tid), time.monotonic()
        time.sleep(args.seconds)
        cpu = (thread_ms(tid) - before) / (time.monotonic() - started)
        manager.backend.create(rel, GroupLimits(memory_max=4 * args.mib * MiB))
        code = GROW.format(mib=args.mib)
        process = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        manager.backend.move(rel, process.pid)
        assert process.stdin is not None and process.stdout is not None
        held: list[float] = []
        reader = threading.Thread(
            target=lambda: held.append(time.monotonic()) if process.stdout.readline() else None  # type: ignore[union-attr]
        )
        reader.start()
        process.stdin.write("go\n")
        process.stdin.flush()
        while c.last_level is not Level.HIGH:  # polled from here: 1 ms resolution
            if process.poll() is not None:
                raise RuntimeError("the allocating child died")
            time.sleep(0.001)
        seen = time.monotonic()
        reader.join(30)
        if not held:
            raise RuntimeError("the allocating child never held its memory")
        return cpu, (seen - held[0]) * 1000
    finally:
        if process is not None:
            process.kill()
            process.wait()
        c.stop()
        with contextlib.suppress(CgroupError):
            manager.backend.remove(rel)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--mib", type=int, default=96)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("pressure_idle: needs root (real cgroups)", file=sys.stderr)
        return 2
    backend = choose_backend(detect_layout(), "v1", f"agentd-bench-{uuid.uuid4().hex[:8]}")
    backend.ensure_root()
    state = Path(tempfile.mkdtemp(prefix="agentd-pressure-idle-"))
    store = Store(state)
    node = NodeLimits(allocatable_memory=4 << 30, cpus=2.0, default_session=Resources())
    manager = Manager(backend, store, node)
    results: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
    loads = []
    try:
        for n in range(args.rounds):
            for mode in ("A", "B") if n % 2 == 0 else ("B", "A"):
                cpu, reaction = one(manager, mode, args, len(loads) * 2 + (mode == "B"))
                results[mode].append((cpu, reaction))
                loads.append(os.getloadavg()[0])
                print(f"round {n + 1} {mode}: loop CPU {cpu:6.3f} ms/s, crossing seen "
                      f"{reaction:+7.1f} ms after the allocation returned, load {loads[-1]:.2f}",
                      flush=True)  # fmt: skip
    finally:
        try:
            backend.kill("")
        finally:
            backend.remove("")
            store.close()
    print("\nA: idle sleep (kernel notifications); B: a sample every 0.5 s interval")
    for mode in ("A", "B"):
        cpus = [c for c, _ in results[mode]]
        reactions = [r for _, r in results[mode]]
        print(
            f"{mode}: loop CPU idle median {statistics.median(cpus):.3f} ms/s "
            f"({min(cpus):.3f}-{max(cpus):.3f}); reaction median "
            f"{statistics.median(reactions):+.0f} ms "
            f"({min(reactions):+.0f} to {max(reactions):+.0f})"
        )
    a = statistics.median(c for c, _ in results["A"])
    b = statistics.median(c for c, _ in results["B"])
    print(f"idle CPU A/B {a / b:.2f}; load {min(loads):.2f}-{max(loads):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
