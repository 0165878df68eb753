"""The eBPF run-queue latency histogram (RUNQ_LATENCY in bpf/tracker.c) on this host's
real scheduler: contention shows, untracked tasks are not counted, it detaches cleanly,
and a real daemon's record carries it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))  # tests/: shared helpers

from agentd_process import AgentdProcess, wait_for_records
from conftest import require_root, skip_or_fail

from agentd.metrics.runqlat import RunqReader, histogram_of, quantile
from agentd.tracking import SourceUnavailable
from agentd.tracking.ebpf import EbpfSource

pytestmark = pytest.mark.root

# CPU-bound for a fixed wall time, then out: what it waited is what the CPU's other
# runnable tasks took from it.
VICTIM = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 1.0: pass\n"


@pytest.fixture(scope="module")
def source() -> Iterator[EbpfSource]:
    require_root()
    try:
        import bcc  # noqa: F401
    except ImportError as e:
        skip_or_fail(f"bcc is not importable from {sys.executable}: {e}")
    src = EbpfSource()
    try:
        src.start(lambda ev: None)
    except SourceUnavailable as e:
        skip_or_fail(f"the eBPF source cannot load here: {e}")
    if not src.runq:
        skip_or_fail("tracker.c's run-queue latency programs did not compile here")
    yield src
    src.stop()


@pytest.fixture
def reader(source: EbpfSource) -> Iterator[RunqReader]:
    r = RunqReader(source)
    r.start()
    yield r
    r.close()


@pytest.fixture
def weighted_group() -> Iterator[str | None]:
    """A cgroup v1 CPU group of this test's own with a high cpu.shares: the experiment
    (victim and busy loops) then competes with the rest of a shared host as one heavy
    group, and the comparison inside it does not drown in the host's load."""
    base = "/sys/fs/cgroup/cpu"
    if not os.path.isdir(base):
        yield None
        return
    path = f"{base}/agentd-test-runq-{uuid.uuid4().hex[:8]}"
    os.mkdir(path)
    try:
        with open(f"{path}/cpu.shares", "w") as f:
            f.write("262144")
        yield path
    finally:
        for _ in range(50):  # its processes are gone; the kernel may lag an instant
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.1)


def place(pid: int, group: str | None) -> None:
    if group is not None:
        with open(f"{group}/cgroup.procs", "w") as f:
            f.write(str(pid))


def busy_loops(n: int, cpu: int, group: str | None = None) -> list[subprocess.Popen[bytes]]:
    loops = [subprocess.Popen(["taskset", "-c", str(cpu), "sh", "-c", "while :; do :; done"])
             for _ in range(n)]  # fmt: skip
    for p in loops:
        place(p.pid, group)
    return loops


def run_victim(source: EbpfSource, key: int, cpu: int, group: str | None = None) -> int:
    p = subprocess.Popen(
        [
            "taskset",
            "-c",
            str(cpu),
            sys.executable,
            "-c",
            "import sys\nsys.stdin.readline()\n" + VICTIM,
        ],
        stdin=subprocess.PIPE,
    )
    place(p.pid, group)
    source.watch(p.pid, key)
    assert p.stdin is not None
    p.stdin.write(b"go\n")
    p.stdin.close()
    p.wait()
    return p.pid


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def test_a_busy_loop_on_the_same_cpu_shows_as_run_queue_delay(
    source: EbpfSource, reader: RunqReader, weighted_group: str | None
) -> None:
    cpu = 0
    run_victim(source, key=9001, cpu=cpu, group=weighted_group)  # alone in its group
    antagonists = busy_loops(2, cpu, weighted_group)
    try:
        time.sleep(0.1)
        run_victim(source, key=9002, cpu=cpu, group=weighted_group)
    finally:
        stop(antagonists)
    reader.refresh()
    alone, contended = reader.key_sample(9001), reader.key_sample(9002)
    assert alone["rql_count"] > 0 and contended["rql_count"] > 0
    p50_alone = quantile(histogram_of(alone), 0.5)
    p50_contended = quantile(histogram_of(contended), 0.5)
    print(
        f"alone: {alone['rql_count']:.0f} waits, {alone['rql_sum_ns'] / 1e6:.0f} ms, "
        f"p50 {p50_alone / 1e3:.0f} us; next to 2 busy loops: {contended['rql_count']:.0f} "
        f"waits, {contended['rql_sum_ns'] / 1e6:.0f} ms, p50 {p50_contended / 1e3:.0f} us; "
        f"load {os.getloadavg()[0]:.1f}"
    )
    # Two loops on its CPU leave the victim ~1/3 of it: ~0.67 s of waiting in its 1 s
    # of wall time; alone in its heavy group it waits for little but the kernel's work.
    assert contended["rql_sum_ns"] > 0.4e9
    assert contended["rql_sum_ns"] > 1.5 * alone["rql_sum_ns"]
    assert p50_contended > 2 * p50_alone


