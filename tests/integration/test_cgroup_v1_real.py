"""V1Backend against the real cgroup v1 hierarchies of this host (needs root).

Every group lives under a unique root (agentd-test-<uuid8>) that the fixture removes
even when a test fails. Memory and fork loops only run in a group whose limit is
already set, and only processes this file started are signalled (by pid).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator

import pytest

from agentd.cgroups.base import GroupBusyError, GroupLimits
from agentd.cgroups.detect import detect_layout
from agentd.cgroups.v1 import V1Backend

pytestmark = pytest.mark.root

MiB = 1 << 20


class Procs:
    """Child Pythons that block on stdin until released, so they can be moved first."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def spawn(self, body: str) -> subprocess.Popen[str]:
        code = "import os, sys, time\nsys.stdin.readline()\n" + textwrap.dedent(body)
        p = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.started.append(p)
        return p

    @staticmethod
    def release(p: subprocess.Popen[str]) -> None:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()

    def cleanup(self) -> None:
        for p in self.started:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


@pytest.fixture
def procs() -> Iterator[Procs]:
    ps = Procs()
    try:
        yield ps
    finally:
        ps.cleanup()


@pytest.fixture
def v1(cgroup_v1_required: None, procs: Procs) -> Iterator[V1Backend]:
    root = f"agentd-test-{uuid.uuid4().hex[:8]}"
    b = V1Backend(detect_layout().v1_mounts, root)
    b.ensure_root()
    try:
        yield b
    finally:
        # Only our own children can be in our root; kill them, then remove everything.
        try:
            b.kill("")
        finally:
            procs.cleanup()
            b.remove("")
        left = [h for h in b.hierarchies() if os.path.exists(h)]
        assert not left, f"cgroups left behind: {left}"


def read(b: V1Backend, controller: str, rel: str, name: str) -> str:
    with open(f"{b.path_in(controller, rel)}/{name}") as f:
        return f.read().strip()


def session(b: V1Backend, name: str = "s1") -> str:
    rel = f"sessions/{name}"
    b.create(rel, GroupLimits())
    return rel


def test_create_applies_limits_readable_from_kernel(v1: V1Backend) -> None:
    s = session(v1)
    rel = f"{s}/tc"
    v1.create(
        rel,
        GroupLimits(
            memory_max=64 * MiB,
            memory_high=48 * MiB,
            memory_low=8 * MiB,  # no v1 knob: ignored, and said so by supported_limits()
            cpu_max_cores=0.5,
            cpu_weight=200,
            pids_max=20,
        ),
    )
    assert "memory_low" not in v1.supported_limits()
    for h in v1.hierarchies():
        assert os.path.isdir(f"{h}/{rel}")
    assert read(v1, "memory", rel, "memory.limit_in_bytes") == str(64 * MiB)
    assert read(v1, "memory", rel, "memory.soft_limit_in_bytes") == str(48 * MiB)
    assert read(v1, "cpu", rel, "cpu.cfs_quota_us") == "50000"
    assert read(v1, "cpu", rel, "cpu.shares") == "2048"
    assert read(v1, "pids", rel, "pids.max") == "20"

    v1.set_limits(rel, GroupLimits(memory_max=128 * MiB, cpu_max_cores=1.25))
    assert read(v1, "memory", rel, "memory.limit_in_bytes") == str(128 * MiB)
    assert read(v1, "cpu", rel, "cpu.cfs_quota_us") == "125000"
    assert v1.children(s) == ["tc"]
    assert v1.exists(rel) and not v1.exists(f"{s}/nope")


def test_move_puts_process_in_every_hierarchy(v1: V1Backend, procs: Procs) -> None:
    rel = f"{session(v1)}/tc"
    v1.create(rel, GroupLimits())
    p = procs.spawn("")
    v1.move(rel, p.pid)
    with open(f"/proc/{p.pid}/cgroup") as f:
        lines = f.read().splitlines()
    want = f"/{v1.root_path().rsplit('/', 1)[1]}/{rel}"
    for controller in ("memory", "cpu", "cpuacct", "pids", "freezer"):
        assert any(line.split(":")[1] == controller and line.endswith(want) for line in lines), (
            controller,
            lines,
        )
    assert v1.procs(rel) == [p.pid]
    assert v1.procs("sessions", recursive=True) == [p.pid]


def test_oom_kill_confined_to_its_group(v1: V1Backend, procs: Procs) -> None:
    s = session(v1)
    v1.create(f"{s}/mem", GroupLimits(memory_max=64 * MiB))
    v1.create(f"{s}/sibling", GroupLimits())
    sibling = procs.spawn("sys.stdin.readline()\n")
    v1.move(f"{s}/sibling", sibling.pid)
    hog = procs.spawn(
        """
        data = b"x" * (200 << 20)  # touches every page: 200 MB really charged
        print("survived", len(data), flush=True)
        """
    )
    v1.move(f"{s}/mem", hog.pid)
    procs.release(hog)
    assert hog.wait(timeout=30) == -signal.SIGKILL
    usage = v1.usage(f"{s}/mem")
    assert usage.oom_kills >= 1
    assert usage.memory_peak <= 64 * MiB
    assert sibling.poll() is None, "sibling group's process must survive"
    assert v1.usage(f"{s}/sibling").oom_kills == 0


