"""cgroup v1 backend: one group per tool call in each of memory, cpu, cpuacct, pids, freezer.

The group for `rel` is `<mount>/<root>/<rel>` in every hierarchy. Controllers that
share a mount (cpu,cpuacct co-mounted) are one hierarchy: we mkdir/move/rmdir once.
"""

from __future__ import annotations

import contextlib
import errno
import signal

from agentd.cgroups.base import UNLIMITED, CgroupError, GroupLimits, GroupUsage
from agentd.cgroups.common import (
    FREEZE_TIMEOUT_S,
    check_rel,
    freeze_signal_thaw,
    join,
    mkdir_exist_ok,
    procs_of,
    read_int,
    remove_tree,
    wait_until,
    walk_post_order,
)
from agentd.cgroups.fs import CgroupFs, FsError
from agentd.cgroups.usage import usage_at

V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")

# Order in which hierarchies are created and processes moved. memory and pids come
# first because they are the containment that protects the node (a runaway allocation
# or fork loop): if a later write fails (cpu refuses RT tasks with EINVAL, for one) the
# process is already contained, and the caller, which keeps it blocked until move()
# returns, kills it. Order does not matter otherwise: the process cannot exec before
# every write has returned.
_ORDER = ("memory", "pids", "cpu", "cpuacct", "freezer")

#: The kernel gives every new v1 cpu group this period; we never change it.
CFS_PERIOD_US = 100_000
#: The kernel refuses cfs quotas below 1 ms.
MIN_CFS_QUOTA_US = 1_000

_SUPPORTED = frozenset(
    {"memory_max", "memory_high", "cpu_max_cores", "cpu_weight", "pids_max"},
)


