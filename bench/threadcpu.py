"""CPU time per thread of a process and its children, from the kernel's run time
(`/proc/PID/task/TID/schedstat`, nanoseconds), with Python thread names from
`py-spy dump` when py-spy is installed: shared by the benchmarks that say where a
daemon's CPU goes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path


def task_cpu_ns(pid: int) -> dict[int, int]:
    """tid -> nanoseconds on a CPU, for every thread of `pid` (gone threads: absent)."""
    out = {}
    with contextlib.suppress(FileNotFoundError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(OSError, ValueError, IndexError),
                open(f"/proc/{pid}/task/{tid}/schedstat") as f,
            ):
                out[int(tid)] = int(f.read().split()[0])
    return out


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (launchers, helpers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
            if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return found


def snapshot(pid: int) -> dict[tuple[int, int], int]:
    """(process, tid) -> CPU ns for the daemon and its children."""
    out = {}
    for process in [pid, *children(pid)]:
        for tid, ns in task_cpu_ns(process).items():
            out[(process, tid)] = ns
    return out


def delta(before: dict[tuple[int, int], int], after: dict[tuple[int, int], int]) -> dict:
    """Per task CPU ns between two snapshots; a task born in between counts from 0."""
    return {k: ns - before.get(k, 0) for k, ns in after.items() if ns - before.get(k, 0) > 0}


def thread_names(pid: int) -> dict[int, str]:
    """Native thread id -> Python thread name, from py-spy (empty without it)."""
    if shutil.which("py-spy") is None:
        return {}
    try:
        out = subprocess.run(
            ["py-spy", "dump", "--pid", str(pid), "--json", "--nonblocking"],
            capture_output=True,
            timeout=30,
            check=True,
        ).stdout
        dump = json.loads(out)
    except (subprocess.SubprocessError, json.JSONDecodeError):
        return {}
    return {
        int(t["os_thread_id"]): t.get("thread_name") or "?"
        for t in dump
        if isinstance(t, dict) and t.get("os_thread_id")
    }


def label(pid: int, key: tuple[int, int], names: dict[int, str]) -> str:
    process, tid = key
    if process != pid:
        with contextlib.suppress(OSError):
            return f"child {Path(f'/proc/{process}/comm').read_text().strip()}"
        return "child (gone)"
    if tid == pid:
        return "main"
    if tid in names:
        return names[tid]
    with contextlib.suppress(OSError):
        return f"native {Path(f'/proc/{pid}/task/{tid}/comm').read_text().strip()}"
    return "native ?"
