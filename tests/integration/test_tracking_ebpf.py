"""The eBPF tracking source with real tracepoints on this host (needs root and bcc).

Loads bpf/tracker.c once per module (~1 s), runs the workload of tracking_workload.py
as a tool call and checks the tree it yields: counts, parents, exit codes and
signals, a daemon that outlives its command, seeding, and loss being counted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))  # tests/: shared helpers

from conftest import require_root, skip_or_fail
from tracking_workload import (
    EXPECTED_PROCESSES,
    SCRIPT,
    TRUES,
    by_argv,
    check_full_tree,
    launch,
    pids_group,
    wait_until,
)

from agentd.tracking import SourceUnavailable, Tracker
from agentd.tracking.ebpf import EbpfSource

pytestmark = pytest.mark.root


def _start(prefer: str = "ebpf", **kw: object) -> Tracker:
    require_root()
    try:
        import bcc  # noqa: F401
    except ImportError as e:
        skip_or_fail(f"bcc is not importable from {sys.executable}: {e}")
    try:
        return Tracker.start(prefer, **kw)  # type: ignore[arg-type]
    except SourceUnavailable as e:
        skip_or_fail(f"the eBPF source cannot load here: {e}")
        raise


@pytest.fixture(scope="module")
def tracker() -> Iterator[Tracker]:
    t = _start()
    print(f"BPF load: {t.source.load_seconds:.2f} s")  # type: ignore[union-attr]
    yield t
    t.stop()


def test_workload_tree_is_complete_and_exact(tracker: Tracker) -> None:
    source = tracker.source
    assert isinstance(source, EbpfSource)
    with pids_group() as group:
        run = launch(SCRIPT, group, lambda pid: tracker.begin("tc-ebpf-full", pid))
        assert run.proc.wait(timeout=20) == 4
        tracker.end("tc-ebpf-full", exit_code=4)
        # The daemon (sleep 1.2) outlives its command: still attributed, in the kernel
        # map and in the tree, although its parents are gone and it was reparented.
        tree = tracker.tree("tc-ebpf-full")
        assert tree is not None
        with tracker.locked():
            alive = [n for n in tree.running() if n.argv == ("sleep", "1.2")]
        assert len(alive) == 1
        assert source.watched().get(alive[0].pid) == tree.key
        assert wait_until(lambda: not tree.live, timeout=5), "the daemon's exit was seen"
        snap = tracker.snapshot("tc-ebpf-full")
    assert snap is not None
    assert snap["source"] == "ebpf" and snap["lost_events"] == 0
    check_full_tree(snap, run.pid)
    assert alive[0].pid not in source.watched(), "exits remove their map entries"
    # Every exit carries its CPU time; every /bin/true a small peak RSS of its own.
    nodes = snap["processes"]
    assert all(isinstance(n["cpu_seconds"], float) for n in nodes)
    trues = [n["peak_rss_bytes"] for n in by_argv(nodes, "/bin/true")]
    assert len(trues) == TRUES and all(0 < p < 20_000_000 for p in trues), trues


def test_seed_processes_started_before_tracking(tracker: Tracker) -> None:
    with pids_group() as group:
        script = "read _; sleep 30 & sleep 30 & wait"
        proc = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE)
        group.add(proc.pid)  # before it forks, so that its children are born inside
        assert proc.stdin is not None
        proc.stdin.close()
        assert wait_until(lambda: len(group.pids()) == 3, timeout=5)
        tree = tracker.seed("tc-ebpf-seed", group.pids(), group.procs_file)
        with tracker.locked():
            assert {n.argv for n in tree.nodes} == {("sh", "-c", script), ("sleep", "30")}
            assert len(tree.nodes) == 3 and all(n.seeded for n in tree.nodes)
            sleepers = [n.pid for n in tree.nodes if n.pid != proc.pid]
        for pid in sleepers:  # started by this test, in its own group
            os.kill(pid, signal.SIGTERM)
        proc.wait(timeout=5)
        assert wait_until(lambda: not tree.live, timeout=5)
    with tracker.locked():
        sleeps = [n for n in tree.nodes if n.argv == ("sleep", "30")]
        assert [n.signal for n in sleeps] == [signal.SIGTERM, signal.SIGTERM]
        assert [n.exit_code for n in tree.nodes if n.pid == proc.pid] == [0]


def test_auto_choice_names_ebpf() -> None:
    t = _start("auto")
    try:
        assert t.source_name == "ebpf", t.reason
        assert t.status()["source"] == "ebpf"
    finally:
        t.stop()


def test_ring_buffer_overflow_is_counted_not_silent() -> None:
    """A one-page ring buffer and a consumer stuck for the whole workload: the kernel
    must count every record it could not write."""
    release = threading.Event()
    t = _start(max_nodes=100_000)
    t.stop()  # reload with a tiny ring buffer
    source = EbpfSource(ringbuf_pages=1)
    tracker = Tracker(source, "test")
    seen: list[object] = []

    def stuck_sink(ev: object) -> None:
        release.wait(10)
        seen.append(ev)
        tracker._on_event(ev)  # type: ignore[arg-type]

    source.start(stuck_sink)
    try:
        with pids_group() as group:
            run = launch(SCRIPT, group, lambda pid: tracker.begin("tc-ebpf-loss", pid))
            assert run.proc.wait(timeout=20) == 4
            time.sleep(1.5)  # the daemon ends too
            lost = source.lost_events()
            release.set()
            time.sleep(0.5)
        assert lost > 0
        # 2 records per process at least (fork+exit) plus exec and argv records.
        assert len(seen) + lost >= 2 * EXPECTED_PROCESSES
        assert tracker.loss().lost >= lost and tracker.loss().exact
        print(f"one-page ring buffer: {len(seen)} records delivered, {lost} counted lost")
    finally:
        release.set()
        source.stop()


# ---- per-process CPU time and peak RSS (sched_switch, kmem:rss_stat) --------------------

_BURN = """\
import sys, threading, time
def burn(seconds):
    t = time.thread_time()
    while time.thread_time() - t < seconds:
        pass
