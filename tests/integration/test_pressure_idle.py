"""The pressure loop while idle (docs/pressure.md, "Idle"), for real: a Manager over
real v1 groups, the kernel's memory threshold (cgroup.event_control) and PSI triggers.
Idle, the loop does not sample every interval; a process whose memory crosses the
usage threshold wakes it at once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentd.cgroups.base import GroupLimits
from agentd.control import Control
from agentd.enforcement.controller import PressureController
from agentd.enforcement.policy import PressurePolicy, Thresholds
from agentd.enforcement.pressure import PressureMonitor
from agentd.enforcement.priorities import PriorityTable
from agentd.enforcement.wakeups import Wakeups
from agentd.manager import Manager

pytestmark = pytest.mark.root

MiB = 1 << 20
INTERVAL = 0.25

# Allocates 96 MiB (pages written) when told, then waits to be killed.
GROW = "import sys\nsys.stdin.readline()\nb = b'\\1' * (96 << 20)\nprint('held', flush=True)\n"
GROW += "sys.stdin.readline()\n"


def controller(manager: Manager, allocatable: int) -> PressureController:
    return PressureController(
        manager,
        Control(manager, min_interval_seconds=0.0),
        PressureMonitor(manager.backend, allocatable, manager.bus),
        PressurePolicy(dwell_seconds=1.0, min_rewrite_interval_seconds=1.0),
        Thresholds(usage_enter=0.9, usage_exit=0.75),
        PriorityTable.default(),
        interval_seconds=INTERVAL,
    )


def sessions_usage(manager: Manager) -> int:
    return manager.backend.usage("sessions").memory_current


def test_idle_loop_sleeps_and_a_usage_crossing_wakes_it_at_once(real_manager: Manager) -> None:
    manager = real_manager
    # The allocatable sits so that 96 MiB more crosses usage_exit (the threshold) and
    # usage_enter: 0.75 * A = now + 48 MiB, so A = (now + 48 MiB) / 0.75.
    allocatable = int((sessions_usage(manager) + 48 * MiB) / 0.75)
    c = controller(manager, allocatable)
    c.start()
    process = None
    try:
        assert c.wakeups is not None and c.wakeups.usage_threshold
        deadline = time.monotonic() + 5
        while not c.idle and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.idle, "nothing runs: every signal is LOW and notified"
        time.sleep(2 * INTERVAL)  # the tick after the last wake-up
        before = c.ticks
        time.sleep(6 * INTERVAL)
        assert c.ticks - before <= 1, "idle: no sample every interval"

        manager.backend.create("sessions/grow", GroupLimits(memory_max=256 * MiB))
        process = subprocess.Popen(
            [sys.executable, "-c", GROW], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        manager.backend.move("sessions/grow", process.pid)
        assert process.stdin is not None and process.stdout is not None
        before = c.ticks
        started = time.monotonic()
        process.stdin.write("go\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "held"
        while c.ticks == before and time.monotonic() - started < 10:
            time.sleep(0.01)
        woke_after = time.monotonic() - started
        print(f"\nwoken {woke_after * 1000:.0f} ms after the allocation began")
        # Without the threshold the loop would sleep QUIET_WAKE_SECONDS (5 s).
        assert c.ticks > before and woke_after < 1.0
        deadline = time.monotonic() + 3
        while c.idle and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not c.idle, "over usage_exit: sampled every interval again"
    finally:
        if process is not None:
            process.kill()
            process.wait()
        c.stop()
        assert c._thread is not None and not c._thread.is_alive()


def test_guard_action_wakes_an_idle_loop_and_is_counted(real_manager: Manager) -> None:
    from agentd.events import Event

    manager = real_manager
    c = controller(manager, 0)  # no allocatable: the usage signal is off
    c.start()
    try:
        deadline = time.monotonic() + 5
        while not c.idle and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.idle
        before = c.ticks
        manager.bus.publish(Event("s", "tc", 0, "guard_action", {"action": "stopped"}))
        deadline = time.monotonic() + 2
        while c.idle and time.monotonic() < deadline:
            time.sleep(0.01)
        # Counted (HIGH: not idle) within the interval after the wake-up.
        assert c.ticks > before and not c.idle
    finally:
        c.stop()


def test_wakeups_wake_and_timeout() -> None:
    wakeups = Wakeups()
    try:
        started = time.monotonic()
        assert wakeups.wait(0.1) is False
        assert time.monotonic() - started >= 0.09
        wakeups.wake()
        assert wakeups.wait(5) is True
        assert wakeups.wait(0) is False  # read: re-armed
        assert wakeups.add_psi("/proc/pressure/memory", 0.0) is False  # no stall share
        if Path("/proc/pressure/memory").exists():
            assert wakeups.add_psi("/proc/pressure/memory", 0.05)
            assert "/proc/pressure/memory" in wakeups.psi
        assert wakeups.add_memory_threshold_v1("/nonexistent", 1) is False
        assert not wakeups.usage_threshold
    finally:
        wakeups.close()
