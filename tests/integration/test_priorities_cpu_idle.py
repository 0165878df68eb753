"""Batch sessions are cpu.idle while an interactive session is open, on real cgroups (v1
here, the kernel's cpu.idle), with real busy loops pinned to one CPU: the batch loop
yields that CPU almost entirely, far more than the class weights alone make it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from agentd.manager import Caller, Manager
from agentd.model import Intent, Priority, Resources
from agentd.sdk.launcher import spawn

pytestmark = pytest.mark.root

ROOT = Caller(uid=0, gid=0, pid=os.getpid())
#: A busy loop on CPU 0 only, so that the two sessions' loops compete for one CPU.
PINNED_BUSY = [sys.executable, "-c", "import os\nos.sched_setaffinity(0, {0})\nwhile True: pass"]


def start_busy(mgr: Manager, session_id: str) -> subprocess.Popen[bytes]:
    launch = spawn(PINNED_BUSY, None, None, subprocess.DEVNULL, subprocess.DEVNULL, None, False)
    mgr.begin_tool_call(ROOT, session_id, Intent(label="busy"), launch.pid)
    launch.release()
    return launch.process


def cpu_idle(mgr: Manager, rel: str) -> str:
    path = Path(mgr.backend.path_in("cpu", rel)) / "cpu.idle"  # type: ignore[attr-defined]
    return path.read_text().strip()


def batch_share(batch: int, interactive: int, seconds: float = 1.5) -> float:
    """The batch loop's part of the CPU time the two loops got over `seconds`."""
    procs = [psutil.Process(batch), psutil.Process(interactive)]
    before = [sum(p.cpu_times()[:2]) for p in procs]
    time.sleep(seconds)
    got = [sum(p.cpu_times()[:2]) - b for p, b in zip(procs, before, strict=True)]
    assert sum(got) > 0.05, f"the loops hardly ran ({got}): is CPU 0 saturated?"
    return got[0] / sum(got)


def test_batch_yields_the_cpu_while_an_interactive_session_is_open(
    real_manager: Manager,
) -> None:
    mgr = real_manager
    batch = mgr.create_session(ROOT, "batch", Resources(), Priority.BATCH)
    normal = mgr.create_session(ROOT, "normal", Resources(), Priority.NORMAL)
    assert cpu_idle(mgr, batch.cgroup_rel) == "0"
    processes = [start_busy(mgr, batch.id)]
    try:
        interactive = mgr.create_session(ROOT, "inter", Resources(), Priority.INTERACTIVE)
        assert cpu_idle(mgr, batch.cgroup_rel) == "1"
        assert cpu_idle(mgr, normal.cgroup_rel) == "0"  # only the batch class yields
        assert cpu_idle(mgr, interactive.cgroup_rel) == "0"
        # A batch session opened while it is open is idle before its first tool call.
        late = mgr.create_session(ROOT, "late", Resources(), Priority.BATCH)
        assert cpu_idle(mgr, late.cgroup_rel) == "1"

        processes.append(start_busy(mgr, interactive.id))
        idle_share = batch_share(processes[0].pid, processes[1].pid)

        # The same pair with the weights alone (400 vs 25: ~6% for batch).
        mgr.batch_idle.enabled = False
        mgr.batch_idle.sync(mgr.list_sessions(ROOT))
        assert cpu_idle(mgr, batch.cgroup_rel) == "0"
        weights_share = batch_share(processes[0].pid, processes[1].pid)
        mgr.batch_idle.enabled = True
        mgr.batch_idle.sync(mgr.list_sessions(ROOT))
        assert cpu_idle(mgr, batch.cgroup_rel) == "1"
        print(f"batch share of CPU 0: idle {idle_share:.4f}, weights only {weights_share:.4f}")
        # Quiet, idle gets 0.0; under heavy load (the loops pinned to a CPU that other
        # work shares) up to ~2% was seen: the bound leaves room for that and still
        # fails for weights alone (~6%).
        assert idle_share < 0.035
        assert weights_share > 1.5 * idle_share

        # The last interactive session closes: batch is back to its weight and runs.
        mgr.close_session(ROOT, interactive.id)
        processes.pop().wait(5)
        assert cpu_idle(mgr, batch.cgroup_rel) == "0"
        assert cpu_idle(mgr, late.cgroup_rel) == "0"
        proc = psutil.Process(processes[0].pid)
        before = sum(proc.cpu_times()[:2])
        time.sleep(0.5)
        assert sum(proc.cpu_times()[:2]) - before > 0.02
    finally:
        for process in processes:
            process.kill()
            process.wait(5)
