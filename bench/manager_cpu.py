#!/usr/bin/env python3
"""The daemon's own CPU per tool call, without gRPC and without the other threads'
per-second work: thread CPU time (time.thread_time) of BeginToolCall (ahead, a real
agentd-exec launcher), EndToolCall (start folded in) and the group worker's share
(the ended group's rmdir, the next spare's mkdir, the process tree saved), on real
cgroups with the eBPF tracker, as the daemon runs them.

Unlike wall time or a whole-daemon figure (whose per-second work, such as the
migration warmer and the collector's ticks, is divided by however many tool calls
the load let through), thread CPU per call hardly depends on the machine's load, so
two versions can be compared on a busy machine. Baseline in the same run: the raw
cgroupfs work one tool call needs (mkdir in every hierarchy, move the launcher, rmdir
in every hierarchy), so the ratio is what the manager adds on top of the kernel.

    sudo .venv/bin/python bench/manager_cpu.py --calls 300 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from agentd.cgroups.base import GroupLimits
from agentd.cgroups.detect import choose_backend, detect_layout
from agentd.daemon import start_tracker
from agentd.log import configure_logging
from agentd.manager import Caller, Manager, NodeLimits
from agentd.model import ExitStatus, Intent, Resources
from agentd.sdk.ahead import spawn_waiting
from agentd.store import Store

GIB = 1 << 30


def one_round(manager: Manager, session_id: str, calls: int) -> dict[str, float]:
    """Mean thread CPU (ms) per tool call of each part."""
    caller = Caller(0, 0, os.getpid())
    clock = time.thread_time
    begin = end = worker = 0.0
    for _ in range(calls):
        pid, sock = spawn_waiting()
        t0 = clock()
        tool_call = manager.begin_tool_call(caller, session_id, Intent(), pid, ahead=True)
        begin += clock() - t0
        sock.close()  # the launcher reads EOF and exits without running anything
        os.waitpid(pid, 0)
        t0 = clock()
        manager.end_tool_call(
            caller, tool_call.id, ExitStatus(known=True), label="/bin/true", started_at=time.time()
        )
        end += clock() - t0
        t0 = clock()
        manager.remove_pending()
        manager.make_spares()
        manager.save_trees()
        worker += clock() - t0
    time.sleep(1.5)  # the last trees become due
    t0 = clock()
    manager.save_trees()
    worker += clock() - t0
    seconds = {"begin": begin, "end": end, "worker": worker, "total": begin + end + worker}
    return {k: v * 1e3 / calls for k, v in seconds.items()}


def raw_cgroupfs(manager: Manager, session_rel: str, calls: int) -> float:
    """Mean thread CPU (ms) of the kernel work of one tool call, done directly."""
    backend = manager.backend
    clock = time.thread_time
    spent = 0.0
    for i in range(calls):
        pid, sock = spawn_waiting()
        rel = f"{session_rel}/raw-{i}"
        t0 = clock()
        backend.create(rel, GroupLimits())
        backend.move(rel, pid)
        spent += clock() - t0
        sock.close()
        os.waitpid(pid, 0)
        t0 = clock()
        backend.remove(rel)
        spent += clock() - t0
    return spent * 1e3 / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="tool calls per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (real cgroups, eBPF)", file=sys.stderr)
        return 2
    configure_logging("json", "warning")
    backend = choose_backend(detect_layout(), "auto", f"agentd-bench-{uuid.uuid4().hex[:8]}")
    backend.ensure_root()
    tracker = start_tracker("auto")
    with tempfile.TemporaryDirectory() as state:
        store = Store(Path(state))
        node = NodeLimits(4 * GIB, 2.0, Resources(memory_max=GIB, cpu=2.0, pids_max=256))
        manager = Manager(backend, store, node, tracker=tracker)
        root = Caller(0, 0, os.getpid())
        try:
            session = manager.create_session(root, "bench", Resources(), None)
            manager.make_spares()
            one_round(manager, session.id, 30)  # warm-up: imports, caches
            totals, raws = [], []
            for number in range(1, args.rounds + 1):
                load = os.getloadavg()[0]
                parts = one_round(manager, session.id, args.calls)
                raw = raw_cgroupfs(manager, session.cgroup_rel, args.calls)
                totals.append(parts["total"])
                raws.append(raw)
                print(
                    f"round {number}/{args.rounds}: CPU per tool call {parts['total']:.3f} ms "
                    f"(begin {parts['begin']:.3f}, end {parts['end']:.3f}, group worker "
                    f"{parts['worker']:.3f}) | raw cgroupfs {raw:.3f} ms | ratio "
                    f"{parts['total'] / raw:.2f}x | load {load:.2f}",
                    flush=True,
                )
            print(
                f"overall: {statistics.median(totals):.3f} ms median "
                f"({min(totals):.3f} .. {max(totals):.3f}), raw cgroupfs "
                f"{statistics.median(raws):.3f} ms, ratio "
                f"{statistics.median(totals) / statistics.median(raws):.2f}x; tracker "
                f"{tracker.source_name if tracker else 'off'}, backend {backend.name}, "
                f"load {os.getloadavg()[0]:.2f} at the end"
            )
            manager.close_session(root, session.id)
        finally:
            manager.remove_pending()
            if tracker is not None:
                tracker.stop()
            store.close()
            try:
                backend.kill("")
            finally:
                backend.remove("")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
