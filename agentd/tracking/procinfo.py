"""Reading /proc: start times (process identity), argv, exe, and the clocks.

Identity: a pid plus its start time (CLOCK_BOOTTIME) names one process even after
the pid is reused. /proc/<pid>/stat gives the start time in clock ticks (10 ms), the
kernel sources in nanoseconds, so identities from both are matched with a tolerance.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")
TICK_NS = 1_000_000_000 // CLK_TCK


def boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def boot_to_wall(ns: int) -> float:
    """A CLOCK_BOOTTIME timestamp as Unix time (seconds)."""
    return time.time() - (boottime_ns() - ns) / 1e9


def monotonic_to_boot_offset_ns() -> int:
    """BOOTTIME - MONOTONIC now (they differ by the time spent suspended)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    ppid: int
    comm: str
    start_ns: int  # CLOCK_BOOTTIME, tick resolution
    state: str


def read_stat(pid: int) -> ProcStat | None:
    """/proc/<pid>/stat, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: it ends at the last ')'.
    lpar, rpar = raw.index(b"("), raw.rindex(b")")
    fields = raw[rpar + 2 :].split()
    return ProcStat(
        pid=pid,
        comm=raw[lpar + 1 : rpar].decode(errors="replace"),
        state=fields[0].decode(),
        ppid=int(fields[1]),
        start_ns=int(fields[19]) * TICK_NS,
    )


def read_argv(pid: int) -> tuple[str, ...] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if not raw:
        return None  # a zombie or a kernel thread
    return tuple(a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0"))


def read_exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class Usage:
    """What a live process used so far, from /proc/<pid>/stat and status."""

    cpu_ns: int  # utime + stime of all its threads, tick resolution
    hwm_bytes: int  # VmHWM: peak resident memory of its current mm
    anon_bytes: int
    file_bytes: int
    shmem_bytes: int
    swap_bytes: int

    @property
    def rss_bytes(self) -> int:
        return self.anon_bytes + self.file_bytes + self.shmem_bytes


def read_usage(pid: int) -> Usage | None:
    """CPU time and memory of a live process; None if it is gone (or a kernel thread,
    whose status has no Vm lines). Two small reads: cheap enough for watch() and scans."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    # Five find()s instead of a Python loop over the ~55 lines: this runs on every
    # BeginToolCall (the launcher is watched before it may execute).
    kb: dict[bytes, int] = {}
    for name in (b"\nVmHWM:", b"\nRssAnon:", b"\nRssFile:", b"\nRssShmem:", b"\nVmSwap:"):
        start = status.find(name)
        if start >= 0:
            end = status.find(b"\n", start + 1)
            kb[name[1:-1]] = int(status[start + len(name) : end if end >= 0 else None].split()[0])
    if b"VmHWM" not in kb:
        return None
    return Usage(
        cpu_ns=ticks * TICK_NS, hwm_bytes=kb[b"VmHWM"] * 1024,
        anon_bytes=kb.get(b"RssAnon", 0) * 1024, file_bytes=kb.get(b"RssFile", 0) * 1024,
        shmem_bytes=kb.get(b"RssShmem", 0) * 1024, swap_bytes=kb.get(b"VmSwap", 0) * 1024,
    )  # fmt: skip


def same_start(a_ns: int, b_ns: int) -> bool:
    """Whether two start times (one possibly tick-rounded) name the same process.

    A pid cannot be reused within two ticks: that would take pid_max forks in 20 ms.
    """
    return abs(a_ns - b_ns) <= 2 * TICK_NS


def descendants(roots: set[int]) -> list[ProcStat]:
    """Every live process descending from `roots` (roots included), parents first.

    One pass over /proc; processes reparented away from the roots are not found (their
    cgroup is the other seed, see Tracker.seed)."""
    stats: dict[int, ProcStat] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(int(name))
            if st is not None:
                stats[st.pid] = st
    children: dict[int, list[int]] = {}
    for st in stats.values():
        children.setdefault(st.ppid, []).append(st.pid)
    out: list[ProcStat] = []
    todo = [p for p in roots if p in stats]
    seen: set[int] = set()
    while todo:
        pid = todo.pop(0)
        if pid in seen:
            continue
        seen.add(pid)
        out.append(stats[pid])
        todo.extend(children.get(pid, []))
    return out
