"""The pressure monitor: reads the node's signals into a `policy.Sample`.

Signals, each optional (None when this node lacks it):
- node PSI, /proc/pressure/memory and /proc/pressure/cpu, "some avg10";
- agentd's own sessions group: its memory use against the node allocatable (so a small
  configured allocatable creates pressure inside agentd's hierarchy without the host
  being short of memory), on v2 its memory.pressure (per-group PSI) and its
  memory.events max / oom_kill counts (v1: the oom_kill count of memory.oom_control);
- guard events ("guard_action" on the EventBus) within a window.

A PSI trigger (poll() on /proc/pressure/memory) wakes the loop as soon as the kernel
sees a stall, between the regular samples; it works unprivileged and reacts in ~1 s.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import time
from collections import deque
from collections.abc import Callable

import structlog

from agentd.cgroups.base import CgroupBackend, CgroupError
from agentd.cgroups.common import parse_keyed
from agentd.enforcement.policy import Sample
from agentd.events import Event, EventBus
from agentd.metrics.reader import CachedReader

log = structlog.get_logger("agentd.pressure")

NODE_MEMORY_PSI = "/proc/pressure/memory"
NODE_CPU_PSI = "/proc/pressure/cpu"
#: The group whose use is compared with the node allocatable: all sessions together.
SESSIONS = "sessions"


def parse_psi_some_avg10(text: str) -> float | None:
    """The "some avg10" percentage of a PSI file, None if absent."""
    for line in text.splitlines():
        if line.startswith("some "):
            for field in line.split()[1:]:
                key, _, value = field.partition("=")
                if key == "avg10":
                    return float(value)
    return None


def read_psi(path: str, reader: CachedReader | None = None) -> float | None:
    """ "some avg10" of a PSI file; with `reader`, from a file kept open (pread at 0
    regenerates a PSI file: no open and close every sample)."""
    try:
        if reader is not None:
            return parse_psi_some_avg10(reader.read(path))
        with open(path) as f:
            return parse_psi_some_avg10(f.read())
    except (OSError, ValueError):
        return None


class PsiTrigger:
    """A PSI trigger: poll() returns when memory stalls exceed `stall_us` within
    `window_us`. Without CAP_SYS_RESOURCE the kernel (6.x) accepts only windows that
    are multiples of 2 s, so a refused window is retried as 2 s with the same share of
    stall. Without PSI, wait() sleeps."""

    def __init__(
        self, path: str = NODE_MEMORY_PSI, stall_us: int = 100_000, window_us: int = 1_000_000
    ) -> None:
        self._fd: int | None = None
        self._poll: select.poll | None = None
        self.path = path
        self.window_us = 0
        unprivileged = (stall_us * 2_000_000 // window_us, 2_000_000)
        for stall, window in ((stall_us, window_us), unprivileged):
            try:
                fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as e:
                log.info("pressure.trigger_unavailable", path=path, error=os.strerror(e.errno or 0))
                return
            try:
                os.write(fd, f"some {stall} {window}\0".encode())
            except OSError as e:
                os.close(fd)
                error = os.strerror(e.errno or 0)
                continue
            self._fd, self.window_us = fd, window
            self._poll = select.poll()
            self._poll.register(fd, select.POLLPRI)
            return
        log.info("pressure.trigger_unavailable", path=path, error=error)

    @property
    def armed(self) -> bool:
        return self._fd is not None

    @property
    def fd(self) -> int | None:
        """The trigger's file, to poll (POLLPRI) along with others; None if not armed."""
        return self._fd

    def wait(self, timeout_s: float) -> bool:
        """Block up to `timeout_s`; True if the trigger fired."""
        if self._poll is None:
            time.sleep(timeout_s)
            return False
        try:
            events = self._poll.poll(timeout_s * 1000)
        except InterruptedError:
            return False
        for _, mask in events:
            if mask & select.POLLERR:
                # The file went away (should not happen for /proc/pressure): stop polling.
                self.close()
                time.sleep(timeout_s)
                return False
            if mask & select.POLLPRI:
                return True
        return False

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self._poll = None


class PressureMonitor:
    def __init__(
        self,
        backend: CgroupBackend,
        allocatable_memory: int,
        bus: EventBus | None = None,
        guard_window_seconds: float = 10.0,
        node_memory_psi: str = NODE_MEMORY_PSI,
        node_cpu_psi: str = NODE_CPU_PSI,
    ) -> None:
        self.backend = backend
        self.allocatable_memory = allocatable_memory
        self.guard_window_seconds = guard_window_seconds
        self._paths = (node_memory_psi, node_cpu_psi)
        self._guard_times: deque[float] = deque()
        #: Called (on the publisher's thread) for each guard action: the loop's wake-up.
        self.on_guard_action: Callable[[], None] | None = None
        self._guards = (
            bus.subscribe(self._is_guard_action, maxsize=1000)
            if bus is not None and guard_window_seconds > 0
            else None
        )
        self._last_limit_count: int | None = None
        # PSI files stay open between samples (a few, bounded: node and sessions group).
        self._reader = CachedReader(max_open=8)

    @property
    def psi_paths(self) -> tuple[str, str]:
        """The node's memory and CPU PSI files this monitor reads."""
        return self._paths

    def _is_guard_action(self, event: Event) -> bool:
        if event.kind != "guard_action":
            return False
        wake = self.on_guard_action
        if wake is not None:
            wake()
        return True

    def close(self) -> None:
        if self._guards is not None:
            self._guards.close()
        self._reader.close()

    def sample(self, now: float | None = None) -> Sample:
        now = time.monotonic() if now is None else now
        usage_fraction, limit_events = self._sessions_group()
        return Sample(
            time=now,
            memory_psi=read_psi(self._paths[0], self._reader),
            cpu_psi=read_psi(self._paths[1], self._reader),
            group_memory_psi=self._group_memory_psi(),
            usage_fraction=usage_fraction,
            limit_events=limit_events,
            guard_actions=self._guard_actions(now),
        )

    def _sessions_group(self) -> tuple[float | None, int]:
        """(memory use / allocatable, new limit events since the last sample)."""
        try:
            usage = self.backend.usage(SESSIONS)
        except CgroupError as e:
            log.warning("pressure.usage_unreadable", error=str(e))
            return None, 0
        count = usage.oom_kills + self._memory_max_events()
        new = 0 if self._last_limit_count is None else max(count - self._last_limit_count, 0)
        self._last_limit_count = count
        if not self.allocatable_memory:
            return None, new
        return usage.memory_current / self.allocatable_memory, new

    def _memory_max_events(self) -> int:
        """v2 memory.events "max": allocations that hit the node budget and reclaimed."""
        if self.backend.name != "v2":
            return 0
        try:
            with open(f"{self.backend.path_of(SESSIONS)}/memory.events") as f:
                return parse_keyed(f.read()).get("max", 0)
        except OSError:
            return 0

    def _group_memory_psi(self) -> float | None:
        if self.backend.name != "v2":
            return None  # v1 has per-group PSI only with the psi_cgroup_v1 boot option
        return read_psi(f"{self.backend.path_of(SESSIONS)}/memory.pressure", self._reader)

    def _guard_actions(self, now: float) -> int:
        if self._guards is None:
            return 0
        while True:
            try:
                _, dropped = self._guards.get(timeout=0)
            except queue.Empty:
                break
            # Guard events lost to a full queue were guard actions too.
            self._guard_times.extend([now] * (1 + dropped))
        while self._guard_times and now - self._guard_times[0] > self.guard_window_seconds:
            self._guard_times.popleft()
        return len(self._guard_times)
