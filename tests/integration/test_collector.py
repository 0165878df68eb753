"""The collector on real cgroup v1 groups of this host and inside a real daemon."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from agentd_process import AgentdProcess, wait_for_records

from agentd.cgroups.base import GroupLimits
from agentd.cgroups.detect import detect_layout
from agentd.cgroups.v1 import V1Backend
from agentd.metrics.collector import Collector, CollectorSettings
from agentd.metrics.dataset import Dataset
from agentd.metrics.reader import CachedReader
from agentd.metrics.sources import group_sources, node_sources
from agentd.model import Intent, Resources, ToolCall, Usage

pytestmark = pytest.mark.root

# Memory touched after the move is charged to the group (v1 does not move charges).
BURN = "import sys\nsys.stdin.readline()\nb = bytearray(8 << 20)\nwhile True: pass\n"


@pytest.fixture
def v1(cgroup_v1_required: None) -> Iterator[V1Backend]:
    b = V1Backend(detect_layout().v1_mounts, f"agentd-test-{uuid.uuid4().hex[:8]}")
    b.ensure_root()
    b.create("sessions/s1", GroupLimits())
    try:
        yield b
    finally:
        try:
            b.kill("")
        finally:
            b.remove("")


def spawn_in(b: V1Backend, rel: str, code: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, text=True)
    b.move(rel, p.pid)
    assert p.stdin is not None
    p.stdin.write("go\n")
    p.stdin.flush()
    return p


def tool_call(tc_id: str, label: str = "burn") -> ToolCall:
    return ToolCall(
        id=tc_id,
        session_id="s1",
        owner_uid=0,
        intent=Intent(resources=Resources(memory_max=256 << 20, cpu=1.0), label=label),
        limits=Resources(),
        started_at=time.time(),
        launcher_pid=0,
    )


def test_collector_samples_a_real_group_and_records_it(v1: V1Backend, tmp_path: Path) -> None:
    rel = "sessions/s1/tc-burn"
    v1.create(rel, GroupLimits(cpu_max_cores=1.0))
    dataset = Dataset(tmp_path / "dataset.sqlite")
    reader = CachedReader()
    collector = Collector(
        node_sources(reader),
        group_sources(v1, reader),
        CollectorSettings(
            period_seconds=0.05, detail_period_seconds=0.1, window_seconds=5, before_seconds=1
        ),
        dataset,
    )
    for _ in range(5):  # the node ring has a past before the call begins
        collector.tick()
        time.sleep(0.05)
    tc = tool_call("tc-burn")
    collector.begin(tc)
    p = spawn_in(v1, rel, BURN)
    try:
        for _ in range(15):
            time.sleep(0.1)
            collector.tick()
        window = collector.node_window(1.0)
        assert collector.tracked() == ["tc-burn"]
        collector.tick()
        cpu = psutil.Process(p.pid).cpu_times()
        used_by_process = cpu.user + cpu.system
    finally:
        p.kill()
        p.wait()
    tc.ended_at = time.time()
    tc.usage = Usage(wall_seconds=tc.ended_at - tc.started_at, cpu_user_seconds=1.0)
    record = collector.end(tc)
    assert record is not None and collector.tracked() == []
    # What the group's counters say the burner used is what the kernel says it used
    # (its share of a busy shared node varies; the accounting must not).
    assert 0.0 < record.group_run["cpu_cores"] <= 1.1
    source_seconds = group_sources(v1, CachedReader())[0].sample(rel)["cpu_usage_us"] / 1e6
    # (the process also ran its interpreter start-up before the move: ~30 ms)
    assert source_seconds == pytest.approx(used_by_process, rel=0.1, abs=0.1)
    assert record.group_run["samples"] >= 10
    assert record.group_run["max_nr_tasks"] == 1
    assert record.group_run["max_mem_current_bytes"] > 1 << 20
    assert "runq_delay_frac" in record.group_run
    assert window.cpu_busy_cores >= 0.3 and window.seconds >= 0.8
    assert window.agentd_tool_calls == 1
    assert record.window_before["seconds"] > 0
    assert [r.tool_call_id for r in dataset.records()] == ["tc-burn"]
    assert not [p for p in reader.paths() if "tc-burn" in p]  # the ended group's files closed
    assert any("/sessions/s1/" in p for p in [p + "/" for p in reader.paths()])
    dataset.close()


def test_memory_events_and_oom_of_a_real_group(v1: V1Backend) -> None:
    rel = "sessions/s1/tc-oom"
    v1.create(rel, GroupLimits(memory_max=64 << 20))
    reader = CachedReader()
    detail = group_sources(v1, reader)[1]
    before = detail.sample(rel)
    p = spawn_in(v1, rel, "import sys\nsys.stdin.readline()\nb = bytearray(200 << 20)\n")
    p.wait(timeout=30)
    after = detail.sample(rel)
    assert p.returncode == -9  # OOM-killed
    assert after["mem_oom_kills"] == before["mem_oom_kills"] + 1
    assert after["mem_limit_hits"] > before["mem_limit_hits"]
    assert after["mem_peak_bytes"] >= 60 << 20
    assert after["pgfault"] > before["pgfault"]


def test_throttling_of_a_real_group(v1: V1Backend) -> None:
    rel = "sessions/s1/tc-throttled"
    v1.create(rel, GroupLimits(cpu_max_cores=0.1))
    source = group_sources(v1, CachedReader())[0]
    p = spawn_in(v1, rel, BURN)
    try:
        time.sleep(1.0)
        out = source.sample(rel)
    finally:
        p.kill()
        p.wait()
    assert out["cpu_nr_throttled"] >= 3
    assert out["cpu_throttled_us"] > 100_000
    assert out["cpu_usage_us"] < 400_000  # ~0.1 core over 1 s, with slack for a busy host


def test_daemon_records_every_finished_tool_call(agentd: AgentdProcess) -> None:
    with agentd.client() as client, client.session("rec") as session:
        result = session.run(
            [sys.executable, "-c", "sum(i * i for i in range(2_000_000))"],
            label="python3 -m squares",
            memory="256M",
        )
    assert result.returncode == 0
    path = Path(agentd.state_dir) / "dataset.sqlite"
    records = wait_for_records(agentd)
    assert len(records) == 1, agentd.logs()[-3000:]
    r = records[0]
    assert (r.tool_call_id, r.command_class, r.exit_code) == (result.tool_call_id, "squares", 0)
    assert r.intent["memory_max"] == 256 << 20
    assert r.duration_seconds == pytest.approx(result.usage.wall_seconds, rel=0.01)
    assert r.cpu_seconds > 0.05 and r.neighbours_max == 0
    assert r.window_run["seconds"] > 0
    assert os.path.getsize(path) > 0