def test_cpu_quota_holds_busy_loop(v1: V1Backend, procs: Procs) -> None:
    rel = f"{session(v1)}/cpu"
    v1.create(rel, GroupLimits(cpu_max_cores=0.2))
    p = procs.spawn("while True:\n    pass\n")
    v1.move(rel, p.pid)
    procs.release(p)
    time.sleep(0.2)  # let the interpreter reach the loop
    u0, t0 = v1.usage(rel), time.monotonic()
    time.sleep(1.5)
    u1, t1 = v1.usage(rel), time.monotonic()
    used = (u1.cpu_user_usec + u1.cpu_system_usec) - (u0.cpu_user_usec + u0.cpu_system_usec)
    share = used / ((t1 - t0) * 1e6)
    # 20 % of one core; generous bounds for a shared 2-core VM. The lower bound proves
    # the loop really runs inside the group (cpuacct would read ~0 otherwise).
    assert 0.08 < share < 0.35, share
    assert u1.cpu_nr_throttled > u0.cpu_nr_throttled
    assert u1.cpu_throttled_usec > 0


def test_pids_max_stops_fork_loop(v1: V1Backend, procs: Procs) -> None:
    rel = f"{session(v1)}/forks"
    v1.create(rel, GroupLimits(pids_max=20))
    p = procs.spawn(
        """
        kids, fails = 0, 0
        for _ in range(60):
            try:
                pid = os.fork()
            except OSError:
                fails += 1
                continue
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            kids += 1
        print(kids, fails, flush=True)
        sys.stdin.readline()
        """
    )
    v1.move(rel, p.pid)
    procs.release(p)
    assert p.stdout is not None
    kids, fails = map(int, p.stdout.readline().split())
    assert fails > 0
    assert kids + 1 <= 20
    usage = v1.usage(rel)
    assert usage.pids_current == kids + 1
    assert usage.pids_peak <= 20
    assert v1.kill(rel) == kids + 1
    assert v1.procs(rel) == []


def test_freeze_and_thaw(v1: V1Backend, procs: Procs) -> None:
    rel = f"{session(v1)}/frz"
    v1.create(rel, GroupLimits(cpu_max_cores=0.5))
    p = procs.spawn("while True:\n    pass\n")
    v1.move(rel, p.pid)
    procs.release(p)
    time.sleep(0.1)

    def cpu_over(seconds: float) -> int:
        u0 = v1.usage(rel)
        time.sleep(seconds)
        u1 = v1.usage(rel)
        return (u1.cpu_user_usec + u1.cpu_system_usec) - (u0.cpu_user_usec + u0.cpu_system_usec)

    v1.freeze(rel)
    assert read(v1, "freezer", rel, "freezer.state") == "FROZEN"
    assert cpu_over(0.3) < 1_000
    v1.thaw(rel)
    assert read(v1, "freezer", rel, "freezer.state") == "THAWED"
    assert cpu_over(0.3) > 50_000


def test_kill_ends_a_descendant_frozen_on_its_own(v1: V1Backend, procs: Procs) -> None:
    """A tool call frozen by itself stays frozen when its session thaws; SIGKILL of the
    session must still end it (a SIGKILLed task in a frozen v1 group never dies)."""
    parent = session(v1)
    rel = f"{parent}/frozen"
    v1.create(rel, GroupLimits())
    p = procs.spawn("while True:\n    pass\n")
    v1.move(rel, p.pid)
    procs.release(p)
    v1.freeze(rel)
    assert v1.kill(parent) == 1
    assert p.wait(timeout=10) == -9
    assert read(v1, "freezer", rel, "freezer.state") == "THAWED"


def test_kill_forking_group_and_descendants(v1: V1Backend, procs: Procs) -> None:
    rel = f"{session(v1)}/bomb"
    # Limits first: the fork loop below is bounded by pids.max and a CPU quota.
    v1.create(rel, GroupLimits(pids_max=40, cpu_max_cores=1.0, memory_max=512 * MiB))
    v1.create(f"{rel}/inner", GroupLimits())
    bomb = procs.spawn(
        """
        while True:
            try:
                os.fork()  # parent and child both keep forking
            except OSError:
                time.sleep(0.005)
        """
    )
    inner = procs.spawn("sys.stdin.readline()\n")
    v1.move(rel, bomb.pid)
    v1.move(f"{rel}/inner", inner.pid)
    procs.release(bomb)
    # Wait for the loop to be in full swing (a loaded VM can be slow to fork Pythons).
    deadline = time.monotonic() + 10
    while v1.usage(rel).pids_current < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(v1.procs(rel, recursive=True)) >= 20
    count = v1.kill(rel)
    assert count >= 20
    assert v1.procs(rel, recursive=True) == []
    assert bomb.wait(timeout=5) == -signal.SIGKILL
    assert inner.wait(timeout=5) == -signal.SIGKILL
    assert read(v1, "freezer", rel, "freezer.state") == "THAWED"
    v1.remove(rel)
    assert not v1.exists(rel)


def test_remove_busy_then_clean(v1: V1Backend, procs: Procs) -> None:
    s = session(v1)
    rel = f"{s}/tc"
    v1.create(rel, GroupLimits(memory_max=64 * MiB, pids_max=10))
    v1.create(f"{rel}/deeper", GroupLimits())
    p = procs.spawn("")
    v1.move(f"{rel}/deeper", p.pid)
    with pytest.raises(GroupBusyError, match="deeper: Device or resource busy"):
        v1.remove(s)
    assert v1.exists(f"{rel}/deeper")
    assert v1.kill(rel) == 1
    v1.remove(s)
    for h in v1.hierarchies():
        assert not os.path.exists(f"{h}/{s}"), h
    assert v1.children("sessions") == []
    v1.remove(s)  # already gone: not an error
