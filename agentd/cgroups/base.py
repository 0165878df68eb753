"""The cgroup backend contract shared by the v1 and v2 backends.

Paths handed to a backend are *relative to the agentd root* ("sessions/s1/tc-0a1b"),
so the policy code never builds filesystem paths and never knows which cgroup
version it runs on. The daemon is the single writer of every file below its root.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Protocol


class CgroupError(Exception):
    """A cgroupfs operation failed; the message names the file and the reason."""


class GroupBusyError(CgroupError):
    """A group could not be removed because it still has processes or children."""


#: A limit value meaning "no limit" (written as "max" on v2, -1 on v1): lifts a
#: limit set earlier, which None (leave the file alone) cannot.
UNLIMITED = -1


@dataclass(frozen=True)
class GroupLimits:
    """Limits for one group; None leaves the file as it is (on a new group: the
    kernel default, no limit / inherit); UNLIMITED lifts memory_max, memory_high,
    cpu_max_cores and pids_max.

    cpu_weight uses the v2 scale (1..10000, default 100); the v1 backend maps it to
    cpu.shares (weight * 1024 / 100).
    """

    memory_max: int | None = None
    memory_high: int | None = None
    memory_low: int | None = None
    cpu_max_cores: float | None = None
    cpu_weight: int | None = None
    pids_max: int | None = None


@dataclass(frozen=True)
class GroupUsage:
    memory_current: int = 0
    memory_peak: int = 0
    oom_kills: int = 0
    cpu_user_usec: int = 0
    cpu_system_usec: int = 0
    cpu_throttled_usec: int = 0
    cpu_nr_throttled: int = 0
    pids_current: int = 0
    pids_peak: int = 0


class CgroupBackend(Protocol):
    """One implementation per cgroup version; see v1.py and v2.py."""

    #: "v1" or "v2"
    name: str

    def controllers(self) -> list[str]:
        """Controllers this backend manages (e.g. ["memory", "cpu", "pids", "freezer"])."""
        ...

    def root_path(self) -> str:
        """The root as the user should see it (a filesystem path, for logs and status)."""
        ...

    def ensure_root(self) -> None:
        """Create the root (and on v2 enable controllers down to it). Idempotent."""
        ...

    def create(self, rel: str, limits: GroupLimits) -> None:
        """Create group `rel` (its parent must exist) and apply `limits`.

        On v2 this enables the needed controllers in the parent's subtree_control.
        Raises CgroupError if the group exists already.
        """
        ...

    def set_limits(self, rel: str, limits: GroupLimits) -> None:
        """Apply every non-None field of `limits` to an existing group."""
        ...

    def set_cpu_idle(self, rel: str, idle: bool) -> None:
        """cpu.idle of a group (kernel 5.15+, v1 and v2): an idle group's tasks run only
        when no sibling group's task wants the CPU, and are preempted at the wake-up of
        one (SCHED_IDLE for the whole group). Its cpu.shares / cpu.weight is kept for
        when it stops being idle (and cannot be written meanwhile)."""
        ...

    def move(self, rel: str, pid: int) -> None:
        """Move process `pid` (all its threads) into `rel`, in every hierarchy."""
        ...

    def procs(self, rel: str, recursive: bool = False) -> list[int]:
        """Pids in `rel` (and its descendants when recursive)."""
        ...

    def usage(self, rel: str) -> GroupUsage:
        """Counters of `rel`, hierarchical (descendants included)."""
        ...

    def usage_paths(self, rel: str) -> dict[str, str]:
        """The directories usage() reads, by controller (agentd.cgroups.usage)."""
        ...

    def freeze(self, rel: str) -> None: ...

    def thaw(self, rel: str) -> None: ...

    def is_frozen(self, rel: str) -> bool:
        """Whether `rel` itself was asked to freeze (freezing or frozen)."""
        ...

    def kill(self, rel: str, sig: int = signal.SIGKILL) -> int:
        """Signal every process in `rel` and its descendants; race-free against forks
        (cgroup.kill on v2, freeze-signal-thaw on v1). Returns how many were signalled."""
        ...

    def remove(self, rel: str) -> None:
        """Remove `rel` and its descendant groups, deepest first. Raises GroupBusyError
        if a process is still inside; a missing group is not an error."""
        ...

    def exists(self, rel: str) -> bool: ...

    def children(self, rel: str) -> list[str]:
        """Names of the direct child groups of `rel` ("" is the root)."""
        ...

    def path_of(self, rel: str) -> str:
        """Display path of `rel` (in the memory hierarchy on v1)."""
        ...
