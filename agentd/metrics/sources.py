"""Metric sources: where a sample's numbers come from.

A node source returns node-wide numbers; a group source returns the numbers of one
cgroup (given relative to agentd's root, like the backends). Counters are returned
cumulative and turned into rates by the windows, so a source keeps no history of its
own (the schedstat source is the exception: it must survive processes exiting).

Two tiers keep the cost down: `detail = False` sources (CPU usage and throttling,
memory in use, node PSI and CPU) are read every period; `detail = True` ones (memory.stat,
memory events, peaks, run-queue delay, node faults, disk and net) every detail period.
New sources (hardware counters where the PMU exists, an eBPF run-queue histogram)
plug in by implementing one of the two protocols; a source that fails is reported
once and left out of the sample, never fatal.
"""

from __future__ import annotations

import contextlib
import os
from typing import Protocol

from agentd.cgroups.base import CgroupBackend
from agentd.metrics import parse
from agentd.metrics.reader import CachedReader

Sample = dict[str, float]


class NodeSource(Protocol):
    name: str
    detail: bool

    def sample(self) -> Sample: ...


class GroupSource(Protocol):
    name: str
    detail: bool
    #: Reads every process of the group: too costly for the session and node-level
    #: groups (all of agentd's processes), so the collector uses it on tool calls only.
    per_process: bool

    def sample(self, rel: str) -> Sample: ...

    def forget(self, rel: str) -> None:
        """The group is gone: drop whatever the source keeps for it (open files, state)."""
        ...


class ProcNodeSource:
    """Node PSI (cpu, memory, io) and CPU time, run queue, context switches, forks."""

    name = "proc"
    detail = False

    def __init__(self, reader: CachedReader, proc: str = "/proc") -> None:
        self._read = reader.read
        self._proc = proc
        self._has_psi = os.path.exists(f"{proc}/pressure/cpu")

    def sample(self) -> Sample:
        out: Sample = {}
        if self._has_psi:
            for resource in ("cpu", "memory", "io"):
                text = self._read(f"{self._proc}/pressure/{resource}")
                for key, value in parse.parse_pressure(text).items():
                    out[f"psi_{resource}_{key}"] = value
        out.update(parse.parse_proc_stat(self._read(f"{self._proc}/stat")))
        return out


class ProcNodeDetailSource:
    """Node faults, reclaim, refaults, swap, available memory, disk and network."""

    name = "proc-detail"
    detail = True

    def __init__(self, reader: CachedReader, proc: str = "/proc") -> None:
        self._read = reader.read
        self._proc = proc

    def sample(self) -> Sample:
        p = self._proc
        out = parse.parse_vmstat(self._read(f"{p}/vmstat"))
        out.update(parse.parse_meminfo(self._read(f"{p}/meminfo")))
        out.update(parse.parse_diskstats(self._read(f"{p}/diskstats")))
        out.update(parse.parse_net_dev(self._read(f"{p}/net/dev")))
        return out


class _GroupFiles:
    def __init__(self, reader: CachedReader) -> None:
        self._reader = reader

    def forget(self, rel: str) -> None:
        for base in self._bases(rel):
            self._reader.forget(base + "/")

    def _bases(self, rel: str) -> list[str]:
        raise NotImplementedError


class CgroupV1Source(_GroupFiles):
    """v1, every period: CPU usage (cpuacct), throttling (cpu.stat), memory in use."""

    name = "cgroup-v1"
    detail = False
    per_process = False

    def __init__(self, backend: CgroupBackend, reader: CachedReader) -> None:
        super().__init__(reader)
        self._path_in = backend.path_in  # type: ignore[attr-defined]

    def sample(self, rel: str) -> Sample:
        read = self._reader.read
        cpu, acct, mem = self._bases(rel)
        out = parse.parse_cpu_stat_v1(read(f"{cpu}/cpu.stat"), read(f"{acct}/cpuacct.usage"))
        out["mem_current_bytes"] = float(read(f"{mem}/memory.usage_in_bytes"))
        return out

    def _bases(self, rel: str) -> list[str]:
        return [self._path_in(c, rel) for c in ("cpu", "cpuacct", "memory")]


class CgroupV1DetailSource(CgroupV1Source):
    """v1, every detail period: peak, memory.stat (faults, major faults, page-ins and
    -outs), failcnt and oom_control (v1 has no memory.events)."""

    name = "cgroup-v1-detail"
    detail = True

    def sample(self, rel: str) -> Sample:
        read = self._reader.read
        mem = self._path_in("memory", rel)
        out = {"mem_peak_bytes": float(read(f"{mem}/memory.max_usage_in_bytes"))}
        out.update(parse.parse_memory_stat(read(f"{mem}/memory.stat"), "v1"))
        out.update(
            parse.parse_memory_events_v1(
                read(f"{mem}/memory.failcnt"), read(f"{mem}/memory.oom_control")
            )
        )
        return out


