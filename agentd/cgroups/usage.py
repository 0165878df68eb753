"""Reading a group's usage counters from its directories, by controller.

Shared by the backends (the daemon) and the SDK: the usage files are world-readable,
so the SDK reads a finished tool call's usage itself instead of waiting for an
EndToolCall round trip (docs/placement.md, "Launchers placed ahead"). Paths are
`{"memory", "cpu", "cpuacct", "pids"}` directories on v1, `{"unified"}` on v2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from agentd.cgroups.base import GroupUsage
from agentd.cgroups.common import parse_keyed, read_int
from agentd.cgroups.fs import CgroupFs

UNIFIED = "unified"


def usage_at(fs: CgroupFs, paths: Mapping[str, str]) -> GroupUsage:
    if UNIFIED in paths:
        return _usage_v2(fs, paths[UNIFIED])
    return _usage_v1(fs, paths)


#: The files a finished group's usage needs, by controller (v1) or in the group (v2).
_FINAL_FILES_V1 = (
    ("pids", "pids.current"),
    ("pids", "pids.peak"),
    ("memory", "memory.max_usage_in_bytes"),
    ("memory", "memory.oom_control"),
    ("cpuacct", "cpuacct.usage_user"),
    ("cpuacct", "cpuacct.usage_sys"),
    ("cpu", "cpu.stat"),
)
_FINAL_FILES_V2 = ("pids.current", "pids.peak", "memory.peak", "memory.events", "cpu.stat")


class FinalUsage:
    """A group's usage files, opened ahead of time (off the critical path) and read
    once its command has ended with one pread each (cgroupfs regenerates a file
    read at offset 0): ~10 us for all of them instead of ~50-300 us of path walks.
    A file the kernel lacks (pids.peak before 6.1, ...) reads as 0."""

    def __init__(self, paths: Mapping[str, str]) -> None:
        self._v2 = UNIFIED in paths
        if self._v2:
            files = [(name, f"{paths[UNIFIED]}/{name}") for name in _FINAL_FILES_V2]
        else:
            files = [(name, f"{paths[c]}/{name}") for c, name in _FINAL_FILES_V1]
        self._fds: dict[str, int] = {}
        try:
            for name, path in files:
                try:
                    self._fds[name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    if name in ("pids.current", "cpu.stat"):
                        raise
        except BaseException:
            self.close()
            raise

    def read(self) -> GroupUsage | None:
        """The final usage; None if a process is still inside (then the daemon must end
        the tool call: kill what is left, read the usage after)."""
        text = {name: os.pread(fd, 65536, 0).decode() for name, fd in self._fds.items()}

        def number(name: str) -> int:
            return int(text.get(name) or 0)

        if number("pids.current"):  # hierarchical: descendants count too
            return None
        cpu = parse_keyed(text["cpu.stat"])
        if self._v2:
            return GroupUsage(
                memory_peak=number("memory.peak"),
                oom_kills=parse_keyed(text.get("memory.events", "")).get("oom_kill", 0),
                cpu_user_usec=cpu.get("user_usec", 0),
                cpu_system_usec=cpu.get("system_usec", 0),
                cpu_throttled_usec=cpu.get("throttled_usec", 0),
                cpu_nr_throttled=cpu.get("nr_throttled", 0),
                pids_peak=number("pids.peak"),
            )
        oom = parse_keyed(text.get("memory.oom_control", ""))
        return GroupUsage(
            memory_peak=number("memory.max_usage_in_bytes"),
            oom_kills=oom.get("oom_kill", 0),
            cpu_user_usec=number("cpuacct.usage_user") // 1000,
            cpu_system_usec=number("cpuacct.usage_sys") // 1000,
            # throttled_time is in ns on v1 (v2 reports usec)
            cpu_throttled_usec=cpu.get("throttled_time", 0) // 1000,
            cpu_nr_throttled=cpu.get("nr_throttled", 0),
            pids_peak=number("pids.peak"),
        )

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


def _usage_v1(fs: CgroupFs, paths: Mapping[str, str]) -> GroupUsage:
    mem, acct, pids = paths["memory"], paths["cpuacct"], paths["pids"]
    cpu_stat = parse_keyed(fs.read_text(f"{paths['cpu']}/cpu.stat"))
    oom = parse_keyed(fs.read_text(f"{mem}/memory.oom_control"))
    current_pids = read_int(fs, f"{pids}/pids.current", 0)
    return GroupUsage(
        memory_current=read_int(fs, f"{mem}/memory.usage_in_bytes"),
        memory_peak=read_int(fs, f"{mem}/memory.max_usage_in_bytes"),
        oom_kills=oom.get("oom_kill", 0),
        cpu_user_usec=read_int(fs, f"{acct}/cpuacct.usage_user") // 1000,
        cpu_system_usec=read_int(fs, f"{acct}/cpuacct.usage_sys") // 1000,
        # throttled_time is in ns on v1 (v2 reports usec)
        cpu_throttled_usec=cpu_stat.get("throttled_time", 0) // 1000,
        cpu_nr_throttled=cpu_stat.get("nr_throttled", 0),
        pids_current=current_pids,
        # pids.peak appeared in 6.1; older kernels only have current.
        pids_peak=read_int(fs, f"{pids}/pids.peak", current_pids),
    )


def _usage_v2(fs: CgroupFs, path: str) -> GroupUsage:
    cpu = parse_keyed(fs.read_text(f"{path}/cpu.stat"))
    events = parse_keyed(fs.read_text(f"{path}/memory.events"))
    current = read_int(fs, f"{path}/memory.current")
    pids_current = read_int(fs, f"{path}/pids.current")
    return GroupUsage(
        memory_current=current,
        # memory.peak appeared in 5.19, pids.peak in 6.1: fall back to current.
        memory_peak=read_int(fs, f"{path}/memory.peak", current),
        oom_kills=events.get("oom_kill", 0),
        cpu_user_usec=cpu.get("user_usec", 0),
        cpu_system_usec=cpu.get("system_usec", 0),
        cpu_throttled_usec=cpu.get("throttled_usec", 0),
        cpu_nr_throttled=cpu.get("nr_throttled", 0),
        pids_current=pids_current,
        pids_peak=read_int(fs, f"{path}/pids.peak", pids_current),
    )
