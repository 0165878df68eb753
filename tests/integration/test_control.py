"""Throttle, freeze, resume and evict on real cgroups (v1 here), through Control.

A real Manager over a real backend under a unique root, real launcher processes
running busy loops; the effects are read back from cgroupfs and from the processes'
CPU time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from agentd.control import Control, Target
from agentd.errors import NotFoundError, PermissionDeniedError, TooSoonError
from agentd.events import Event
from agentd.manager import Caller, Manager
from agentd.model import Intent, Resources
from agentd.sdk.launcher import spawn

pytestmark = pytest.mark.root

ROOT = Caller(uid=0, gid=0, pid=os.getpid())
GiB = 1 << 30
BUSY = [sys.executable, "-c", "while True: pass"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def manager(real_manager: Manager) -> Manager:
    return real_manager


def start_busy(mgr: Manager, session_id: str) -> tuple[str, subprocess.Popen[bytes]]:
    launch = spawn(BUSY, None, None, subprocess.DEVNULL, subprocess.DEVNULL, None, False)
    tool_call = mgr.begin_tool_call(ROOT, session_id, Intent(label="busy"), launch.pid)
    launch.release()
    return tool_call.id, launch.process


def cpu_seconds_over(pid: int, seconds: float) -> float:
    proc = psutil.Process(pid)
    before = sum(proc.cpu_times()[:2])
    time.sleep(seconds)
    return sum(proc.cpu_times()[:2]) - before


def nr_throttled(mgr: Manager, rel: str) -> int:
    stat = dict(line.split() for line in read(mgr, "cpu", rel, "cpu.stat").splitlines())
    return int(stat["nr_throttled"])


def read(mgr: Manager, controller: str, rel: str, name: str) -> str:
    path = Path(mgr.backend.path_in(controller, rel)) / name  # type: ignore[attr-defined]
    return path.read_text().strip()


def test_throttle_then_resume_session_cpu(manager: Manager) -> None:
    session = manager.create_session(ROOT, "thr", Resources(cpu=1.0), None)
    events = manager.bus.subscribe(lambda e: e.session_id == session.id)
    _, process = start_busy(manager, session.id)
    clock = FakeClock()
    control = Control(manager, min_interval_seconds=2.0, clock=clock)
    try:
        result = control.throttle(ROOT, Target(session.id), cpu_max=0.1)
        assert result.changed and result.tool_calls_affected == 1
        assert read(manager, "cpu", session.cgroup_rel, "cpu.cfs_quota_us") == "10000"
        assert control.is_throttled(Target(session.id))
        # Upper bounds and the kernel's own throttling count hold on a loaded host too.
        throttled_before = nr_throttled(manager, session.cgroup_rel)
        assert cpu_seconds_over(process.pid, 1.0) < 0.25
        assert nr_throttled(manager, session.cgroup_rel) > throttled_before

        # Changing the same knob again at once is refused with a retry delay.
        with pytest.raises(TooSoonError) as refused:
            control.throttle(ROOT, Target(session.id), cpu_max=0.2)
        assert 0 < refused.value.retry_after_seconds <= 2.0
        # The same value is no change and is not refused.
        assert not control.throttle(ROOT, Target(session.id), cpu_max=0.1).changed

        clock.now += 2.5
        assert control.resume(ROOT, Target(session.id)).changed
        # Back to the session's budget: 1 core.
        assert read(manager, "cpu", session.cgroup_rel, "cpu.cfs_quota_us") == "100000"
        assert cpu_seconds_over(process.pid, 0.5) > 0.005
        kinds = [_next(events).kind for _ in range(3)]
        assert kinds == ["tool_call_begun", "throttled", "resumed"]
    finally:
        events.close()
        process.kill()


def test_freeze_stops_work_and_resume_restarts_it(manager: Manager) -> None:
    session = manager.create_session(ROOT, "frz", Resources(), None)
    tool_call_id, process = start_busy(manager, session.id)
    control = Control(manager, min_interval_seconds=0.0)
    try:
        target = Target(session.id, tool_call_id)
        assert control.freeze(ROOT, target).changed
        rel = f"sessions/{session.id}/{tool_call_id}"
        assert read(manager, "freezer", rel, "freezer.state") == "FROZEN"
        assert cpu_seconds_over(process.pid, 0.5) < 0.02
        assert not control.freeze(ROOT, target).changed  # already frozen

        # A new Control (as after a daemon restart) finds the frozen group and thaws it.
        fresh = Control(manager, min_interval_seconds=0.0)
        assert fresh.is_frozen(target)
        assert fresh.resume(ROOT, target).changed
        assert read(manager, "freezer", rel, "freezer.state") == "THAWED"
        # Any progress at all: a busy loop gets little of a loaded shared host.
        assert cpu_seconds_over(process.pid, 1.0) > 0.005
        assert not fresh.resume(ROOT, target).changed
    finally:
        process.kill()


def test_a_schedulers_freeze_survives_the_policys_resume(manager: Manager) -> None:
    """One hold per actor: the pressure policy throttles and freezes, a scheduler
    freezes too; the policy's resume lifts its throttle but the group stays frozen (no
    CPU) until the scheduler resumes. A new Control (a daemon restart) knows the holds."""
    session = manager.create_session(ROOT, "two", Resources(cpu=1.0, memory_max=GiB), None)
    _, process = start_busy(manager, session.id)
    control = Control(manager, min_interval_seconds=0.0)
    target = Target(session.id)
    try:
        control.throttle(ROOT, target, cpu_max=0.1, memory_high=GiB // 2, by="pressure")
        control.freeze(ROOT, target, by="pressure")
        control.freeze(ROOT, target, by="scheduler-a")
        assert control.resume(ROOT, target, by="pressure").changed
        assert read(manager, "freezer", session.cgroup_rel, "freezer.state") == "FROZEN"
        assert read(manager, "cpu", session.cgroup_rel, "cpu.cfs_quota_us") == "100000"
        assert read(manager, "memory", session.cgroup_rel, "memory.soft_limit_in_bytes") != str(
            GiB // 2
        )
        assert cpu_seconds_over(process.pid, 0.5) < 0.02
        fresh = Control(manager, min_interval_seconds=0.0)
        assert set(fresh.holds(target)) == {"scheduler-a"}
        assert fresh.resume(ROOT, target, by="scheduler-a").changed
        assert read(manager, "freezer", session.cgroup_rel, "freezer.state") == "THAWED"
        assert cpu_seconds_over(process.pid, 1.0) > 0.005
    finally:
        process.kill()


def test_throttle_never_raises_above_the_normal_limit(manager: Manager) -> None:
    session = manager.create_session(ROOT, "cap", Resources(cpu=0.5), None)
    control = Control(manager, min_interval_seconds=0.0)
    control.throttle(ROOT, Target(session.id), cpu_max=2.0, memory_high=8 * GiB)
    assert read(manager, "cpu", session.cgroup_rel, "cpu.cfs_quota_us") == "50000"
    assert read(manager, "memory", session.cgroup_rel, "memory.soft_limit_in_bytes") == str(GiB)


def test_only_the_owner_or_root_controls_a_session(manager: Manager) -> None:
    session = manager.create_session(ROOT, "own", Resources(), None)
    control = Control(manager)
    stranger = Caller(uid=65534, gid=65534, pid=1)
    with pytest.raises(PermissionDeniedError):
        control.freeze(stranger, Target(session.id))
    with pytest.raises(NotFoundError):
        control.freeze(ROOT, Target("no-such-session"))
    with pytest.raises(NotFoundError):
        control.freeze(ROOT, Target(session.id, "tc-000000000000"))
    assert not control.is_frozen(Target(session.id))


def test_evict_tool_call_and_session(manager: Manager) -> None:
    session = manager.create_session(ROOT, "evi", Resources(), None)
    first_id, first = start_busy(manager, session.id)
    _, second = start_busy(manager, session.id)
    control = Control(manager)
    try:
        control.evict(ROOT, Target(session.id, first_id), reason="test")
        assert first.wait(timeout=10) == -9
        assert second.poll() is None  # its neighbour keeps running

        result = control.evict(ROOT, Target(session.id), reason="test")
        assert result.tool_calls_affected == 2  # the killed one has not been ended yet
        assert second.wait(timeout=10) == -9
        assert not manager.backend.exists(session.cgroup_rel)
        with pytest.raises(NotFoundError):
            manager.get_session(ROOT, session.id)
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.kill()


def _next(subscription: object) -> Event:
    event, _ = subscription.get(timeout=5)  # type: ignore[attr-defined]
    return event