n, seconds = int(sys.argv[1]), float(sys.argv[2])
threads = [threading.Thread(target=burn, args=(seconds,)) for _ in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""

# Allocates and touches 100 MB, then spawns /bin/true (vfork in Python 3.11's subprocess:
# the child runs in this 100 MB mm until it executes, which must not count as its RSS).
_ALLOC = """\
import subprocess
b = bytearray(100 * 1024 * 1024)
for i in range(0, len(b), 4096):
    b[i] = 1
subprocess.run(["/bin/true"], check=True)
"""


def _run_tool_call(tracker: Tracker, name: str, script: str) -> list[dict[str, object]]:
    """Runs `script` (sh) as a tool call and returns its processes once all ended."""
    with pids_group() as group:
        run = launch(script, group, lambda pid: tracker.begin(name, pid))
        assert run.proc.wait(timeout=30) == 0
        tracker.end(name, exit_code=0)
        tree = tracker.tree(name)
        assert tree is not None
        assert wait_until(lambda: not tree.live, timeout=5)
    snap = tracker.snapshot(name)
    assert snap is not None and snap["lost_events"] == 0
    return snap["processes"]  # type: ignore[no-any-return]


def _py(script: str, *args: str) -> str:
    # exec: the launcher becomes the Python process, so the root node is the burner.
    # -I -S: a small, stable start-up cost next to the figures measured.
    quoted = " ".join(f"'{a}'" for a in (sys.executable, "-I", "-S", "-c", script, *args))
    return f"exec {quoted}"


def test_cpu_time_of_a_busy_process(tracker: Tracker) -> None:
    (root,) = _run_tool_call(tracker, "tc-ebpf-cpu", _py(_BURN, "1", "0.3"))
    cpu = root["cpu_seconds"]
    print(f"0.3 s burner: cpu_seconds={cpu}")
    assert isinstance(cpu, float) and 0.15 <= cpu <= 0.6


def test_cpu_time_sums_the_threads(tracker: Tracker) -> None:
    (root,) = _run_tool_call(tracker, "tc-ebpf-cpu-mt", _py(_BURN, "3", "0.15"))
    cpu = root["cpu_seconds"]
    print(f"3 threads x 0.15 s: cpu_seconds={cpu}")
    assert isinstance(cpu, float) and 0.4 <= cpu <= 0.9


def test_peak_rss_of_an_allocation_and_of_a_vforked_true(tracker: Tracker) -> None:
    nodes = _run_tool_call(tracker, "tc-ebpf-rss", _py(_ALLOC))
    (root,) = [n for n in nodes if n["argv"] and n["argv"][0] == sys.executable]  # type: ignore[index]
    (true,) = by_argv(nodes, "/bin/true")
    print(f"100 MB: peak_rss={root['peak_rss_bytes']}, its /bin/true: {true['peak_rss_bytes']}")
    assert isinstance(root["peak_rss_bytes"], int) and root["peak_rss_bytes"] >= 90_000_000
    assert isinstance(true["peak_rss_bytes"], int) and 0 < true["peak_rss_bytes"] < 20_000_000
    assert isinstance(true["cpu_seconds"], float) and 0 < true["cpu_seconds"] < 0.1


def test_usage_off_reports_unknown_figures() -> None:
    """EbpfSource(usage=False) leaves the sched_switch and rss_stat programs out."""
    _start().stop()  # skips cleanly where the eBPF source cannot load
    source = EbpfSource(usage=False)
    tracker = Tracker(source, "test")
    source.start(tracker._on_event)
    try:
        nodes = _run_tool_call(tracker, "tc-ebpf-nousage", "/bin/true; exit 0")
    finally:
        source.stop()
    assert len(nodes) == 2
    assert all(n["cpu_seconds"] is None and n["peak_rss_bytes"] is None for n in nodes)
