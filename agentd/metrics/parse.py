"""Parsers for the kernel files the collector reads: pure text in, numbers out.

Each parser takes the file's text so that it can be tested on fixtures of both
cgroup versions; none touches the filesystem. Missing keys are simply absent from
the result: a kernel that lacks a counter must not fail a sample.
"""

from __future__ import annotations

import re

from agentd.cgroups.common import parse_keyed

#: memory.stat keys kept, per version (v1 name -> our name, v2 name -> our name).
#: Faults, major faults, reclaim and refaults are what interference shows up in.
V1_MEMORY_STAT = {
    "total_pgfault": "pgfault",
    "total_pgmajfault": "pgmajfault",
    "total_rss": "anon_bytes",
    "total_cache": "file_bytes",
    "total_pgpgin": "pgpgin",
    "total_pgpgout": "pgpgout",
}
V2_MEMORY_STAT = {
    "pgfault": "pgfault",
    "pgmajfault": "pgmajfault",
    "anon": "anon_bytes",
    "file": "file_bytes",
    "workingset_refault_anon": "refault_anon",
    "workingset_refault_file": "refault_file",
    "pgscan": "pgscan",
    "pgsteal": "pgsteal",
}


def parse_pressure(text: str) -> dict[str, float]:
    """A PSI file (/proc/pressure/cpu, <group>/memory.pressure) into
    {"some_avg10": %, "some_total_us": us, "full_avg10": ..., "full_total_us": ...}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind not in ("some", "full"):
            continue
        for item in rest.split():
            key, _, value = item.partition("=")
            if key == "avg10":
                out[f"{kind}_avg10"] = float(value)
            elif key == "total":
                out[f"{kind}_total_us"] = float(value)
    return out


def parse_schedstat(text: str) -> tuple[int, int, int]:
    """/proc/<pid>/schedstat: (ns on CPU, ns waiting on a run queue, timeslices)."""
    fields = text.split()
    if len(fields) < 3:
        raise ValueError(f"schedstat: expected 3 fields, got {text!r}")
    return int(fields[0]), int(fields[1]), int(fields[2])


#: The /proc/stat lines kept after the aggregate "cpu" line, and their keys here.
_PROC_STAT_COUNTS = {
    "ctxt": "ctxt",
    "processes": "forks",
    "procs_running": "procs_running",
    "procs_blocked": "procs_blocked",
}


def parse_proc_stat(text: str) -> dict[str, float]:
    """/proc/stat: aggregate CPU jiffies (busy, iowait, total), context switches,
    forks, runnable and blocked tasks.

    Bounded: only the aggregate "cpu" line and the lines from "ctxt" on are split. The
    per-CPU lines and the "intr" line (one field per interrupt: thousands on a large
    machine, ~1/3 of the parse here) lie between them and are skipped unread."""
    out: dict[str, float] = {}
    cpu = _line_of(text, "cpu ")
    if cpu is not None:
        # user nice system idle iowait irq softirq steal guest guest_nice
        values = [int(v) for v in cpu.split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        # guest time is already counted in user: keep it out of the total.
        total = sum(values[:8])
        out["cpu_total_jiffies"] = float(total)
        out["cpu_busy_jiffies"] = float(total - idle)
        out["cpu_iowait_jiffies"] = float(values[4]) if len(values) > 4 else 0.0
        out["cpu_steal_jiffies"] = float(values[7]) if len(values) > 7 else 0.0
    start = _line_start(text, "ctxt ")
    if start < 0:
        return out
    for line in text[start:].split("\n"):
        key, _, value = line.partition(" ")
        ours = _PROC_STAT_COUNTS.get(key)
        if ours is not None:
            out[ours] = float(value)
        elif key == "softirq":
            break  # the last line (long too); nothing wanted after it
    return out


def _line_start(text: str, prefix: str) -> int:
    """Where the line starting with `prefix` starts (-1: none)."""
    if text.startswith(prefix):
        return 0
    at = text.find("\n" + prefix)
    return at + 1 if at >= 0 else -1


def _line_of(text: str, prefix: str) -> str | None:
    start = _line_start(text, prefix)
    if start < 0:
        return None
    end = text.find("\n", start)
    return text[start:] if end < 0 else text[start:end]


def parse_vmstat(text: str) -> dict[str, float]:
    """/proc/vmstat: the node's faults, reclaim and refaults."""
    keep = {
        "pgfault",
        "pgmajfault",
        "pswpin",
        "pswpout",
        "workingset_refault_anon",
        "workingset_refault_file",
        "pgscan_kswapd",
        "pgscan_direct",
        "pgsteal_kswapd",
        "pgsteal_direct",
    }
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key in keep:
            out[key] = float(value)
    return out


