"""Metric sources: where a sample's numbers come from.

A node source returns node-wide numbers; a group source returns the numbers of one
cgroup (given relative to agentd's root, like the backends). Counters are returned
cumulative and turned into rates by the windows, so a source keeps no history of its
own (the schedstat source is the exception: it must survive processes exiting).
New sources (hardware counters where the PMU exists, an eBPF run-queue histogram)
plug in by implementing one of the two protocols; a source that fails is reported
once and dropped from the sample, never fatal.
"""

from __future__ import annotations

import contextlib
import os
from typing import Protocol

from agentd.cgroups.base import CgroupBackend
from agentd.cgroups.fs import CgroupFs, FsError
from agentd.metrics import parse

Sample = dict[str, float]


class NodeSource(Protocol):
    name: str

    def sample(self) -> Sample: ...


class GroupSource(Protocol):
    name: str

    def sample(self, rel: str) -> Sample: ...

    def forget(self, rel: str) -> None:
        """The group is gone: drop whatever state the source keeps for it."""
        ...


def _read(path: str) -> str:
    with open(path, "rb", buffering=0) as f:
        return f.read(262144).decode()


class ProcNodeSource:
    """Node-wide kernel counters from /proc: PSI, CPU, faults and reclaim, disk, net."""

    name = "proc"

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc
        self._has_psi = os.path.exists(f"{proc}/pressure/cpu")

    def sample(self) -> Sample:
        p = self._proc
        out: Sample = {}
        if self._has_psi:
            for resource in ("cpu", "memory", "io"):
                for key, value in parse.parse_pressure(_read(f"{p}/pressure/{resource}")).items():
                    out[f"psi_{resource}_{key}"] = value
        out.update(parse.parse_proc_stat(_read(f"{p}/stat")))
        out.update(parse.parse_vmstat(_read(f"{p}/vmstat")))
        out.update(parse.parse_meminfo(_read(f"{p}/meminfo")))
        out.update(parse.parse_diskstats(_read(f"{p}/diskstats")))
        out.update(parse.parse_net_dev(_read(f"{p}/net/dev")))
        return out


class CgroupV1Source:
    """A group's CPU, throttling, memory and memory events on cgroup v1."""

    name = "cgroup-v1"

    def __init__(self, backend: CgroupBackend, fs: CgroupFs | None = None) -> None:
        self._path_in = backend.path_in  # type: ignore[attr-defined]
        self._fs = fs or CgroupFs()

    def sample(self, rel: str) -> Sample:
        read = self._fs.read_text
        cpu = self._path_in("cpu", rel)
        acct = self._path_in("cpuacct", rel)
        mem = self._path_in("memory", rel)
        out = parse.parse_cpu_stat_v1(read(f"{cpu}/cpu.stat"), read(f"{acct}/cpuacct.usage"))
        out["mem_current_bytes"] = float(read(f"{mem}/memory.usage_in_bytes"))
        out["mem_peak_bytes"] = float(read(f"{mem}/memory.max_usage_in_bytes"))
        out.update(parse.parse_memory_stat(read(f"{mem}/memory.stat"), "v1"))
        out.update(
            parse.parse_memory_events_v1(
                read(f"{mem}/memory.failcnt"), read(f"{mem}/memory.oom_control")
            )
        )
        return out

    def forget(self, rel: str) -> None:
        pass


class CgroupV2Source:
    """A group's CPU, memory, memory events and its own PSI on cgroup v2."""

    name = "cgroup-v2"

    def __init__(self, backend: CgroupBackend, fs: CgroupFs | None = None) -> None:
        self._path_of = backend.path_of
        self._fs = fs or CgroupFs()

    def sample(self, rel: str) -> Sample:
        read = self._fs.read_text
        path = self._path_of(rel)
        out = parse.parse_cpu_stat_v2(read(f"{path}/cpu.stat"))
        out["mem_current_bytes"] = float(read(f"{path}/memory.current"))
        with contextlib.suppress(FsError):  # memory.peak appeared in 5.19
            out["mem_peak_bytes"] = float(read(f"{path}/memory.peak"))
        out.update(parse.parse_memory_stat(read(f"{path}/memory.stat"), "v2"))
        out.update(parse.parse_memory_events_v2(read(f"{path}/memory.events")))
        for resource in ("cpu", "memory", "io"):
            try:
                text = read(f"{path}/{resource}.pressure")
            except FsError:
                continue  # PSI per group needs CONFIG_PSI and the controller enabled
            for key, value in parse.parse_pressure(text).items():
                out[f"psi_{resource}_{key}"] = value
        return out

    def forget(self, rel: str) -> None:
        pass


class SchedstatSource:
    """Run-queue delay of a group's processes from /proc/<pid>/schedstat, and block
    I/O delay from delay accounting (/proc/<pid>/stat field 42) when it is enabled.

    Per-pid counters vanish when a process exits, so the source keeps each live pid's
    last value and accumulates only positive deltas: the group's counter stays
    monotonic and an exited process keeps the delay it had accumulated until the
    last sample (what it accumulated after that is lost: at most one period).
    """

    name = "schedstat"

    def __init__(self, backend: CgroupBackend, proc: str = "/proc") -> None:
        self._procs = backend.procs
        self._proc = proc
        self._last: dict[str, dict[int, tuple[int, int, int]]] = {}
        self._total: dict[str, list[float]] = {}
        self._delayacct = _delayacct_enabled()

    def sample(self, rel: str) -> Sample:
        last = self._last.setdefault(rel, {})
        total = self._total.setdefault(rel, [0.0, 0.0, 0.0])
        seen: dict[int, tuple[int, int, int]] = {}
        for pid in self._procs(rel, recursive=True):
            try:
                _, delay, _ = parse.parse_schedstat(_read(f"{self._proc}/{pid}/schedstat"))
                blkio = self._blkio_ticks(pid) if self._delayacct else 0
            except (OSError, ValueError):
                continue  # exited between the listing and the read
            prev = last.get(pid, (0, 0, 0))
            total[0] += max(0, delay - prev[0])
            total[1] += max(0, blkio - prev[1])
            seen[pid] = (delay, blkio, 0)
        self._last[rel] = seen
        total[2] = float(len(seen))
        out = {"runq_delay_ns": total[0], "nr_tasks": total[2]}
        if self._delayacct:
            out["blkio_delay_ticks"] = total[1]
        return out

    def _blkio_ticks(self, pid: int) -> int:
        text = _read(f"{self._proc}/{pid}/stat")
        # Fields after the command (which may contain spaces) start at field 3.
        fields = text[text.rindex(")") + 2 :].split()
        return int(fields[39])  # field 42: delayacct_blkio_ticks

    def forget(self, rel: str) -> None:
        self._last.pop(rel, None)
        self._total.pop(rel, None)


def _delayacct_enabled() -> bool:
    try:
        return _read("/proc/sys/kernel/task_delayacct").strip() == "1"
    except OSError:
        return False


def group_sources(backend: CgroupBackend) -> list[GroupSource]:
    """The group sources for this backend's cgroup version."""
    cgroup: GroupSource = (
        CgroupV1Source(backend) if backend.name == "v1" else CgroupV2Source(backend)
    )
    return [cgroup, SchedstatSource(backend)]
