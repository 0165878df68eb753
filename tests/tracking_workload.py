"""The tool-call workload the tracking tests run under every source, and its checks.

The workload is a `sh` (dash) script whose process tree the test knows exactly:
  root  sh -c SCRIPT                                  exit 4
  A     sh -c 'sh -c "sh -c \\"exit 7\\"; exit 6"; exit 5'   exit 5   (nested shells)
  B       sh -c "sh -c \\"exit 7\\"; exit 6"            exit 6
  C         sh -c "exit 7"                            exit 7
  P1-P3 echo hello | tr a-z A-Z | wc -c               (echo is a forked subshell)
  X     setsid -f sh -c 'sleep 1.2 & exit 0'          exit 0   (double fork + setsid)
  Y       sh -c 'sleep 1.2 & exit 0'                  exit 0
  Z         sleep 1.2                                 exit 0   outlives X, Y and root
  K     sh -c 'kill -TERM $$'                         signal 15
  T     200 x /bin/true in a tight loop               exit 0
Every group is created under a unique root (agentd-track-<hex>) with pids.max set
before anything runs, and removed at the end; only processes started here are killed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from agentd.cgroups.detect import detect_layout

SCRIPT = """\
sh -c 'sh -c "sh -c \\"exit 7\\"; exit 6"; exit 5'
echo hello | tr a-z A-Z | wc -c >/dev/null
setsid -f sh -c 'sleep 1.2 & exit 0'
sh -c 'kill -TERM $$'
i=0
while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done
exit 4
"""
EXPECTED_PROCESSES = 1 + 3 + 3 + 3 + 1 + 200
TRUES = 200

# A slow variant for the procfs source: every process it must see lives >= 0.2 s.
SLOW_SCRIPT = """\
sh -c 'sh -c "sleep 0.4; exit 7"; exit 5'
sleep 0.3 | sleep 0.31
setsid -f sh -c 'sleep 1.0 & exit 0'
for i in 1 2 3 4 5; do sleep 0.2; done
exit 4
"""


class PidsGroup:
    """A pids cgroup (v1 pids hierarchy, else cgroup2) of our own, removed at the end."""

    def __init__(self) -> None:
        layout = detect_layout()
        base = layout.v1_mounts.get("pids") or layout.v2_mount
        if base is None:
            raise RuntimeError("no pids cgroup hierarchy")
        self.root = os.path.join(base, f"agentd-track-{secrets.token_hex(4)}")
        os.mkdir(self.root)
        self.path = os.path.join(self.root, "tc")
        os.mkdir(self.path)
        with contextlib.suppress(OSError), open(os.path.join(self.path, "pids.max"), "w") as f:
            f.write("2000")  # before anything runs in it: a runaway loop stays bounded

    @property
    def procs_file(self) -> str:
        return os.path.join(self.path, "cgroup.procs")

    def add(self, pid: int) -> None:
        with open(self.procs_file, "w") as f:
            f.write(str(pid))

    def pids(self) -> list[int]:
        with open(self.procs_file) as f:
            return [int(x) for x in f.read().split()]

    def cleanup(self) -> None:
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:  # only processes of this group, which only we started
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        for path in (self.path, self.root):
            with contextlib.suppress(OSError):
                os.rmdir(path)


@dataclass
class Launched:
    proc: subprocess.Popen[bytes]
    started: float

    @property
    def pid(self) -> int:
        return self.proc.pid


def launch(script: str, group: PidsGroup, begin: Callable[[int], Any]) -> Launched:
    """Start a launcher blocked on stdin, move it into the group, let `begin(pid)`
    watch it, then release it: the same order as agentd-exec + BeginToolCall."""
    proc = subprocess.Popen(
        ["sh", "-c", 'read _ && exec sh -c "$0"', script],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    group.add(proc.pid)
    begin(proc.pid)
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    return Launched(proc, time.monotonic())


def wait_until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def children_of(nodes: list[dict[str, Any]], parent: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in nodes if n["ppid"] == parent["pid"] and n["start_ns"] >= parent["start_ns"]]


def by_argv(nodes: list[dict[str, Any]], *argv: str) -> list[dict[str, Any]]:
    return [n for n in nodes if n["argv"] == list(argv)]


def check_full_tree(snap: dict[str, Any], root_pid: int, argv_known: bool = True) -> None:
    """Asserts the tree of SCRIPT: counts, parents, exit codes, the outliving daemon."""
    nodes = snap["processes"]
    assert snap["dropped_processes"] == 0
    assert snap["unmatched_events"] == 0, snap["unmatched_events"]
    assert len(nodes) == EXPECTED_PROCESSES, (len(nodes), snap["counts"])
    assert snap["counts"]["fork"] == EXPECTED_PROCESSES - 1
    assert snap["counts"]["exit"] == EXPECTED_PROCESSES
    root = nodes[0]
    assert root["pid"] == root_pid
    assert root["argv"][:2] == ["sh", "-c"] and root["exit_code"] == 4
    assert all(n["end_time"] is not None for n in nodes), "every process ended"

    # nested shells: C (exit 7) -> B (exit 6) -> A (exit 5) -> root
    (c,) = [n for n in nodes if n["exit_code"] == 7]
    (b,) = [n for n in nodes if n["pid"] == c["ppid"]]
    (a,) = [n for n in nodes if n["pid"] == b["ppid"]]
    assert (b["exit_code"], a["exit_code"], a["ppid"]) == (6, 5, root_pid)

    # killed by its own SIGTERM
    (k,) = [n for n in nodes if n["signal"] is not None]
    assert (k["signal"], k["ppid"], k["exit_code"]) == (15, root_pid, None)

    # everything else exits 0
    others = [n for n in nodes if n not in (root, a, b, c, k)]
    assert all(n["exit_code"] == 0 for n in others), [
        (n["pid"], n["argv"], n["exit_code"], n["signal"]) for n in others if n["exit_code"]
    ]

    # the double-forked daemon: Z's parent Y's parent X, X a child of root; Z outlived root
    grandkids = [n for n in nodes if n["ppid"] not in (0, root_pid)]
    (z,) = [n for n in grandkids if any(m["pid"] == n["ppid"] for m in grandkids)
            and n not in (b, c)]  # fmt: skip
    (y,) = [n for n in nodes if n["pid"] == z["ppid"]]
    (x,) = [n for n in nodes if n["pid"] == y["ppid"]]
    assert x["ppid"] == root_pid
    assert z["end_time"] > root["end_time"] > x["end_time"]

    direct = [n for n in nodes if n["ppid"] == root_pid]
    assert len(direct) == 1 + 3 + 1 + 1 + TRUES  # A, pipeline, X, K, trues

    if argv_known:
        assert len(by_argv(nodes, "/bin/true")) == TRUES
        assert by_argv(nodes, "tr", "a-z", "A-Z") and by_argv(nodes, "wc", "-c")
        assert z["argv"] == ["sleep", "1.2"]
        assert y["argv"] == ["sh", "-c", "sleep 1.2 & exit 0"]
        assert x["argv"][:2] == ["setsid", "-f"]
        assert c["argv"] == ["sh", "-c", "exit 7"]


@contextlib.contextmanager
def pids_group() -> Iterator[PidsGroup]:
    group = PidsGroup()
    try:
        yield group
    finally:
        group.cleanup()