def parse_meminfo(text: str) -> dict[str, float]:
    """/proc/meminfo: total and available memory in bytes."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            out[key] = float(rest.split()[0]) * 1024
    return out


def parse_diskstats(text: str) -> dict[str, float]:
    """/proc/diskstats summed over whole disks (not partitions, not loop/ram):
    sectors read and written, and ms spent doing I/O."""
    read = written = busy_ms = 0.0
    for line in text.splitlines():
        f = line.split()
        if len(f) < 14 or not is_whole_disk(f[2]):
            continue
        read += float(f[5])
        written += float(f[9])
        busy_ms += float(f[12])
    return {"disk_read_sectors": read, "disk_write_sectors": written, "disk_busy_ms": busy_ms}


def is_whole_disk(name: str) -> bool:
    """A physical whole disk ("vda", "nvme0n1"), not a partition or a virtual device,
    so that no I/O is counted twice."""
    if name.startswith(("loop", "ram", "zram", "dm-", "sr", "md")):
        return False
    if re.fullmatch(r"(nvme\d+n\d+|mmcblk\d+)", name):
        return True
    return not name[-1:].isdigit()


def parse_net_dev(text: str) -> dict[str, float]:
    """/proc/net/dev summed over interfaces other than lo: bytes received and sent."""
    rx = tx = 0.0
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        if name.strip() == "lo" or not rest:
            continue
        f = rest.split()
        rx += float(f[0])
        tx += float(f[8])
    return {"net_rx_bytes": rx, "net_tx_bytes": tx}


def parse_memory_stat(text: str, version: str) -> dict[str, float]:
    """memory.stat of a group, renamed to version-independent keys."""
    names = V1_MEMORY_STAT if version == "v1" else V2_MEMORY_STAT
    raw = parse_keyed(text)
    return {ours: float(raw[theirs]) for theirs, ours in names.items() if theirs in raw}


def parse_cpu_stat_v1(cpu_stat: str, cpuacct_usage: str) -> dict[str, float]:
    """v1: cpu.stat (throttling, ns) and cpuacct.usage (ns) into usec counters."""
    stat = parse_keyed(cpu_stat)
    return {
        "cpu_usage_us": int(cpuacct_usage.strip() or 0) / 1000,
        "cpu_nr_periods": float(stat.get("nr_periods", 0)),
        "cpu_nr_throttled": float(stat.get("nr_throttled", 0)),
        "cpu_throttled_us": stat.get("throttled_time", 0) / 1000,
    }


def parse_cpu_stat_v2(cpu_stat: str) -> dict[str, float]:
    """v2: cpu.stat has usage and throttling together, already in usec."""
    stat = parse_keyed(cpu_stat)
    return {
        "cpu_usage_us": float(stat.get("usage_usec", 0)),
        "cpu_nr_periods": float(stat.get("nr_periods", 0)),
        "cpu_nr_throttled": float(stat.get("nr_throttled", 0)),
        "cpu_throttled_us": float(stat.get("throttled_usec", 0)),
    }


def parse_memory_events_v1(failcnt: str, oom_control: str) -> dict[str, float]:
    """v1 has no memory.events: failcnt (hits of the limit) and oom_control's oom_kill."""
    oom = parse_keyed(oom_control)
    return {
        "mem_limit_hits": float(int(failcnt.strip() or 0)),
        "mem_oom_kills": float(oom.get("oom_kill", 0)),
        "mem_under_oom": float(oom.get("under_oom", 0)),
    }


def parse_memory_events_v2(text: str) -> dict[str, float]:
    """v2 memory.events: high (throttled above memory.high), max (hit the limit), OOM."""
    ev = parse_keyed(text)
    return {
        "mem_high_events": float(ev.get("high", 0)),
        "mem_limit_hits": float(ev.get("max", 0)),
        "mem_oom_kills": float(ev.get("oom_kill", 0)),
    }
