"""Mountinfo parsing and backend choice for the cgroup layouts we meet in the wild."""

from __future__ import annotations

import os

import pytest

from agentd.cgroups.base import CgroupError
from agentd.cgroups.detect import (
    CgroupLayout,
    choose_backend,
    delegated_service_root,
    is_delegated_service,
    own_cgroup_v2,
    parse_mountinfo,
)
from agentd.cgroups.v1 import V1Backend
from agentd.cgroups.v2 import V2Backend

# This host's shape (captured from /proc/self/mountinfo): v1 controllers, cpu and
# cpuacct separate, and an empty cgroup2 at /sys/fs/cgroup/unified.
HYBRID = """\
22 28 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

PURE_V2 = """\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
29 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 \
rw,nsdelegate,memory_recursiveprot
"""

# (A backslash at the end of a line inside these literals joins it with the next.)
# Classic systemd v1 with cpu,cpuacct (and net_cls,net_prio) co-mounted, no cgroup2.
CO_MOUNTED_V1 = """\
24 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
25 24 0:23 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup \
rw,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd
28 24 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup \
cgroup rw,cpu,cpuacct
29 24 0:27 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:15 - \
cgroup cgroup rw,net_cls,net_prio
30 24 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup \
rw,memory
31 24 0:29 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,pids
32 24 0:30 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup \
rw,freezer
"""

V2_ALL = "cpuset cpu io memory hugetlb pids rdma misc\n"


def layout_of(text: str, controllers: str = "") -> CgroupLayout:
    return parse_mountinfo(text, lambda mount: controllers)


def test_hybrid_this_host() -> None:
    seen: list[str] = []

    def read(mount: str) -> str:
        seen.append(mount)
        return "hugetlb\n"

    layout = parse_mountinfo(HYBRID, read)
    assert layout.mode == "hybrid"
    assert layout.v2_mount == "/sys/fs/cgroup/unified"
    assert seen == ["/sys/fs/cgroup/unified"]
    assert layout.v2_controllers == ["hugetlb"]
    assert layout.v1_mounts["cpu"] == "/sys/fs/cgroup/cpu"
    assert layout.v1_mounts["cpuacct"] == "/sys/fs/cgroup/cpuacct"
    assert layout.v1_mounts["memory"] == "/sys/fs/cgroup/memory"
    assert "name=systemd" not in layout.v1_mounts and "systemd" not in layout.v1_mounts
    assert "rw" not in layout.v1_mounts


def test_pure_v2() -> None:
    layout = layout_of(PURE_V2, V2_ALL)
    assert layout.mode == "v2"
    assert layout.v2_mount == "/sys/fs/cgroup"
    assert layout.v1_mounts == {}
    assert "memory" in layout.v2_controllers


def test_co_mounted_v1() -> None:
    layout = layout_of(CO_MOUNTED_V1)
    assert layout.mode == "v1"
    assert layout.v2_mount is None
    assert layout.v1_mounts["cpu"] == layout.v1_mounts["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert layout.v1_mounts["net_prio"] == "/sys/fs/cgroup/net_cls,net_prio"
    assert layout.v2_controllers == []


def test_whole_hierarchy_mount_preferred_over_bind_of_subgroup() -> None:
    text = (
        "50 31 0:32 /docker/abc /mnt/mem rw - cgroup cgroup rw,memory\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    )
    assert layout_of(text).v1_mounts["memory"] == "/sys/fs/cgroup/memory"


def test_escaped_mount_point() -> None:
    text = "41 31 0:38 / /sys/fs/cgroup/my\\040unified rw - cgroup2 cgroup2 rw\n"
    assert layout_of(text, V2_ALL).v2_mount == "/sys/fs/cgroup/my unified"


def test_no_cgroup_mounted() -> None:
    with pytest.raises(CgroupError, match="no cgroup filesystem"):
        layout_of("22 28 0:20 / /sys rw - sysfs sysfs rw\n")


def test_choose_auto() -> None:
    hybrid = layout_of(HYBRID, "hugetlb")
    b = choose_backend(hybrid, "auto", "agentd")
    assert isinstance(b, V1Backend)
    assert b.root_path() == "/sys/fs/cgroup/memory/agentd"
    # cpu and cpuacct are separate hierarchies here: five groups per tool call.
    assert len(b.hierarchies()) == 5

    v2 = choose_backend(layout_of(PURE_V2, V2_ALL), "auto", "system.slice/agentd.service")
    assert isinstance(v2, V2Backend)
    assert v2.root_path() == "/sys/fs/cgroup/system.slice/agentd.service"


def test_co_mounted_cpu_cpuacct_is_one_hierarchy() -> None:
    b = choose_backend(layout_of(CO_MOUNTED_V1), "auto", "agentd")
    assert isinstance(b, V1Backend)
    assert b.hierarchies() == [
        "/sys/fs/cgroup/memory/agentd",
        "/sys/fs/cgroup/pids/agentd",
        "/sys/fs/cgroup/cpu,cpuacct/agentd",
        "/sys/fs/cgroup/freezer/agentd",
    ]


def test_v2_refused_on_hybrid_with_precise_reason() -> None:
    with pytest.raises(CgroupError) as info:
        choose_backend(layout_of(HYBRID, "hugetlb\n"), "v2", "agentd")
    assert str(info.value) == (
        "cgroup v2 is mounted at /sys/fs/cgroup/unified but offers only [hugetlb]; "
        "memory, cpu and pids are bound to v1 hierarchies: use backend v1"
    )


def test_v2_refused_when_not_mounted() -> None:
    with pytest.raises(CgroupError, match=r"^cgroup v2 is not mounted: use backend v1$"):
        choose_backend(layout_of(CO_MOUNTED_V1), "v2", "agentd")


def test_v1_refused_on_pure_v2() -> None:
    with pytest.raises(CgroupError) as info:
        choose_backend(layout_of(PURE_V2, V2_ALL), "v1", "agentd")
    assert str(info.value) == (
        "cgroup v1 hierarchies missing for memory, cpu, cpuacct, pids and freezer "
        "(v1 mounted: none): use backend v2"
    )


def test_auto_with_nothing_usable_explains_both() -> None:
    text = HYBRID.replace("rw,freezer", "rw,devices").replace("rw,pids", "rw,blkio")
    with pytest.raises(CgroupError) as info:
        choose_backend(layout_of(text, "hugetlb pids"), "auto", "agentd")
    msg = str(info.value)
    assert msg.startswith("no usable cgroup backend: cgroup v2 is mounted at")
    assert "offers only [hugetlb pids]; memory and cpu are bound to v1 hierarchies" in msg
    assert "cgroup v1 hierarchies missing for pids and freezer" in msg


def test_v2_missing_controller_not_anywhere() -> None:
    with pytest.raises(CgroupError, match=r"offers only \[cpu memory\]; pids is not available"):
        choose_backend(layout_of(PURE_V2, "cpu memory"), "v2", "agentd")


def test_unknown_preference() -> None:
    with pytest.raises(CgroupError, match="unknown cgroup backend 'v3'"):
        choose_backend(layout_of(PURE_V2, V2_ALL), "v3", "agentd")  # type: ignore[arg-type]


def test_own_cgroup_v2() -> None:
    text = "12:memory:/process_api/x\n0::/system.slice/agentd.service\n"
    assert own_cgroup_v2(text) == "system.slice/agentd.service"
    assert own_cgroup_v2("0::/\n") == ""
    assert own_cgroup_v2("4:memory:/x\n") is None


def test_is_delegated_service() -> None:
    ok = lambda path, mode: True  # noqa: E731
    assert is_delegated_service("system.slice/agentd.service", "/sys/fs/cgroup", ok)
    assert not is_delegated_service("user.slice/session-3.scope", "/sys/fs/cgroup", ok)
    assert not is_delegated_service("", "/sys/fs/cgroup", ok)
    assert not is_delegated_service(None, "/sys/fs/cgroup", ok)
    asked: list[str] = []

    def not_procs(path: str, mode: int) -> bool:
        asked.append(path)
        assert mode == os.W_OK
        return not path.endswith("cgroup.procs")

    assert not is_delegated_service("system.slice/agentd.service", "/sys/fs/cgroup", not_procs)
    assert "/sys/fs/cgroup/system.slice/agentd.service/cgroup.procs" in asked


def test_delegated_service_root() -> None:
    ok = lambda path, mode: True  # noqa: E731
    pure = layout_of(PURE_V2, V2_ALL)
    svc = "0::/system.slice/agentd.service\n"
    assert delegated_service_root(pure, svc, ok) == "system.slice/agentd.service"
    assert delegated_service_root(pure, "0::/user.slice/x.scope\n", ok) is None
    # No cgroup2 mounted at all: there is no delegated v2 root to use.
    assert delegated_service_root(layout_of(CO_MOUNTED_V1), svc, ok) is None