def test_untracked_tasks_are_not_counted(source: EbpfSource, reader: RunqReader) -> None:
    reader.refresh()
    before = set(reader_keys(source))
    antagonists = busy_loops(2, 1)  # context switches galore, none of them tracked
    try:
        victim = run_victim(source, key=9003, cpu=1)
    finally:
        stop(antagonists)
    reader.refresh()
    keys = set(reader_keys(source))
    assert keys - before == {9003}
    # Every task the kernel learnt belongs to a tracked process.
    tgids = {v.value for v in source.table("runq_task").values()}
    assert tgids <= {victim} | set(source.watched()), tgids
    assert all(p.pid not in tgids for p in antagonists)


def reader_keys(source: EbpfSource) -> list[int]:
    return [k.value for k in source.table("runq_totals")]


def bpf_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "bpf" in os.readlink(f"/proc/self/fd/{fd}"):
                count += 1
        except OSError:
            continue
    return count


def test_detaches_and_unloads_cleanly() -> None:
    require_root()
    baseline = bpf_fds()
    src = EbpfSource()
    try:
        src.start(lambda ev: None)
    except SourceUnavailable as e:
        skip_or_fail(f"the eBPF source cannot load here: {e}")
    try:
        reader = RunqReader(src)
        reader.start()
        attached = bpf_fds()
        reader.close()
        assert not src.runq_enabled
        assert bpf_fds() == attached - 4  # the four links are gone
        run_victim(src, key=9004, cpu=0)
        reader.refresh()
        assert reader.key_sample(9004)["rql_count"] == 0  # detached: nothing counted
        reader.start()
        run_victim(src, key=9005, cpu=0)
        reader.refresh()
        assert reader.key_sample(9005)["rql_count"] > 0  # and back
    finally:
        src.stop()
    assert not src.runq_enabled
    assert bpf_fds() == baseline  # programs, maps and links all closed


def test_daemon_record_carries_the_run_queue_histogram(agentd: AgentdProcess) -> None:
    with agentd.client() as client, client.session("rq") as session:
        result = session.run([sys.executable, "-c", VICTIM], label="python3 -m spin")
    assert result.returncode == 0
    records = wait_for_records(agentd)
    assert len(records) == 1, agentd.logs()[-3000:]
    logs = agentd.logs()
    if "collector.runq_unavailable" in logs:
        skip_or_fail(f"the daemon runs without the run-queue histogram: {logs[-2000:]}")
    run = records[0].group_run
    assert run["runq_waits_per_s"] > 0, run
    assert 0 < run["runq_p50_us"] <= run["runq_p99_us"], run


def test_an_ended_tool_call_leaves_the_maps_but_stays_in_the_node_total(
    source: EbpfSource,
) -> None:
    now = [1000.0]
    reader = RunqReader(source, clock=lambda: now[0])
    reader.start()
    try:
        run_victim(source, key=9006, cpu=0)
        reader.refresh()
        waits = reader.key_sample(9006)["rql_count"]
        assert waits > 0
        assert reader.node_sample()["rql_count"] >= waits
        reader.forget(9006)  # the tool call ended
        now[0] += 2.0
        reader.refresh()
        assert 9006 not in reader_keys(source)  # deleted in the kernel
        assert not [k for k in source.table("runq_hist") if k.key == 9006]
        assert reader.node_sample()["rql_count"] >= waits  # and still counted for the node
    finally:
        reader.close()
