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
