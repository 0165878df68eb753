"""cgroup v2 backend: one unified hierarchy; the group for `rel` is `<mount>/<root>/<rel>`.

`root` is relative to the cgroup2 mount and may be nested, e.g.
"system.slice/agentd.service" under systemd `Delegate=yes`. The "no internal
processes" rule applies: a group with controllers enabled in its subtree_control
cannot hold processes, so processes live only in leaves (tool calls, and the daemon's
own leaf, see move_self_to_leaf()).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal

from agentd.cgroups.base import UNLIMITED, CgroupError, GroupLimits, GroupUsage
from agentd.cgroups.common import (
    FREEZE_TIMEOUT_S,
    KILL_TIMEOUT_S,
    check_rel,
    freeze_signal_thaw,
    join,
    mkdir_exist_ok,
    parse_keyed,
    parse_pids,
    procs_of,
    remove_tree,
    wait_until,
)
from agentd.cgroups.fs import CgroupFs, FsError
from agentd.cgroups.usage import UNIFIED, usage_at

V2_CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
#: The kernel refuses cpu.max quotas below 1 ms.
MIN_CPU_QUOTA_US = 1_000

_SUPPORTED = frozenset(
    {"memory_max", "memory_high", "memory_low", "cpu_max_cores", "cpu_weight", "pids_max"},
)


class V2Backend:
    name = "v2"

    def __init__(self, mount: str, root: str, fs: CgroupFs | None = None) -> None:
        self._fs = fs or CgroupFs()
        self._mount = mount.rstrip("/") or "/"
        self._root = check_rel(root.strip("/"), allow_empty=False)
        self._base = f"{self._mount}/{self._root}"
        # Directories whose subtree_control is known to have all of V2_CONTROLLERS, so
        # create() reads each parent's subtree_control at most once.
        self._enabled: set[str] = set()
        self._has_kill: bool | None = None

    # -- introspection -----------------------------------------------------------

    def controllers(self) -> list[str]:
        return list(V2_CONTROLLERS)

    def supported_limits(self) -> frozenset[str]:
        return _SUPPORTED

    def root_path(self) -> str:
        return self._base

    def path_of(self, rel: str) -> str:
        return join(self._base, check_rel(rel))

    def exists(self, rel: str) -> bool:
        return self._fs.is_dir(self.path_of(rel))

    def children(self, rel: str) -> list[str]:
        return sorted(self._fs.subdirs(self.path_of(rel)))

    # -- controllers -------------------------------------------------------------

    def _enable(self, path: str) -> None:
        """Make sure `path`'s subtree_control has memory, cpu and pids (one write)."""
        if path in self._enabled:
            return
        sc = f"{path}/cgroup.subtree_control"
        have = set(self._fs.read_text(sc).split())
        missing = [c for c in V2_CONTROLLERS if c not in have]
        if missing:
            try:
                self._fs.write_text(sc, " ".join(f"+{c}" for c in missing))
            except FsError as e:
                raise CgroupError(_enable_hint(e, path, missing)) from None
        self._enabled.add(path)

    def _try_enable_ancestor(self, path: str) -> None:
        """Best effort on groups above our root: enable what the group offers.

        Under systemd these usually already are enabled (Delegate=yes) and not ours to
        change; a refusal here is reported later, precisely, when the root itself
        lacks a controller.
        """
        try:
            offered = set(self._fs.read_text(f"{path}/cgroup.controllers").split())
            have = set(self._fs.read_text(f"{path}/cgroup.subtree_control").split())
        except FsError:
            return
        missing = [c for c in V2_CONTROLLERS if c in offered and c not in have]
        if missing:
            try:
                self._fs.write_text(
                    f"{path}/cgroup.subtree_control", " ".join(f"+{c}" for c in missing)
                )
            except FsError:
                return

    def ensure_root(self) -> None:
        cur = self._mount
        for part in self._root.split("/"):
            self._try_enable_ancestor(cur)
            cur = f"{cur}/{part}"
            mkdir_exist_ok(self._fs, cur)
        offered = self._fs.read_text(f"{self._base}/cgroup.controllers").split()
        lacking = [c for c in V2_CONTROLLERS if c not in offered]
        if lacking:
            raise CgroupError(
                f"cgroup v2 root {self._base} offers only [{' '.join(offered)}]; missing "
                f"{', '.join(lacking)}: enable them in the parent's cgroup.subtree_control "
                "(under systemd: Delegate=yes on the unit)"
            )
        self._enable(self._base)
        mkdir_exist_ok(self._fs, f"{self._base}/sessions")
        self._enable(f"{self._base}/sessions")

    def move_self_to_leaf(self, leaf: str = "daemon") -> str:
        """Move this process (and any other process of the root) into `<root>/<leaf>`.

        Under systemd Delegate=yes the service starts *in* the delegated root, and the
        no-internal-processes rule then forbids enabling controllers there. Call this
        before ensure_root(). Other processes found in the root belong to the same
        service (we own that cgroup), and would block ensure_root() just the same, so
        they move too. Returns the leaf's path.
        """
        check_rel(leaf, allow_empty=False)
        path = f"{self._base}/{leaf}"
        mkdir_exist_ok(self._fs, path)
        me = os.getpid()
        self._fs.write_text(f"{path}/cgroup.procs", str(me))
        for pid in parse_pids(self._fs.read_text(f"{self._base}/cgroup.procs")):
            try:
                self._fs.write_text(f"{path}/cgroup.procs", str(pid))
            except FsError as e:
                if e.errno != errno.ESRCH:  # exited meanwhile
                    raise
        return path

    # -- lifecycle ---------------------------------------------------------------

    def create(self, rel: str, limits: GroupLimits) -> None:
        check_rel(rel, allow_empty=False)
        parent, _, _ = rel.rpartition("/")
        self._enable(join(self._base, parent))
        path = f"{self._base}/{rel}"
        try:
            self._fs.mkdir(path)
        except FsError as e:
            if e.errno == errno.EEXIST:
                raise CgroupError(f"cgroup {path} already exists") from None
            raise
        try:
            self._apply(path, limits)
        except BaseException:
            # Best-effort rollback; the original error is what the caller needs.
            with contextlib.suppress(CgroupError):
                self._fs.rmdir(path)
            raise

    def set_limits(self, rel: str, limits: GroupLimits) -> None:
        self._apply(join(self._base, check_rel(rel, allow_empty=False)), limits)

    def set_cpu_idle(self, rel: str, idle: bool) -> None:
        path = join(self._base, check_rel(rel, allow_empty=False))
        self._fs.write_text(f"{path}/cpu.idle", "1" if idle else "0")

    def _apply(self, path: str, limits: GroupLimits) -> None:
        w = self._fs.write_text
        if limits.memory_max is not None:
            w(f"{path}/memory.max", _v2_value(limits.memory_max))
        if limits.memory_high is not None:
            w(f"{path}/memory.high", _v2_value(limits.memory_high))
        if limits.memory_low is not None:
            w(f"{path}/memory.low", str(max(0, limits.memory_low)))
        if limits.cpu_max_cores is not None:
            quota = "max"
            if limits.cpu_max_cores != UNLIMITED:
                quota = str(max(MIN_CPU_QUOTA_US, round(limits.cpu_max_cores * CPU_PERIOD_US)))
            w(f"{path}/cpu.max", f"{quota} {CPU_PERIOD_US}")
        if limits.cpu_weight is not None:
            w(f"{path}/cpu.weight", str(min(10_000, max(1, limits.cpu_weight))))
        if limits.pids_max is not None:
            w(f"{path}/pids.max", _v2_value(limits.pids_max))

    def move(self, rel: str, pid: int) -> None:
        check_rel(rel, allow_empty=False)
        self._fs.write_text(f"{self._base}/{rel}/cgroup.procs", str(pid))

    def remove(self, rel: str) -> None:
        path = join(self._base, check_rel(rel))
        # Forget cached subtree_control state below the removed group: a group
        # re-created with the same name starts with an empty subtree_control.
        self._enabled = {p for p in self._enabled if p != path and not p.startswith(path + "/")}
        remove_tree(self._fs, path)

    # -- observation -------------------------------------------------------------

    def procs(self, rel: str, recursive: bool = False) -> list[int]:
        return procs_of(self._fs, self.path_of(rel), recursive)

    def usage(self, rel: str) -> GroupUsage:
        return usage_at(self._fs, self.usage_paths(rel))

    def usage_paths(self, rel: str) -> dict[str, str]:
        return {UNIFIED: self.path_of(rel)}

    # -- freezer / kill ----------------------------------------------------------

    def freeze(self, rel: str) -> None:
        path = self.path_of(rel)
        self._fs.write_text(f"{path}/cgroup.freeze", "1")
        if not wait_until(lambda: self._frozen(path), FREEZE_TIMEOUT_S):
            raise CgroupError(f"freeze {path}: not frozen after {FREEZE_TIMEOUT_S} s")

    def _frozen(self, path: str) -> bool:
        return parse_keyed(self._fs.read_text(f"{path}/cgroup.events")).get("frozen") == 1

    def thaw(self, rel: str) -> None:
        self._fs.write_text(f"{self.path_of(rel)}/cgroup.freeze", "0")

    def is_frozen(self, rel: str) -> bool:
        # cgroup.freeze is what was asked (and inherited state shows in cgroup.events).
        return self._fs.read_text(f"{self.path_of(rel)}/cgroup.freeze").strip() == "1"

    def _populated(self, path: str) -> bool:
        return parse_keyed(self._fs.read_text(f"{path}/cgroup.events")).get("populated") == 1

    def kill(self, rel: str, sig: int = signal.SIGKILL) -> int:
        """cgroup.kill (5.14+) for SIGKILL; freeze/signal/thaw otherwise.

        With cgroup.kill the kernel signals atomically and we cannot know exactly how
        many processes it hit: the count is the recursive procs snapshot taken just
        before.
        """
        path = self.path_of(rel)
        if sig == signal.SIGKILL and self._cgroup_kill_available(path):
            count = len(procs_of(self._fs, path, recursive=True))
            self._fs.write_text(f"{path}/cgroup.kill", "1")
            if not wait_until(lambda: not self._populated(path), KILL_TIMEOUT_S):
                left = procs_of(self._fs, path, recursive=True)
                raise CgroupError(
                    f"kill {path}: {len(left)} process(es) still present after "
                    f"{KILL_TIMEOUT_S} s: {left[:10]}"
                )
            return count
        return freeze_signal_thaw(
            freeze=lambda: self.freeze(rel),
            thaw=lambda: self.thaw(rel),
            list_procs=lambda: procs_of(self._fs, path, recursive=True),
            sig=sig,
            wait_empty=sig == signal.SIGKILL,
            describe=path,
        )

    def _cgroup_kill_available(self, path: str) -> bool:
        # A kernel feature, the same for every group: probe once.
        if self._has_kill is None:
            self._has_kill = self._fs.exists(f"{path}/cgroup.kill")
        return self._has_kill


def _enable_hint(e: FsError, path: str, missing: list[str]) -> str:
    wanted = " ".join(f"+{c}" for c in missing)
    if e.errno == errno.EBUSY:
        return (
            f"{e} (enabling {wanted}): {path} has processes of its own and cgroup v2 "
            "allows controllers only above leaves; move them to a leaf first "
            "(V2Backend.move_self_to_leaf() for the daemon itself)"
        )
    if e.errno == errno.ENOENT:
        return f"{e} (enabling {wanted}): the parent group does not offer these controllers"
    return f"{e} (enabling {wanted})"


def _v2_value(value: int) -> str:
    return "max" if value == UNLIMITED else str(value)
