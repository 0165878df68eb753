"""Group sources on a fake cgroup2 tree (regular files under tmp_path) and a fake /proc:
what the v2 collector reads, without a v2 host (the VM tier has the real one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentd.cgroups.v2 import V2Backend
from agentd.metrics.reader import CachedReader
from agentd.metrics.sources import (
    CgroupV2DetailSource,
    CgroupV2Source,
    SchedstatSource,
    group_sources,
)

PSI = (
    "some avg10=1.00 avg60=0.00 avg300=0.00 total={some}\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total={full}\n"
)


def write_group(base: Path, usage: int, pids: list[int], pressure: bool = True) -> None:
    base.mkdir(parents=True, exist_ok=True)
    files = {
        "cpu.stat": f"usage_usec {usage}\nuser_usec 1\nsystem_usec 1\nnr_periods 5\n"
        "nr_throttled 2\nthrottled_usec 300\n",
        "memory.current": "1048576\n",
        "memory.peak": "2097152\n",
        "memory.stat": "anon 4096\nfile 8192\npgfault 10\npgmajfault 1\n"
        "workingset_refault_anon 0\nworkingset_refault_file 3\npgscan 4\npgsteal 4\n",
        "memory.events": "low 0\nhigh 1\nmax 2\noom 0\noom_kill 0\n",
        "cgroup.procs": "".join(f"{p}\n" for p in pids),
    }
    if pressure:
        files["cpu.pressure"] = PSI.format(some=1000, full=10)
        files["memory.pressure"] = PSI.format(some=500, full=50)
    for name, text in files.items():
        (base / name).write_text(text)


def test_v2_source_reads_cpu_memory_events_and_group_psi(tmp_path: Path) -> None:
    backend = V2Backend(str(tmp_path), "agentd")
    write_group(tmp_path / "agentd" / "sessions" / "s1" / "tc", usage=7000, pids=[])
    reader = CachedReader()
    fast = CgroupV2Source(backend, reader).sample("sessions/s1/tc")
    assert fast == {
        "cpu_usage_us": 7000,
        "cpu_nr_periods": 5,
        "cpu_nr_throttled": 2,
        "cpu_throttled_us": 300,
        "mem_current_bytes": 1 << 20,
    }
    detail = CgroupV2DetailSource(backend, reader)
    out = detail.sample("sessions/s1/tc")
    assert out["mem_peak_bytes"] == 2 << 20
    assert out["refault_file"] == 3 and out["mem_limit_hits"] == 2 and out["mem_high_events"] == 1
    assert out["psi_cpu_some_total_us"] == 1000 and out["psi_memory_full_total_us"] == 50
    assert "psi_io_some_total_us" not in out  # io.pressure absent: skipped, not an error
    # files stay open between samples and are re-read; forget closes them
    (tmp_path / "agentd" / "sessions" / "s1" / "tc" / "cpu.stat").write_text("usage_usec 9\n")
    assert CgroupV2Source(backend, reader).sample("sessions/s1/tc")["cpu_usage_us"] == 9
    assert reader.open_files() >= 5
    detail.forget("sessions/s1/tc")
    assert reader.open_files() == 0


def test_v2_source_fails_loudly_for_a_missing_group(tmp_path: Path) -> None:
    backend = V2Backend(str(tmp_path), "agentd")
    with pytest.raises(Exception, match=r"cpu\.stat"):
        CgroupV2Source(backend, CachedReader()).sample("sessions/gone")


def test_group_sources_follow_the_backend_version(tmp_path: Path) -> None:
    sources = group_sources(V2Backend(str(tmp_path), "agentd"), CachedReader())
    assert [(s.name, s.detail, s.per_process) for s in sources] == [
        ("cgroup-v2", False, False),
        ("cgroup-v2-detail", True, False),
        ("schedstat", True, True),
    ]


def test_schedstat_accumulates_across_exits(tmp_path: Path) -> None:
    """Run delay stays monotonic when a process exits: its last value is kept."""
    proc = tmp_path / "proc"
    backend = V2Backend(str(tmp_path / "cg"), "agentd")
    group = tmp_path / "cg" / "agentd" / "tc"
    write_group(group, 0, [10, 11])

    def schedstat(pid: int, delay: int) -> None:
        (proc / str(pid)).mkdir(parents=True, exist_ok=True)
        (proc / str(pid) / "schedstat").write_text(f"1000 {delay} 3\n")

    source = SchedstatSource(backend, proc=str(proc))
    schedstat(10, 100)
    schedstat(11, 50)
    assert source.sample("tc") == {"runq_delay_ns": 150.0, "nr_tasks": 2.0}
    schedstat(10, 400)  # +300
    (group / "cgroup.procs").write_text("10\n")  # 11 exited
    assert source.sample("tc") == {"runq_delay_ns": 450.0, "nr_tasks": 1.0}
    (group / "cgroup.procs").write_text("10\n12\n")  # 12 listed but already gone
    assert source.sample("tc")["runq_delay_ns"] == 450.0
    source.forget("tc")
    assert source.sample("tc")["runq_delay_ns"] == 400.0  # starts over
