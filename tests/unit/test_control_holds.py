"""Control keeps one hold per group and actor (agentd/control.py, docs/pressure.md):
a real Manager and Store over V2Backend on the fake cgroup2 tree of
test_cgroup_v2_fake.py (the kernel's rules, in memory). The real-cgroup counterpart
is tests/integration/test_control.py::test_a_schedulers_freeze_survives_the_policys_resume.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the fake cgroup2 tree of a sibling test
from test_cgroup_v2_fake import MOUNT, FakeCgroup2, backend

from agentd.control import Control, Hold, Target, strictest
from agentd.enforcement.controller import BY, PressureController
from agentd.enforcement.policy import PressurePolicy, Status, Thresholds
from agentd.enforcement.pressure import PressureMonitor
from agentd.enforcement.priorities import PriorityTable
from agentd.manager import Caller, Manager, NodeLimits
from agentd.model import Priority, Resources
from agentd.store import Store

ROOT = Caller(uid=0, gid=0, pid=os.getpid())
GiB = 1 << 30


@pytest.fixture
def parts(tmp_path: Path) -> tuple[FakeCgroup2, Manager]:
    fake = FakeCgroup2()
    node = NodeLimits(allocatable_memory=8 * GiB, cpus=2.0, default_session=Resources())
    return fake, Manager(backend(fake), Store(tmp_path / "state"), node)


def knob(fake: FakeCgroup2, session_id: str, name: str) -> str:
    return fake.files[f"{MOUNT}/agentd/sessions/{session_id}"][name].strip()


def test_strictest_takes_the_lowest_limits_and_any_freeze() -> None:
    assert strictest([]) == Hold()
    held = strictest([Hold(cpu=0.5), Hold(cpu=0.1, memory_high=3), Hold(frozen=True)])
    assert held == Hold(cpu=0.1, memory_high=3, frozen=True)


def test_a_schedulers_freeze_survives_the_policys_resume_and_back(parts) -> None:
    fake, manager = parts
    session = manager.create_session(ROOT, "s", Resources(memory_max=GiB, cpu=1.0), None)
    target = Target(session.id)
    control = Control(manager, min_interval_seconds=0.0)

    control.throttle(ROOT, target, cpu_max=0.1, memory_high=GiB // 2, by="pressure")
    control.freeze(ROOT, target, by="pressure")
    assert control.freeze(ROOT, target, by="scheduler").changed  # its own hold, new
    assert control.resume(ROOT, target, by="pressure").changed
    # The scheduler's freeze is still in force; the policy's throttle is lifted.
    assert knob(fake, session.id, "cgroup.freeze") == "1"
    assert knob(fake, session.id, "cpu.max") == "100000 100000"
    assert knob(fake, session.id, "memory.high") == "max"
    assert set(control.holds(target)) == {"scheduler"}
    assert control.resume(ROOT, target, by="scheduler").changed
    assert knob(fake, session.id, "cgroup.freeze") == "0"

    # And the other way round: the scheduler resumes, the policy's freeze stays.
    control.freeze(ROOT, target, by="scheduler")
    control.freeze(ROOT, target, by="pressure")
    control.resume(ROOT, target, by="scheduler")
    assert knob(fake, session.id, "cgroup.freeze") == "1"
    # A resume by an actor with no hold lifts nothing.
    assert not control.resume(ROOT, target, by="someone-else").changed
    assert knob(fake, session.id, "cgroup.freeze") == "1"


def test_the_strictest_throttle_is_in_force_until_its_actor_resumes(parts) -> None:
    fake, manager = parts
    session = manager.create_session(ROOT, "s", Resources(memory_max=GiB, cpu=1.0), None)
    target = Target(session.id)
    control = Control(manager, min_interval_seconds=0.0)
    control.throttle(ROOT, target, cpu_max=0.5, by="scheduler")
    control.throttle(ROOT, target, cpu_max=0.1, memory_high=GiB // 4, by="pressure")
    assert knob(fake, session.id, "cpu.max") == "10000 100000"
    control.throttle(ROOT, target, cpu_max=0.25, by="scheduler")  # looser than 0.1
    assert knob(fake, session.id, "cpu.max") == "10000 100000"
    control.resume(ROOT, target, by="pressure")
    # The scheduler's 0.25 cores now, and no memory high (only the policy set one).
    assert knob(fake, session.id, "cpu.max") == "25000 100000"
    assert knob(fake, session.id, "memory.high") == "max"
    assert control.is_throttled(target)
    control.resume(ROOT, target, by="scheduler")
    assert knob(fake, session.id, "cpu.max") == "100000 100000"
    assert not control.is_throttled(target)


def test_holds_are_known_again_by_a_new_control(parts, tmp_path: Path) -> None:
    """As after a daemon restart: the holds come back from the store, so a throttle
    without a freeze (which cgroupfs cannot tell from a budget) is lifted correctly."""
    fake, manager = parts
    session = manager.create_session(ROOT, "s", Resources(memory_max=GiB, cpu=1.0), None)
    target = Target(session.id)
    Control(manager, min_interval_seconds=0.0).throttle(ROOT, target, cpu_max=0.1, by="pressure")
    Control(manager, min_interval_seconds=0.0).freeze(ROOT, target, by="scheduler")

    again = Control(manager, min_interval_seconds=0.0)
    assert again.holds(target) == {
        "pressure": Hold(cpu=0.1),
        "scheduler": Hold(frozen=True),
    }
    assert again.is_throttled(target)
    again.resume(ROOT, target, by="scheduler")
    assert knob(fake, session.id, "cpu.max") == "10000 100000"  # the throttle stays
    again.resume(ROOT, target, by="pressure")
    assert knob(fake, session.id, "cpu.max") == "100000 100000"
    assert Control(manager).holds(target) == {}


def test_a_group_nobody_holds_is_still_resumed(parts) -> None:
    """A freeze from before holds were kept (or written by hand) is lifted by any
    resume, as before."""
    fake, manager = parts
    session = manager.create_session(ROOT, "s", Resources(), None)
    fake.files[f"{MOUNT}/agentd/sessions/{session.id}"]["cgroup.freeze"] = "1\n"
    control = Control(manager, min_interval_seconds=0.0)
    assert control.resume(ROOT, Target(session.id), by="pressure").changed
    assert knob(fake, session.id, "cgroup.freeze") == "0"


def test_holds_of_a_closed_session_are_dropped(parts) -> None:
    _, manager = parts
    session = manager.create_session(ROOT, "s", Resources(), None)
    control = Control(manager, min_interval_seconds=0.0)
    control.freeze(ROOT, Target(session.id), by="scheduler")
    control.evict(ROOT, Target(session.id), by="scheduler")
    assert manager.store.holds() == []


def test_the_pressure_policy_takes_back_its_holds_after_a_restart(parts) -> None:
    """A throttle without a freeze was not visible after a restart (it looks like a
    budget in cgroupfs); the policy's holds say it, and it adopts both kinds; a
    scheduler's freeze alone is not the policy's to adopt."""
    _, manager = parts
    throttled = manager.create_session(ROOT, "t", Resources(cpu=1.0), Priority.BATCH)
    frozen = manager.create_session(ROOT, "f", Resources(cpu=1.0), Priority.BATCH)
    theirs = manager.create_session(ROOT, "x", Resources(cpu=1.0), Priority.BATCH)
    control = Control(manager, min_interval_seconds=0.0)
    control.throttle(ROOT, Target(throttled.id), cpu_max=0.1, by=BY)
    control.throttle(ROOT, Target(frozen.id), cpu_max=0.1, by=BY)
    control.freeze(ROOT, Target(frozen.id), by=BY)
    control.freeze(ROOT, Target(theirs.id), by="scheduler")

    policy = PressurePolicy()
    controller = PressureController(
        manager,
        Control(manager, min_interval_seconds=0.0),  # a new daemon's
        PressureMonitor(manager.backend, 8 * GiB),
        policy,
        Thresholds(),
        PriorityTable.default(),
    )
    assert controller.adopt_frozen(now=0.0) == 2
    assert policy.status_of(throttled.id) == Status.THROTTLED
    assert policy.status_of(frozen.id) == Status.FROZEN
    assert policy.status_of(theirs.id) == Status.NONE