class CgroupV2Source(_GroupFiles):
    """v2, every period: cpu.stat (usage and throttling) and memory.current."""

    name = "cgroup-v2"
    detail = False
    per_process = False

    def __init__(self, backend: CgroupBackend, reader: CachedReader) -> None:
        super().__init__(reader)
        self._path_of = backend.path_of

    def sample(self, rel: str) -> Sample:
        read = self._reader.read
        path = self._path_of(rel)
        out = parse.parse_cpu_stat_v2(read(f"{path}/cpu.stat"))
        out["mem_current_bytes"] = float(read(f"{path}/memory.current"))
        return out

    def _bases(self, rel: str) -> list[str]:
        return [self._path_of(rel)]


class CgroupV2DetailSource(CgroupV2Source):
    """v2, every detail period: memory.peak, memory.stat (faults, refaults, reclaim),
    memory.events, and the group's own PSI (cpu, memory, io .pressure)."""

    name = "cgroup-v2-detail"
    detail = True

    def sample(self, rel: str) -> Sample:
        read = self._reader.read
        path = self._path_of(rel)
        out: Sample = {}
        with contextlib.suppress(FileNotFoundError):  # memory.peak appeared in 5.19
            out["mem_peak_bytes"] = float(read(f"{path}/memory.peak"))
        out.update(parse.parse_memory_stat(read(f"{path}/memory.stat"), "v2"))
        out.update(parse.parse_memory_events_v2(read(f"{path}/memory.events")))
        for resource in ("cpu", "memory", "io"):
            try:
                text = read(f"{path}/{resource}.pressure")
            except FileNotFoundError:
                continue  # PSI per group needs CONFIG_PSI and the controller enabled
            for key, value in parse.parse_pressure(text).items():
                out[f"psi_{resource}_{key}"] = value
        return out


class SchedstatSource:
    """Run-queue delay of a group's processes from /proc/<pid>/schedstat, and block
    I/O delay from delay accounting (/proc/<pid>/stat field 42) when it is enabled.

    Per-pid counters vanish when a process exits, so the source keeps each live pid's
    last value and accumulates only positive deltas: the group's counter stays
    monotonic and an exited process keeps the delay it had accumulated until the
    last sample (what it accumulated after that is lost: at most one period).
    """

    name = "schedstat"
    detail = True
    per_process = True

    def __init__(self, backend: CgroupBackend, proc: str = "/proc") -> None:
        self._procs = backend.procs
        self._proc = proc
        self._last: dict[str, dict[int, tuple[int, int]]] = {}
        self._total: dict[str, list[float]] = {}
        self._delayacct = delayacct_enabled()

    def sample(self, rel: str) -> Sample:
        last = self._last.get(rel, {})
        total = self._total.setdefault(rel, [0.0, 0.0])
        seen: dict[int, tuple[int, int]] = {}
        for pid in self._procs(rel, recursive=True):
            try:
                with open(f"{self._proc}/{pid}/schedstat", "rb", buffering=0) as f:
                    _, delay, _ = parse.parse_schedstat(f.read().decode())
                blkio = self._blkio_ticks(pid) if self._delayacct else 0
            except (OSError, ValueError):
                continue  # exited between the listing and the read
            prev = last.get(pid, (0, 0))
            total[0] += max(0, delay - prev[0])
            total[1] += max(0, blkio - prev[1])
            seen[pid] = (delay, blkio)
        self._last[rel] = seen
        out = {"runq_delay_ns": total[0], "nr_tasks": float(len(seen))}
        if self._delayacct:
            out["blkio_delay_ticks"] = total[1]
        return out

    def _blkio_ticks(self, pid: int) -> int:
        with open(f"{self._proc}/{pid}/stat", "rb", buffering=0) as f:
            text = f.read().decode()
        # Fields after the command (which may contain spaces) start at field 3.
        fields = text[text.rindex(")") + 2 :].split()
        return int(fields[39])  # field 42: delayacct_blkio_ticks

    def forget(self, rel: str) -> None:
        self._last.pop(rel, None)
        self._total.pop(rel, None)


def delayacct_enabled(proc: str = "/proc") -> bool:
    try:
        with open(f"{proc}/sys/kernel/task_delayacct") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def node_sources(reader: CachedReader) -> list[NodeSource]:
    return [ProcNodeSource(reader), ProcNodeDetailSource(reader)]


def group_sources(backend: CgroupBackend, reader: CachedReader) -> list[GroupSource]:
    """The group sources for this backend's cgroup version."""
    if backend.name == "v1":
        return [
            CgroupV1Source(backend, reader),
            CgroupV1DetailSource(backend, reader),
            SchedstatSource(backend),
        ]
    return [
        CgroupV2Source(backend, reader),
        CgroupV2DetailSource(backend, reader),
        SchedstatSource(backend),
    ]
