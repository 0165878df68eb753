"""What every tracking source emits: process events attributed to a tool call key."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.IntEnum):
    FORK = 1
    EXEC = 2
    EXIT = 3


@dataclass(frozen=True, slots=True)
class ProcEvent:
    """One process event of a watched process.

    `time_ns` is CLOCK_BOOTTIME (the clock /proc/<pid>/stat start times use), so a
    FORK's time is the process's start time and, with the pid, its identity.
    """

    kind: Kind
    key: int  # tool call key given to watch()
    pid: int  # the process (a tgid, never a thread id)
    time_ns: int
    ppid: int = 0  # FORK: the forking process
    comm: str = ""
    exe: str | None = None  # EXEC: the path given to execve
    argv: tuple[str, ...] | None = None  # EXEC: None when the source could not read it
    argv_truncated: bool = False
    exit_code: int | None = None  # EXIT: None when unknown (see signal)
    signal: int | None = None  # EXIT: the signal that ended it, when known
    # EXIT: CPU time of all its threads (user + system, ns) and its peak resident memory
    # (file + anon + shmem, bytes); None when the source cannot know them.
    cpu_ns: int | None = None
    peak_rss_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class LossReport:
    """What a source knows about the events it missed.

    `lost` is a count the source observed (ring buffer reserve failures, netlink
    sequence gaps, ...). `exact` is False when the source cannot see all of its losses
    (procfs scanning misses processes that live between two scans without a trace),
    so a `lost` of 0 then proves nothing.
    """

    source: str
    lost: int
    exact: bool
    detail: dict[str, int]


@dataclass(frozen=True, slots=True)
class GuardRecord:
    """What the in-kernel guard reported (eBPF source with the guard compiled in).

    kind "guard": a bound was crossed (`reason`, bits of agentd.enforcement.maps.G_*);
    kind "oom": the OOM killer chose process `pid` of the tool call `key`.
    """

    kind: str  # "guard" or "oom"
    key: int
    pid: int
    time_ns: int  # CLOCK_BOOTTIME
    comm: str
    value: int  # memory: the tool call's sum (bytes); fork: forks so far; oom: victim RSS
    limit: int
    session_value: int
    session_limit: int
    processes: int
    reason: int
    action: int  # the signal the kernel sent (0: reported only)
    trigger_pid: int = 0  # oom: whose allocation failed
    crossed_ns: int = 0  # CLOCK_BOOTTIME: the kernel found the bound crossed (before the signal)
