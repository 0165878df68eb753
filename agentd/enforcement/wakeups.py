"""What wakes the pressure loop besides its interval: the kernel's notifications.

While the policy is quiet and every signal is below its exit threshold, the loop need
not sample every interval if the kernel tells it when that could change
(docs/pressure.md, "Idle"):

- node (and v2 group) memory / CPU PSI: a PSI trigger at the exit threshold's share of
  its window. avg10 is an average of the stall shares of 2 s periods; while no window
  holds that share of stall, avg10 cannot climb to the exit threshold, so the trigger
  fires before a signal could leave LOW;
- the sessions group's memory use (v1): memory thresholds (eventfds registered in
  cgroup.event_control on memory.usage_in_bytes) at usage_exit and usage_enter of the
  allocatable; each fires when the use crosses it, up or down (the one at usage_enter
  makes the crossing seen at once, not at the next interval);
- guard actions: the bus's publisher wakes the loop (`wake()`).

A signal no notification covers (v2's memory use and memory.events, a trigger the
kernel refused) keeps the loop on its interval: `covers()` says which are covered.
"""

from __future__ import annotations

import contextlib
import os
import select

import structlog

from agentd.enforcement.pressure import PsiTrigger

log = structlog.get_logger("agentd.pressure")


class Wakeups:
    def __init__(self) -> None:
        self._poll = select.poll()
        # eventfds we read to re-arm (our own wake-up and memory thresholds); PSI
        # triggers re-arm by themselves.
        self._counters: set[int] = set()
        self._triggers: dict[int, PsiTrigger] = {}
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._add_counter(self._wake)
        self.psi: set[str] = set()  # the PSI files whose trigger is armed
        self.usage_threshold = False  # the v1 memory threshold is registered

    def add_psi(self, path: str, share: float, window_us: int = 1_000_000) -> bool:
        """A trigger on `path` ("some" stall of `share` of the window); False when the
        kernel refuses it (no PSI, or no per-group PSI)."""
        stall_us = int(window_us * share)
        if stall_us <= 0:
            return False
        trigger = PsiTrigger(path, stall_us=stall_us, window_us=window_us)
        if trigger.fd is None:
            return False
        self._triggers[trigger.fd] = trigger
        self._poll.register(trigger.fd, select.POLLPRI)
        self.psi.add(path)
        return True

    def add_memory_threshold_v1(self, memory_dir: str, threshold: int) -> bool:
        """An eventfd signalled when `memory_dir`'s memory.usage_in_bytes crosses
        `threshold` (either way); False when cgroupfs refuses it."""
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            usage = os.open(f"{memory_dir}/memory.usage_in_bytes", os.O_RDONLY | os.O_CLOEXEC)
            try:
                with open(f"{memory_dir}/cgroup.event_control", "w") as control:
                    control.write(f"{efd} {usage} {threshold}")
            finally:
                os.close(usage)  # the registration holds the group, not this file
        except OSError as e:
            os.close(efd)
            log.info("pressure.threshold_unavailable", path=memory_dir, error=str(e))
            return False
        self._add_counter(efd)
        self.usage_threshold = True
        return True

    def wake(self) -> None:
        """From any thread: the next or current wait() returns at once."""
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake, 1)

    def wait(self, timeout_s: float) -> bool:
        """Block up to `timeout_s`; True if something woke it."""
        try:
            events = self._poll.poll(timeout_s * 1000)
        except InterruptedError:
            return False
        for fd, mask in events:
            if fd in self._counters:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(fd)
            elif mask & select.POLLERR and fd in self._triggers:
                # A trigger's file went away (a removed group): stop polling it.
                self._poll.unregister(fd)
                trigger = self._triggers.pop(fd)
                self.psi.discard(trigger.path)
                trigger.close()
        return bool(events)

    def close(self) -> None:
        for trigger in self._triggers.values():
            trigger.close()
        for fd in self._counters:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._triggers.clear()
        self._counters.clear()

    def _add_counter(self, fd: int) -> None:
        self._counters.add(fd)
        self._poll.register(fd, select.POLLIN)
