"""Keeps cgroup migration fast while tool calls are expected.

Moving a process between cgroups takes the kernel's cgroup_threadgroup_rwsem for
writing. That percpu rwsem parks in a reader-fast mode when nobody has written
it for a couple of RCU grace periods, and the next writer then waits a full
grace period (rcu_sync_enter -> synchronize_rcu). Measured on this host (v1,
HZ=250): a move 1-16 ms after the previous one costs 0.02-0.1 ms; after 50 ms of
quiet it costs ~10 ms - more than systemd-run's whole 8.4 ms. Agents make tool
calls seconds apart, so without help every tool call would pay it.

cgroup v2 can be mounted with `favordynmods`, which keeps the semaphore in the
writer-friendly mode for good; agentd must not change the host's mounts, so it
does the equivalent by hand while sessions are open: it moves a process of its
own between two empty leaf groups every few milliseconds, which keeps the
semaphore warm. Disable it with `[cgroup] fast_placement = false`.

The moving is done by a helper process (`agentd-exec --warm`, agentd/native), not
by a daemon thread: a move costs ~20-45 us of kernel time here, and a Python loop
waking every 8 ms cost 4-8x that on top, plus a GIL hand-off per wake-up that the
request threads felt (bench/idle_cpu.py). The helper moves itself between two empty
groups through cgroup.procs files the daemon opened for it. The daemon tells it
when to warm (a byte on a pipe when sessions open or all close: no polling while
idle) and when it placed a process itself (a timestamp in a shared page: placements
warm the semaphore too, so while they come faster than the period the helper rests).
If the daemon dies, the pipe closes and the helper exits.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import subprocess
import threading
import time
from collections.abc import Callable

import structlog

from agentd.cgroups.base import CgroupBackend, CgroupError, GroupLimits

log = structlog.get_logger("agentd.warmer")

GROUPS = ("warm-a", "warm-b")
#: The page shared with the helper: the daemon's last placement (CLOCK_MONOTONIC ns,
#: written by the daemon), the helper's moves (written by the helper).
_PLACED = struct.Struct("=q")
_MOVES_OFFSET = 8
_PAGE_SIZE = 16


class MigrationWarmer:
    def __init__(
        self,
        backend: CgroupBackend,
        launcher: str,
        active: Callable[[], bool],
        period_seconds: float = 0.008,
    ) -> None:
        self.backend = backend
        self.launcher = launcher
        # Whether to warm (sessions open, fast placement configured): evaluated by
        # refresh(), which the manager calls when sessions open or close.
        self.active = active
        self.period = period_seconds
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._ctl_fd = -1
        self._page: mmap.mmap | None = None
        self._told: bool | None = None

    def start(self) -> None:
        for rel in GROUPS:
            if self.backend.exists(rel):  # left by a daemon that was killed
                with contextlib.suppress(CgroupError):
                    self.backend.kill(rel)
                self.backend.remove(rel)
            self.backend.create(rel, GroupLimits(pids_max=1))
        page_fd = os.memfd_create("agentd-warmer", os.MFD_CLOEXEC)
        procs: list[int] = []
        ctl_read = -1
        try:
            os.ftruncate(page_fd, _PAGE_SIZE)
            self._page = mmap.mmap(page_fd, _PAGE_SIZE)
            procs = [
                os.open(f"{self.backend.path_of(rel)}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
                for rel in GROUPS
            ]
            ctl_read, self._ctl_fd = os.pipe2(os.O_CLOEXEC)
            fds = (ctl_read, page_fd, *procs)
            self._process = subprocess.Popen(
                [self.launcher, "--warm", *map(str, fds), str(round(self.period * 1e6))],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        finally:
            for fd in (page_fd, ctl_read, *procs):
                if fd >= 0:
                    os.close(fd)
        # Out of the daemon's groups in every hierarchy (the helper's own writes move
        # it in one).
        self.backend.move(GROUPS[0], self._process.pid)
        self.refresh()

    def refresh(self) -> None:
        """Tell the helper whether to warm, if that changed (cheap when it did not)."""
        with self._lock:
            wanted = bool(self.active())
            if self._ctl_fd < 0 or wanted == self._told:
                return
            try:
                os.write(self._ctl_fd, b"a" if wanted else b"i")
                self._told = wanted
            except OSError as e:  # the helper died: placements are slower, nothing else
                log.warning("warmer.failed", error=str(e))

    def placed(self, at: float | None = None) -> None:
        """The daemon moved a process into a group just now, or at `at`
        (time.monotonic()): the helper rests until a period after it."""
        page = self._page
        if page is not None:
            _PLACED.pack_into(page, 0, time.monotonic_ns() if at is None else int(at * 1e9))

    @property
    def moves(self) -> int:
        """The helper's moves so far."""
        page = self._page
        return _PLACED.unpack_from(page, _MOVES_OFFSET)[0] if page is not None else 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stop(self) -> None:
        with self._lock:
            if self._ctl_fd >= 0:
                os.close(self._ctl_fd)  # the helper reads EOF and exits
                self._ctl_fd = -1
        if self._process is not None:
            try:
                self._process.wait(2.0)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for rel in GROUPS:
            with contextlib.suppress(CgroupError):
                self.backend.remove(rel)