class V1Backend:
    name = "v1"

    def __init__(self, mounts: dict[str, str], root: str, fs: CgroupFs | None = None) -> None:
        missing = [c for c in V1_CONTROLLERS if c not in mounts]
        if missing:
            raise CgroupError(
                f"cgroup v1 hierarchies missing for: {', '.join(missing)} "
                f"(mounted: {', '.join(sorted(mounts)) or 'none'})"
            )
        self._fs = fs or CgroupFs()
        self._root = check_rel(root.strip("/"), allow_empty=False)
        # Per-controller base directory (<mount>/<root>).
        self._base = {c: f"{mounts[c].rstrip('/')}/{self._root}" for c in V1_CONTROLLERS}
        # Distinct hierarchies in _ORDER; co-mounted controllers collapse into one.
        self._hier: list[str] = []
        for c in _ORDER:
            if self._base[c] not in self._hier:
                self._hier.append(self._base[c])

    # -- introspection -----------------------------------------------------------

    def controllers(self) -> list[str]:
        return list(V1_CONTROLLERS)

    def supported_limits(self) -> frozenset[str]:
        """GroupLimits fields this backend applies; memory_low has no v1 equivalent and is
        ignored silently, so callers that care must check here."""
        return _SUPPORTED

    def hierarchies(self) -> list[str]:
        """The distinct base directories (one per mounted hierarchy), in move order."""
        return list(self._hier)

    def root_path(self) -> str:
        return self._base["memory"]

    def path_of(self, rel: str) -> str:
        return join(self._base["memory"], check_rel(rel))

    def path_in(self, controller: str, rel: str) -> str:
        """Path of `rel` in `controller`'s hierarchy (e.g. for reading cpu.stat)."""
        return join(self._base[controller], check_rel(rel))

    def exists(self, rel: str) -> bool:
        return self._fs.is_dir(self.path_of(rel))

    def children(self, rel: str) -> list[str]:
        return sorted(self._fs.subdirs(self.path_of(rel)))

    # -- lifecycle ---------------------------------------------------------------

    def ensure_root(self) -> None:
        for base in self._hier:
            mount = base[: -len(self._root) - 1]
            cur = mount
            for part in self._root.split("/"):
                cur = f"{cur}/{part}"
                mkdir_exist_ok(self._fs, cur)
            mkdir_exist_ok(self._fs, f"{base}/sessions")

    def create(self, rel: str, limits: GroupLimits) -> None:
        check_rel(rel, allow_empty=False)
        created: list[str] = []
        try:
            for base in self._hier:
                path = f"{base}/{rel}"
                try:
                    self._fs.mkdir(path)
                except FsError as e:
                    if e.errno == errno.EEXIST:
                        raise CgroupError(f"cgroup {path} already exists") from None
                    raise
                created.append(path)
            # A group the kernel just created has the default period: no read needed.
            self._apply(rel, limits, CFS_PERIOD_US)
        except BaseException:
            # Best-effort rollback; the original error is what the caller needs.
            for path in reversed(created):
                with contextlib.suppress(CgroupError):
                    self._fs.rmdir(path)
            raise

    def set_limits(self, rel: str, limits: GroupLimits) -> None:
        check_rel(rel, allow_empty=False)
        period = CFS_PERIOD_US
        if limits.cpu_max_cores is not None:
            period = read_int(
                self._fs, f"{self._base['cpu']}/{rel}/cpu.cfs_period_us", CFS_PERIOD_US
            )
        self._apply(rel, limits, period)

    def _apply(self, rel: str, limits: GroupLimits, period: int) -> None:
        w = self._fs.write_text
        if limits.memory_max is not None:
            w(f"{self._base['memory']}/{rel}/memory.limit_in_bytes", str(limits.memory_max))
        if limits.memory_high is not None:
            w(f"{self._base['memory']}/{rel}/memory.soft_limit_in_bytes", str(limits.memory_high))
        # memory_low: no v1 knob (see supported_limits()).
        if limits.cpu_max_cores is not None:
            quota = UNLIMITED
            if limits.cpu_max_cores != UNLIMITED:
                quota = max(MIN_CFS_QUOTA_US, round(limits.cpu_max_cores * period))
            w(f"{self._base['cpu']}/{rel}/cpu.cfs_quota_us", str(quota))
        if limits.cpu_weight is not None:
            shares = max(2, limits.cpu_weight * 1024 // 100)
            w(f"{self._base['cpu']}/{rel}/cpu.shares", str(shares))
        if limits.pids_max is not None:
            pids = "max" if limits.pids_max == UNLIMITED else str(limits.pids_max)
            w(f"{self._base['pids']}/{rel}/pids.max", pids)

    def set_cpu_idle(self, rel: str, idle: bool) -> None:
        check_rel(rel, allow_empty=False)
        self._fs.write_text(f"{self._base['cpu']}/{rel}/cpu.idle", "1" if idle else "0")

    def move(self, rel: str, pid: int) -> None:
        """Write `pid` to cgroup.procs in every hierarchy, memory first (see _ORDER).

        A partial move is not rolled back: the caller keeps the process blocked and
        kills it when this raises.
        """
        check_rel(rel, allow_empty=False)
        value = str(pid)
        for base in self._hier:
            self._fs.write_text(f"{base}/{rel}/cgroup.procs", value)

    def remove(self, rel: str) -> None:
        """Remove `rel` and descendants in every hierarchy, deepest first.

        Stops at the first busy hierarchy (memory first), so a busy group is left whole
        in the hierarchies that matter most rather than half-removed everywhere.
        `rel` may be "" to remove the whole root.
        """
        check_rel(rel)
        for base in self._hier:
            remove_tree(self._fs, join(base, rel))

    # -- observation -------------------------------------------------------------

    def procs(self, rel: str, recursive: bool = False) -> list[int]:
        return procs_of(self._fs, self.path_of(rel), recursive)

    def usage(self, rel: str) -> GroupUsage:
        return usage_at(self._fs, self.usage_paths(rel))

    def usage_paths(self, rel: str) -> dict[str, str]:
        check_rel(rel)
        return {c: join(self._base[c], rel) for c in ("memory", "cpu", "cpuacct", "pids")}

    # -- freezer / kill ----------------------------------------------------------

    def freeze(self, rel: str) -> None:
        path = f"{join(self._base['freezer'], check_rel(rel))}/freezer.state"
        self._fs.write_text(path, "FROZEN")
        # FROZEN is reported only once every task (descendants included) is frozen;
        # until then it reads FREEZING.
        if not wait_until(lambda: self._fs.read_text(path).strip() == "FROZEN", FREEZE_TIMEOUT_S):
            state = self._fs.read_text(path).strip()
            raise CgroupError(f"freeze {path}: still {state} after {FREEZE_TIMEOUT_S} s")

    def thaw(self, rel: str) -> None:
        path = f"{join(self._base['freezer'], check_rel(rel))}/freezer.state"
        self._fs.write_text(path, "THAWED")

    def is_frozen(self, rel: str) -> bool:
        path = f"{join(self._base['freezer'], check_rel(rel))}/freezer.state"
        # FREEZING counts: the group was asked to freeze and is getting there.
        return self._fs.read_text(path).strip() != "THAWED"

    def kill(self, rel: str, sig: int = signal.SIGKILL) -> int:
        """Freeze the subtree, signal every pid in it, thaw; for SIGKILL wait until empty.

        Pids come from the freezer hierarchy: that is the set the freeze guarantees
        cannot fork. Other signals may be caught or ignored, so only SIGKILL waits.
        """
        check_rel(rel)
        freezer = join(self._base["freezer"], rel)

        def thaw() -> None:
            if sig != signal.SIGKILL:
                self.thaw(rel)
                return
            # A descendant frozen on its own (Control, the pressure policy) stays frozen
            # when `rel` thaws, and a SIGKILLed task in a frozen v1 group never dies.
            for path in walk_post_order(self._fs, freezer):
                self._fs.write_text(f"{path}/freezer.state", "THAWED")

        return freeze_signal_thaw(
            freeze=lambda: self.freeze(rel),
            thaw=thaw,
            list_procs=lambda: procs_of(self._fs, freezer, recursive=True),
            sig=sig,
            wait_empty=sig == signal.SIGKILL,
            describe=freezer,
        )
