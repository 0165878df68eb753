"""The procfs scanning source: complete for processes that live longer than a scan,
and honest about the rest (its loss report is never `exact`)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))  # tests/: shared helpers

from conftest import require_root
from tracking_workload import (
    EXPECTED_PROCESSES,
    SCRIPT,
    SLOW_SCRIPT,
    by_argv,
    launch,
    pids_group,
    wait_until,
)

from agentd.tracking import Tracker

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def tracker() -> Iterator[Tracker]:
    require_root()  # reading every /proc/<pid> and moving pids into a group
    t = Tracker.start("procfs")
    yield t
    t.stop()


def _run(tracker: Tracker, tool_call_id: str, script: str) -> dict:
    with pids_group() as group:
        run = launch(script, group, lambda pid: tracker.begin(tool_call_id, pid, group.procs_file))
        assert run.proc.wait(timeout=20) == 4
        tracker.end(tool_call_id, exit_code=4)
        tree = tracker.tree(tool_call_id)
        assert tree is not None
        assert wait_until(lambda: not tree.live and not group.pids(), timeout=5)
        assert wait_until(lambda: not tree.live, timeout=1)
        snap = tracker.snapshot(tool_call_id)
    assert snap is not None
    return snap


def test_slow_workload_is_complete(tracker: Tracker) -> None:
    snap = _run(tracker, "tc-procfs-slow", SLOW_SCRIPT)
    nodes = snap["processes"]
    print(f"procfs slow workload: {len(nodes)} processes, loss {tracker.loss()}")
    assert len(by_argv(nodes, "sleep", "0.2")) == 5
    assert by_argv(nodes, "sleep", "0.3") and by_argv(nodes, "sleep", "0.31")
    (inner,) = by_argv(nodes, "sh", "-c", "sleep 0.4; exit 7")
    (outer,) = by_argv(nodes, "sh", "-c", 'sh -c "sleep 0.4; exit 7"; exit 5')
    assert inner["ppid"] == outer["pid"] and outer["ppid"] == nodes[0]["pid"]
    # The setsid daemon's parents lived for a millisecond: procfs finds the daemon
    # through its cgroup, and counts the parent it never saw.
    (daemon,) = by_argv(nodes, "sleep", "1.0")
    assert daemon["end_time"] is not None
    loss = tracker.loss()
    assert loss.exact is False and loss.lost >= 1
    # Exit codes are not knowable from /proc for processes that are not our children.
    assert all(n["exit_code"] is None for n in nodes[1:])
    assert nodes[0]["exit_code"] == 4  # from end(), i.e. from the SDK


def test_fast_workload_says_it_is_lossy(tracker: Tracker) -> None:
    snap = _run(tracker, "tc-procfs-fast", SCRIPT)
    n = len(snap["processes"])
    print(f"procfs fast workload: {n}/{EXPECTED_PROCESSES} processes, loss {tracker.loss()}")
    assert n < EXPECTED_PROCESSES
    assert snap["source"] == "procfs" and snap["loss_exact"] is False
