"""The migration warmer (agentd/cgroups/warmer.py) on real cgroups: its helper process
moves itself every period while told to warm, not at all while told not to or while
the daemon's own placements come faster than the period (they keep the semaphore warm
themselves), and it never outlives the daemon."""

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

from agentd.cgroups.base import CgroupBackend
from agentd.cgroups.detect import choose_backend, detect_layout
from agentd.cgroups.warmer import GROUPS, MigrationWarmer
from agentd.sdk.launcher import launcher_path

pytestmark = pytest.mark.root


@pytest.fixture
def backend(cgroup_v1_required: None) -> Iterator[CgroupBackend]:
    backend = choose_backend(detect_layout(), "auto", f"agentd-test-{uuid.uuid4().hex[:8]}")
    backend.ensure_root()
    try:
        yield backend
    finally:
        try:
            backend.kill("")
        finally:
            backend.remove("")


def _wait_until(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_helper_moves_itself_every_period_when_nothing_else_does(
    backend: CgroupBackend,
) -> None:
    warmer = MigrationWarmer(backend, launcher_path(), active=lambda: True, period_seconds=0.01)
    warmer.start()
    try:
        assert _wait_until(lambda: warmer.moves >= 10, timeout=5.0), warmer.moves
        # It moves itself, out of the daemon's group: it is in one of its two groups.
        pid = warmer.pid
        assert pid is not None
        assert any(pid in backend.procs(rel) for rel in GROUPS)
    finally:
        warmer.stop()
    assert warmer.pid is not None and not _alive(warmer.pid)
    assert set(backend.children("")) == {"sessions"}  # its groups are gone


def test_the_helper_rests_while_placements_come_faster_than_its_period(
    backend: CgroupBackend,
) -> None:
    warmer = MigrationWarmer(backend, launcher_path(), active=lambda: True, period_seconds=0.01)
    warmer.start()
    try:
        # A placement "until a minute from now": the helper must not move meanwhile.
        warmer.placed(time.monotonic() + 60)
        settled = warmer.moves  # at most the moves before the placement landed
        time.sleep(0.5)
        assert warmer.moves == settled
        warmer.placed(0.0)  # long ago: it warms again
        assert _wait_until(lambda: warmer.moves >= settled + 5)
    finally:
        warmer.stop()


def test_the_helper_warms_only_while_told_to_and_sleeps_otherwise(
    backend: CgroupBackend,
) -> None:
    sessions_open = False
    warmer = MigrationWarmer(
        backend, launcher_path(), active=lambda: sessions_open, period_seconds=0.01
    )
    warmer.start()
    try:
        time.sleep(0.3)
        assert warmer.moves == 0
        pid = warmer.pid
        assert pid is not None
        switches = _context_switches(pid)
        time.sleep(0.3)
        assert _context_switches(pid) == switches  # blocked, not polling
        sessions_open = True
        warmer.refresh()
        assert _wait_until(lambda: warmer.moves >= 5)
        sessions_open = False
        warmer.refresh()
        time.sleep(0.05)  # a move under way when told lands
        stopped_at = warmer.moves
        time.sleep(0.3)
        assert warmer.moves == stopped_at
    finally:
        warmer.stop()


def _context_switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return int(fields["voluntary_ctxt_switches"]) + int(fields["nonvoluntary_ctxt_switches"])


def test_the_helper_exits_when_the_daemon_is_killed(backend: CgroupBackend) -> None:
    """SIGKILL of the process that started it (no stop()): the helper's control pipe
    closes and it exits; the next start clears its groups."""
    root = backend.root_path().rsplit("/", 1)[-1]
    script = textwrap.dedent(
        f"""
        import sys, time
        from agentd.cgroups.detect import choose_backend, detect_layout
        from agentd.cgroups.warmer import MigrationWarmer
        from agentd.sdk.launcher import launcher_path
        backend = choose_backend(detect_layout(), "auto", {root!r})
        warmer = MigrationWarmer(backend, launcher_path(), active=lambda: True)
        warmer.start()
        print(warmer.pid, flush=True)
        time.sleep(60)
        """
    )
    daemon = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd="/", text=True
    )
    try:
        assert daemon.stdout is not None
        helper = int(daemon.stdout.readline())
        assert _alive(helper)
    finally:
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
    assert _wait_until(lambda: not _alive(helper), timeout=5.0)
    warmer = MigrationWarmer(backend, launcher_path(), active=lambda: False)
    warmer.start()  # removes the groups the killed one left
    warmer.stop()
    assert set(backend.children("")) == {"sessions"}


def _warm_helper_of(daemon_pid: int) -> int:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == daemon_pid and b"--warm" in argv:
                return int(entry)
    raise AssertionError(f"agentd {daemon_pid} has no warm helper")


def test_the_daemon_warms_while_a_session_is_open_and_not_otherwise(agentd) -> None:  # type: ignore[no-untyped-def]
    """The manager tells the warmer when sessions open and close: no session, the
    helper sleeps (no wake-ups at all); one session, it moves every period."""
    assert agentd.process is not None
    helper = _warm_helper_of(agentd.process.pid)
    before = _context_switches(helper)
    time.sleep(0.3)
    assert _context_switches(helper) == before
    with agentd.client() as client:
        session = client.session("warm")
        try:
            before = _context_switches(helper)
            time.sleep(0.3)
            assert _context_switches(helper) - before >= 10  # ~37 at 8 ms
        finally:
            session.close()
        time.sleep(0.05)
        before = _context_switches(helper)
        time.sleep(0.3)
        assert _context_switches(helper) == before
