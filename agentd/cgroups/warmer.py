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
semaphore warm. Cost, measured by bench/toolcall_latency.py: one cgroupfs write
per period (~0.4% of a core at 8 ms), and fork/exit on the host take the
semaphore's slower reader path meanwhile - the same trade favordynmods makes.
Disable it with `[cgroup] fast_placement = false`.

The moved process is agentd's own launcher blocked on a pipe that only the
daemon holds: if the daemon dies, the pipe closes and the process exits.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable

import structlog

from agentd.cgroups.base import CgroupBackend, CgroupError, GroupLimits

log = structlog.get_logger("agentd.warmer")

GROUPS = ("warm-a", "warm-b")


class MigrationWarmer:
    def __init__(
        self,
        backend: CgroupBackend,
        launcher: str,
        active: Callable[[], bool],
        period_seconds: float = 0.008,
        last_placement: Callable[[], float] | None = None,
    ) -> None:
        self.backend = backend
        # time.monotonic() of the daemon's last move of a process (a placement): it
        # warms the semaphore too, so while tool calls come faster than the period the
        # warmer has nothing to do.
        self.last_placement = last_placement
        self.launcher = launcher
        self.active = active
        self.period = period_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agentd-warmer", daemon=True)
        self._process: subprocess.Popen[bytes] | None = None
        self._hold_fd = -1
        self.moves = 0

    def start(self) -> None:
        for rel in GROUPS:
            if self.backend.exists(rel):  # left by a daemon that was killed
                with contextlib.suppress(CgroupError):
                    self.backend.kill(rel)
                self.backend.remove(rel)
            self.backend.create(rel, GroupLimits(pids_max=1))
        read_fd, self._hold_fd = os.pipe2(os.O_CLOEXEC)
        self._process = subprocess.Popen(
            [self.launcher, str(read_fd), "2", "--", "/bin/false"],
            pass_fds=(read_fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(read_fd)
        self.backend.move(GROUPS[0], self._process.pid)
        self._files = [f"{self.backend.path_of(rel)}/cgroup.procs" for rel in GROUPS]
        self._thread.start()

    def _run(self) -> None:
        pid = str(self._process.pid).encode() if self._process else b""
        index = 0
        while not self._stop.is_set():
            if not self.active():
                self._stop.wait(0.1)
                continue
            placed = self.last_placement() if self.last_placement is not None else 0.0
            if time.monotonic() - placed < self.period:
                # A whole period, not the rest of it: one wake-up per period as when
                # moving, and a move within 16 ms of the last is still cheap.
                self._stop.wait(self.period)
                continue
            index ^= 1
            try:
                fd = os.open(self._files[index], os.O_WRONLY)
                try:
                    os.write(fd, pid)
                finally:
                    os.close(fd)
                self.moves += 1
            except OSError as e:
                log.warning("warmer.failed", error=str(e))
                self._stop.wait(1.0)
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        if self._hold_fd >= 0:
            os.close(self._hold_fd)  # the launcher reads EOF and exits
            self._hold_fd = -1
        if self._process is not None:
            try:
                self._process.wait(2.0)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for rel in GROUPS:
            with contextlib.suppress(CgroupError):
                self.backend.remove(rel)
