"""Helpers shared by the v1 and v2 backends (path checks, tree walks, polling, parsing)."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterable

from agentd.cgroups.base import CgroupError, GroupBusyError
from agentd.cgroups.fs import CgroupFs, FsError

#: How long freeze() waits for the kernel to report the group frozen.
FREEZE_TIMEOUT_S = 2.0
#: How long kill() waits for a group to become empty after SIGKILL.
KILL_TIMEOUT_S = 2.0


def check_rel(rel: str, *, allow_empty: bool = True) -> str:
    """Validate a path relative to a cgroup base; refuse anything that could escape it.

    The daemon builds these from session and tool-call ids; a stray "..", an absolute
    path or an empty component must never turn into a write outside our root.
    """
    if rel == "":
        if allow_empty:
            return rel
        raise CgroupError("empty cgroup path")
    if rel.startswith("/") or rel.endswith("/"):
        raise CgroupError(f"invalid cgroup path {rel!r}: must be relative, no trailing '/'")
    for part in rel.split("/"):
        if part in ("", ".", "..") or "\0" in part or "\n" in part:
            raise CgroupError(f"invalid cgroup path {rel!r}: bad component {part!r}")
    return rel


def join(base: str, rel: str) -> str:
    return f"{base}/{rel}" if rel else base


def parse_keyed(text: str) -> dict[str, int]:
    """Parse "key value" lines (cpu.stat, memory.events, memory.oom_control)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def parse_pids(text: str) -> list[int]:
    return [int(line) for line in text.split()]


def read_int(fs: CgroupFs, path: str, default: int | None = None) -> int:
    """Read an integer file; a missing file yields `default` when one is given."""
    try:
        text = fs.read_text(path)
    except FsError as e:
        if default is not None and e.errno == errno.ENOENT:
            return default
        raise
    text = text.strip()
    # "max" is the v2 spelling of "no limit"; report it as -1 rather than crash.
    return -1 if text == "max" else int(text)


def walk_post_order(fs: CgroupFs, path: str) -> list[str]:
    """`path` and all descendant group directories, deepest first (rmdir order)."""
    out: list[str] = []

    def visit(p: str) -> None:
        for name in fs.subdirs(p):
            visit(f"{p}/{name}")
        out.append(p)

    visit(path)
    return out


def procs_of(fs: CgroupFs, path: str, recursive: bool) -> list[int]:
    if not recursive:
        return parse_pids(fs.read_text(f"{path}/cgroup.procs"))
    pids: list[int] = []
    for group in walk_post_order(fs, path):
        try:
            pids.extend(parse_pids(fs.read_text(f"{group}/cgroup.procs")))
        except FsError as e:
            # A child group removed while we walk is simply empty.
            if e.errno != errno.ENOENT:
                raise
    return pids


def mkdir_exist_ok(fs: CgroupFs, path: str) -> None:
    try:
        fs.mkdir(path)
    except FsError as e:
        if e.errno != errno.EEXIST:
            raise


def remove_tree(fs: CgroupFs, path: str) -> None:
    """rmdir `path` and its descendants deepest first; a missing group is fine.

    Tries rmdir first and lists children only if the kernel says busy: removing a
    leaf (the common case, a finished tool call) then costs one syscall per hierarchy
    instead of a directory scan plus the rmdir.
    """
    try:
        fs.rmdir(path)
        return
    except FsError as e:
        if e.errno == errno.ENOENT:
            return
        if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
            raise
        busy = e
    try:
        children = fs.subdirs(path)
    except FsError as e:
        if e.errno == errno.ENOENT:
            return
        raise
    if not children:
        raise GroupBusyError(f"{busy} (processes still inside)")
    for name in children:
        remove_tree(fs, f"{path}/{name}")
    try:
        fs.rmdir(path)
    except FsError as e:
        if e.errno == errno.ENOENT:
            return
        if e.errno in (errno.EBUSY, errno.ENOTEMPTY):
            raise GroupBusyError(f"{e} (processes still inside)") from None
        raise


def wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    """Poll `predicate` with a short exponential backoff; True once it holds.

    Freezing and dying are usually done within microseconds, so the first polls are
    tight; the backoff caps at 20 ms so a slow case does not spin a core.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.0001
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def signal_pids(pids: Iterable[int], sig: int) -> int:
    """Send `sig` to each pid; returns how many existed. Gone pids are not an error."""
    sent = 0
    for pid in pids:
        # Paranoia: pid <= 1 would mean "init" or "process group/all" to kill(2).
        if pid <= 1:
            continue
        try:
            os.kill(pid, sig)
            sent += 1
        except ProcessLookupError:
            continue
    return sent


def freeze_signal_thaw(
    freeze: Callable[[], None],
    thaw: Callable[[], None],
    list_procs: Callable[[], list[int]],
    sig: int,
    wait_empty: bool,
    describe: str,
) -> int:
    """Race-free kill without cgroup.kill: freeze so nothing can fork, signal, thaw.

    If freezing fails (timeout, no freezer) we still signal, repeatedly, so a forking
    process is eventually caught. Returns the number of distinct pids signalled.
    """
    # If freezing fails we signal anyway; the wait loop below re-signals late forks.
    with contextlib.suppress(CgroupError):
        freeze()
    signalled: set[int] = set()
    try:
        pids = list_procs()
        signal_pids(pids, sig)
        signalled.update(pids)
    finally:
        # Always thaw: frozen tasks cannot act on (non-fatal) signals, and a SIGKILLed
        # task in a frozen v1 group would not die until thawed.
        thaw()
    if not wait_empty:
        return len(signalled)

    def empty() -> bool:
        remaining = list_procs()
        if not remaining:
            return True
        new = set(remaining) - signalled
        if new:
            # Forked before the freeze took hold, or freezing failed: signal those too.
            signal_pids(new, sig)
            signalled.update(new)
        return False

    if not wait_until(empty, KILL_TIMEOUT_S):
        left = list_procs()
        raise CgroupError(
            f"kill {describe}: {len(left)} process(es) still present after "
            f"{KILL_TIMEOUT_S} s: {left[:10]}"
        )
    return len(signalled)
