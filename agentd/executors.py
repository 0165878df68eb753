"""Tool calls without the SDK: a harness registers its tool-executor process, and every
child that process forks becomes a tool call of the session, placed in its own group
as soon as the fork is seen.

The fork is seen in the kernel (the executor is watched like a tool call's process), and
the child is moved from user space. With eBPF the kernel holds the child at its first
system call until then (docs/tracking.md), so it forks nothing outside its group; with
netlink it runs in the executor's cgroup meanwhile, and what it forks in that window
(an "escape") is moved in after it and counted. The window is measured per child (fork
to placed, CLOCK_BOOTTIME) and kept as statistics."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field

import structlog

from agentd.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
)
from agentd.manager import Caller, Manager
from agentd.model import Intent
from agentd.tracking import Tracker
from agentd.tracking.procinfo import TICK_NS, read_stat

log = structlog.get_logger("agentd.executors")

#: Placement windows kept for statistics.
WINDOW_SAMPLES = 10_000


@dataclass
class Executor:
    pid: int
    session_id: str
    owner_uid: int
    intent: Intent
    key: int = 0
    children: int = 0


@dataclass
class PlacementStats:
    windows_ns: list[int] = field(default_factory=list)
    placed: int = 0
    escaped: int = 0
    missed: int = 0  # children that exited before they could be placed
    held: int = 0  # children the kernel stopped at their first system call until placed

    def record(self, window_ns: int) -> None:
        self.placed += 1
        self.windows_ns.append(window_ns)
        del self.windows_ns[:-WINDOW_SAMPLES]


class _Handler:
    """Called on the tracker's event thread: only queues the work."""

    def __init__(self, registry: Executors, executor: Executor) -> None:
        self.registry = registry
        self.executor = executor

    def child(self, pid: int, fork_ns: int) -> None:
        seen_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        self.registry.work.put(("child", self.executor, pid, (fork_ns, seen_ns)))

    def escaped(self, root_pid: int, pid: int) -> None:
        self.registry.work.put(("escaped", self.executor, pid, root_pid))


class Executors:
    def __init__(self, manager: Manager, tracker: Tracker | None) -> None:
        self.manager = manager
        self.tracker = tracker
        self.stats = PlacementStats()
        self.work: queue.SimpleQueue[tuple[str, Executor, int, object] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._by_pid: dict[int, Executor] = {}
        self._thread = threading.Thread(target=self._run, name="agentd-executors", daemon=True)
        if tracker is not None:
            tracker._root_exit_handler = manager.end_adopted
            self._thread.start()

    def register(self, caller: Caller, session_id: str, pid: int, intent: Intent) -> Executor:
        self.manager.validate_intent(caller, session_id, intent)
        if self.tracker is None or self.tracker.source_name not in ("ebpf", "netlink"):
            raise FailedPreconditionError(
                "executors need process events from the kernel (ebpf or netlink); this "
                f"node tracks with {self.tracker.source_name if self.tracker else 'nothing'}"
            )
        if pid <= 1 or pid == os.getpid():
            raise InvalidArgumentError("pid", f"{pid} cannot be an executor")
        try:
            owner = os.stat(f"/proc/{pid}").st_uid
        except FileNotFoundError:
            raise InvalidArgumentError("pid", f"no process {pid}") from None
        if not caller.is_root and owner != caller.uid:
            raise PermissionDeniedError(f"pid {pid} is not a process of uid {caller.uid}")
        executor = Executor(pid=pid, session_id=session_id, owner_uid=caller.uid, intent=intent)
        with self._lock:
            if pid in self._by_pid:
                raise AlreadyExistsError(f"pid {pid} is already an executor")
            self._by_pid[pid] = executor
        executor.key = self.tracker.watch_executor(pid, _Handler(self, executor))
        log.info("executor.registered", pid=pid, session=session_id, uid=caller.uid)
        return executor

    def unregister(self, pid: int) -> bool:
        with self._lock:
            executor = self._by_pid.pop(pid, None)
        if executor is None:
            return False
        if self.tracker is not None:
            self.tracker.unwatch_executor(executor.key)
        return True

    def drop_session(self, session_id: str) -> None:
        with self._lock:
            pids = [p for p, e in self._by_pid.items() if e.session_id == session_id]
        for pid in pids:
            self.unregister(pid)

    def of_caller(self, caller: Caller) -> list[Executor]:
        with self._lock:
            return [e for e in self._by_pid.values() if caller.is_root or e.owner_uid == caller.uid]

    def stop(self) -> None:
        self.work.put(None)

    def _run(self) -> None:
        while (item := self.work.get()) is not None:
            kind, executor, pid, extra = item
            try:
                if kind == "child":
                    fork_ns, seen_ns = extra  # type: ignore[misc]
                    self._place_child(executor, pid, fork_ns, seen_ns)
                else:
                    if self.manager.adopt_escaped(int(extra), pid):  # type: ignore[call-overload]
                        self.stats.escaped += 1
            except Exception:
                log.exception("executor.place_failed", pid=pid)

    def _place_child(self, executor: Executor, pid: int, fork_ns: int, seen_ns: int) -> None:
        start_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        tool_call = None
        try:
            tool_call = self.manager.adopt_child(
                executor.session_id, executor.owner_uid, executor.intent, pid, fork_ns
            )
        finally:
            # Placed or not (it exited, its session closed, the move failed): let it go.
            stopped = self.tracker is not None and self.tracker.release_held(pid)
            if stopped and _continue(pid, fork_ns):
                self.stats.held += 1
        if tool_call is None:
            if executor.session_id not in {
                s.id for s in self.manager.list_sessions(Caller(0, 0, 0))
            }:
                self.unregister(executor.pid)  # the session was closed
            else:
                self.stats.missed += 1
            return
        executor.children += 1
        done_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        self.stats.record(done_ns - fork_ns)
        log.debug(
            "executor.child_placed",
            pid=pid,
            tool_call=tool_call.id,
            kernel_to_daemon_ms=(seen_ns - fork_ns) / 1e6,
            queued_ms=(start_ns - seen_ns) / 1e6,
            placing_ms=(done_ns - start_ns) / 1e6,
        )


def _continue(pid: int, fork_ns: int) -> bool:
    """SIGCONT the held child `pid` if it is still the process forked at `fork_ns` (its
    pid may have been reused after it died). The kernel deletes its hold entry before it
    sends the SIGSTOP, so a stop can land just after our SIGCONT: look again."""
    for _ in range(3):
        st = read_stat(pid)
        if st is None or abs(st.start_ns - fork_ns) > 2 * TICK_NS:
            return False
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.0005)
        st = read_stat(pid)
        if st is None or st.state != "T":
            return True
    return True
