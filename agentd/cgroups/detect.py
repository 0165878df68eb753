"""Find out how cgroups are mounted and pick a backend.

Parsing functions take text so tests can feed them mountinfo / /proc/self/cgroup
samples; the `detect_*` wrappers read the live files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from agentd.cgroups.base import CgroupBackend, CgroupError
from agentd.cgroups.v1 import V1_CONTROLLERS, V1Backend
from agentd.cgroups.v2 import V2_CONTROLLERS, V2Backend

Mode = Literal["v2", "hybrid", "v1"]

# Real v1 controllers; other super options (rw, name=systemd, xattr, ...) are not.
_KNOWN_V1 = frozenset(
    {
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "net_cls",
        "net_prio",
        "blkio",
        "perf_event",
        "hugetlb",
        "pids",
        "rdma",
        "misc",
        "debug",
    }
)


@dataclass(frozen=True)
class CgroupLayout:
    mode: Mode
    v2_mount: str | None
    v1_mounts: dict[str, str] = field(default_factory=dict)
    v2_controllers: list[str] = field(default_factory=list)


def _unescape(field_: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in field_:
        return field_
    out, i = [], 0
    while i < len(field_):
        if field_[i] == "\\" and field_[i + 1 : i + 4].isdigit() and i + 4 <= len(field_):
            out.append(chr(int(field_[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def _read_controllers(mount: str) -> str:
    try:
        with open(f"{mount}/cgroup.controllers") as f:
            return f.read()
    except OSError:
        return ""


def parse_mountinfo(
    text: str, read_controllers: Callable[[str], str] = _read_controllers
) -> CgroupLayout:
    """Layout from /proc/self/mountinfo text.

    `read_controllers(v2_mount)` returns the text of cgroup.controllers at the v2 mount
    root (injectable for tests). Bind mounts of a sub-group (mount root other than "/")
    are used only when no whole-hierarchy mount of that controller exists.
    """
    v2: tuple[bool, str] | None = None  # (mounted at "/", mount point)
    v1: dict[str, tuple[bool, str]] = {}  # controller -> (mounted at "/", mount point)
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        left, right = pre.split(), post.split()
        if len(left) < 5 or len(right) < 3:
            continue
        mount_root, mount_point = _unescape(left[3]), _unescape(left[4])
        fstype, super_opts = right[0], right[2]
        whole = mount_root == "/"
        if fstype == "cgroup2":
            if v2 is None or (whole and not v2[0]):
                v2 = (whole, mount_point)
        elif fstype == "cgroup":
            for opt in super_opts.split(","):
                if opt in _KNOWN_V1 and (opt not in v1 or (whole and not v1[opt][0])):
                    v1[opt] = (whole, mount_point)
    v2_mount = v2[1] if v2 else None
    v1_mounts = {c: mp for c, (_, mp) in v1.items()}
    if v2_mount is None and not v1_mounts:
        raise CgroupError("no cgroup filesystem is mounted (neither cgroup nor cgroup2)")
    v2_controllers = read_controllers(v2_mount).split() if v2_mount else []
    mode: Mode = "hybrid" if v2_mount and v1_mounts else ("v2" if v2_mount else "v1")
    return CgroupLayout(mode, v2_mount, v1_mounts, v2_controllers)


def detect_layout() -> CgroupLayout:
    with open("/proc/self/mountinfo") as f:
        return parse_mountinfo(f.read())


def _v2_problem(layout: CgroupLayout) -> str | None:
    """Why v2 cannot host agentd, or None if it can."""
    if layout.v2_mount is None:
        return "cgroup v2 is not mounted"
    lacking = [c for c in V2_CONTROLLERS if c not in layout.v2_controllers]
    if not lacking:
        return None
    offered = " ".join(layout.v2_controllers)
    msg = f"cgroup v2 is mounted at {layout.v2_mount} but offers only [{offered}]"
    bound = [c for c in lacking if c in layout.v1_mounts]
    if bound:
        msg += f"; {_and(bound)} {'is' if len(bound) == 1 else 'are'} bound to v1 hierarchies"
    unbound = [c for c in lacking if c not in layout.v1_mounts]
    if unbound:
        msg += f"; {_and(unbound)} {'is' if len(unbound) == 1 else 'are'} not available at all"
    return msg


def _v1_problem(layout: CgroupLayout) -> str | None:
    missing = [c for c in V1_CONTROLLERS if c not in layout.v1_mounts]
    if not missing:
        return None
    mounted = ", ".join(sorted(layout.v1_mounts)) or "none"
    return f"cgroup v1 hierarchies missing for {_and(missing)} (v1 mounted: {mounted})"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def choose_backend(
    layout: CgroupLayout,
    preference: Literal["auto", "v1", "v2"],
    root: str,
) -> CgroupBackend:
    """The backend for `preference`; raises CgroupError saying why it cannot work."""
    v2_problem, v1_problem = _v2_problem(layout), _v1_problem(layout)
    if preference == "v2":
        if v2_problem:
            hint = ": use backend v1" if v1_problem is None else ""
            raise CgroupError(v2_problem + hint)
        return _v2(layout, root)
    if preference == "v1":
        if v1_problem:
            hint = ": use backend v2" if v2_problem is None else ""
            raise CgroupError(v1_problem + hint)
        return V1Backend(layout.v1_mounts, root)
    if preference == "auto":
        if v2_problem is None:
            return _v2(layout, root)
        if v1_problem is None:
            return V1Backend(layout.v1_mounts, root)
        raise CgroupError(f"no usable cgroup backend: {v2_problem}; {v1_problem}")
    raise CgroupError(f"unknown cgroup backend {preference!r} (expected auto, v1 or v2)")


def _v2(layout: CgroupLayout, root: str) -> V2Backend:
    assert layout.v2_mount is not None  # checked by _v2_problem
    return V2Backend(layout.v2_mount, root)


def own_cgroup_v2(text: str | None = None) -> str | None:
    """Our cgroup v2 path from /proc/self/cgroup ("0::/system.slice/agentd.service"),
    without the leading "/"; None if there is no v2 entry. "" means the mount root."""
    if text is None:
        with open("/proc/self/cgroup") as f:
            text = f.read()
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip().lstrip("/")
    return None


def is_delegated_service(
    cgroup_path: str | None,
    v2_mount: str,
    access: Callable[[str, int], bool] = os.access,
) -> bool:
    """Whether `cgroup_path` (from own_cgroup_v2) looks like a systemd service cgroup
    delegated to us (`Delegate=yes`): a ".service" group whose directory, cgroup.procs
    and cgroup.subtree_control we may write.

    For root every access check passes, so this cannot distinguish a delegated root
    service from a non-delegated one; `has_delegate_xattr()` (systemd >= 251 sets
    trusted.delegate=1) is the stronger signal when available.
    """
    if not cgroup_path or not cgroup_path.rsplit("/", 1)[-1].endswith(".service"):
        return False
    path = f"{v2_mount.rstrip('/')}/{cgroup_path}"
    return all(
        access(p, os.W_OK) for p in (path, f"{path}/cgroup.procs", f"{path}/cgroup.subtree_control")
    )


def delegated_service_root(
    layout: CgroupLayout,
    cgroup_text: str | None = None,
    access: Callable[[str, int], bool] = os.access,
) -> str | None:
    """The v2 root to use when running as a delegated systemd service, else None.

    Call it before V2Backend.move_self_to_leaf(): afterwards our own cgroup is the leaf.
    """
    if layout.v2_mount is None:
        return None
    path = own_cgroup_v2(cgroup_text)
    return path if is_delegated_service(path, layout.v2_mount, access) else None


def has_delegate_xattr(path: str) -> bool:
    """Whether systemd marked the group delegated (trusted.delegate / user.delegate = 1).

    False also when the xattr is absent (systemd < 251, or no delegation)."""
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(path, name) == b"1":
                return True
        except OSError:
            continue
    return False
