"""The tracking facade the daemon plugs in: one source, the trees, a stream of events.

Daemon integration (see docs/tracking.md):
  tracker = Tracker.start()                       # picks ebpf -> netlink -> procfs
  tracker.begin(tool_call_id, launcher_pid, cgroup_procs)   # after the move, before "go"
  tracker.end(tool_call_id, exit_code, signal)    # at EndToolCall (SDK's wait status)
  tracker.snapshot(tool_call_id)                  # the tree as a dict (API, agentctl tree)
  sub = tracker.subscribe(); sub.get(timeout)     # (tool_call_id, ProcEvent) stream
  tracker.seed(tool_call_id, pids, cgroup_procs)  # at start, for tool calls found running
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from agentd.tracking.events import Kind, LossReport, ProcEvent
from agentd.tracking.procinfo import descendants, read_argv, read_exe, read_stat
from agentd.tracking.source import EventSource, choose_source
from agentd.tracking.tree import DEFAULT_MAX_NODES, ProcessTree


class Subscription:
    """A bounded queue of (tool_call_id, event). A slow reader loses events, counted in
    `dropped`, instead of growing the daemon's memory."""

    def __init__(self, tracker: Tracker, maxsize: int) -> None:
        self._tracker = tracker
        self.queue: queue.Queue[tuple[str, ProcEvent]] = queue.Queue(maxsize)
        self.dropped = 0

    def get(self, timeout: float | None = None) -> tuple[str, ProcEvent]:
        """Raises queue.Empty after `timeout`."""
        return self.queue.get(timeout=timeout)

    def close(self) -> None:
        self._tracker._unsubscribe(self)


class ExecutorHandler(Protocol):
    """What the daemon does with an executor's children; called on the source's thread,
    so it must only hand the work over (a queue), never block."""

    def child(self, pid: int, fork_ns: int) -> None: ...

    def escaped(self, root_pid: int, pid: int) -> None: ...


class Tracker:
    def __init__(
        self,
        source: EventSource | None = None,
        reason: str = "",
        max_nodes: int = DEFAULT_MAX_NODES,
        history: int = 256,
    ) -> None:
        self.source = source
        self.reason = reason
        self.max_nodes = max_nodes
        self.history = history
        self._lock = threading.Lock()
        self._keys = itertools.count(1)
        self._by_key: dict[int, ProcessTree] = {}
        self._by_id: dict[str, ProcessTree] = {}
        self._running: set[str] = set()
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._subs: list[Subscription] = []
        self.unattributed = 0  # events for keys we no longer know
        self._executors: dict[int, tuple[int, ExecutorHandler]] = {}
        # An executor's child, or a process it forked before it was placed -> the child.
        self._adopted: dict[int, int] = {}
        # Called (tool_call_id, exit_code, signal) when an adopted tool call's root exits.
        self._root_exit_handler: Callable[[str, int | None, int | None], None] | None = None

    @classmethod
    def start(
        cls, prefer: str = "auto", process_usage: bool = True, guard: bool = False, **kwargs: Any
    ) -> Tracker:
        tracker = cls(**kwargs)
        tracker.source, tracker.reason = choose_source(
            tracker._on_event, prefer, process_usage, guard
        )
        return tracker

    def stop(self) -> None:
        if self.source is not None:
            self.source.stop()

    @property
    def source_name(self) -> str:
        return self.source.name if self.source else "none"

    # ---- tool calls --------------------------------------------------------------

    def begin(
        self,
        tool_call_id: str,
        pid: int,
        cgroup_procs: str | None = None,
        exe: str | None = None,
    ) -> ProcessTree:
        """Track the tool call whose launcher is `pid`; call before it executes. `exe`:
        its executable when the caller has read it already."""
        assert self.source is not None
        with self._lock:
            tree = self._new_tree(tool_call_id)
            st = read_stat(pid)
            if st is not None:
                tree.add_root(st, read_argv(pid), exe if exe is not None else read_exe(pid))
        self.source.watch(pid, tree.key, cgroup_procs)
        return tree

    def seed(
        self, tool_call_id: str, pids: Iterable[int], cgroup_procs: str | None = None
    ) -> ProcessTree:
        """Track a tool call already running (daemon restart): its group's processes and
        their descendants become nodes, each watched so what they fork is attributed."""
        assert self.source is not None
        with self._lock:
            tree = self._by_id.get(tool_call_id) or self._new_tree(tool_call_id)
            found = descendants(set(pids))
            for st in found:
                tree.seed(st, read_argv(st.pid), read_exe(st.pid))
            if tree.root is None and tree.nodes:
                tree.root = tree.nodes[0]
        for st in found:
            self.source.watch(st.pid, tree.key, cgroup_procs)
        return tree

    def end(
        self, tool_call_id: str, exit_code: int | None = None, signal: int | None = None
    ) -> ProcessTree | None:
        """The command ended. Processes that outlive it stay attributed (their events
        still update the tree) until the tree leaves the bounded history."""
        with self._lock:
            tree = self._by_id.get(tool_call_id)
            if tree is None:
                return None
            tree.set_root_exit(exit_code, signal)
            self._running.discard(tool_call_id)
            self._ended[tool_call_id] = None
            evicted = []
            while len(self._ended) > self.history:
                old_id, _ = self._ended.popitem(last=False)
                old = self._by_id.pop(old_id)
                self._by_key.pop(old.key, None)
                evicted.append(old.key)
        for key in evicted:
            if self.source is not None:
                self.source.unwatch(key)
        return tree

    def _new_tree(self, tool_call_id: str) -> ProcessTree:
        if tool_call_id in self._by_id:
            raise ValueError(f"tool call {tool_call_id} is already tracked")
        tree = ProcessTree(next(self._keys), tool_call_id, self.max_nodes)
        self._by_key[tree.key] = tree
        self._by_id[tool_call_id] = tree
        self._running.add(tool_call_id)
        return tree

    # ---- reading -----------------------------------------------------------------

    def key_of(self, tool_call_id: str) -> int | None:
        """The kernel key of a tracked tool call (what the guard's maps are keyed by)."""
        tree = self._by_id.get(tool_call_id)
        return tree.key if tree is not None else None

    def tool_call_of(self, key: int) -> str | None:
        tree = self._by_key.get(key)
        return tree.tool_call_id if tree is not None else None

    def tree(self, tool_call_id: str) -> ProcessTree | None:
        """The live tree object; read it under `locked()` or use snapshot()."""
        return self._by_id.get(tool_call_id)

    def locked(self) -> threading.Lock:
        return self._lock

    def snapshot(self, tool_call_id: str, loss: LossReport | None = None) -> dict[str, Any] | None:
        """The JSON shape `agentctl tree --json` prints. `loss`: the loss report to put
        in it, when the caller snapshots many trees at once (reading the source's
        counters costs a map read per CPU)."""
        with self._lock:
            tree = self._by_id.get(tool_call_id)
            if tree is None:
                return None
            out = tree.as_dict()
        loss = loss or self.loss()
        out.update(source=self.source_name, lost_events=loss.lost, loss_exact=loss.exact)
        return out

    def loss(self) -> LossReport:
        assert self.source is not None
        return self.source.loss()

    def status(self) -> dict[str, Any]:
        loss = self.loss()
        return {
            "source": self.source_name,
            "reason": self.reason,
            "lost_events": loss.lost,
            "loss_exact": loss.exact,
            "loss_detail": loss.detail,
            "tracked_tool_calls": len(self._by_id),
            "unattributed_events": self.unattributed,
        }

    # ---- events ------------------------------------------------------------------

    def subscribe(self, maxsize: int = 10_000) -> Subscription:
        sub = Subscription(self, maxsize)
        with self._lock:
            self._subs.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    # ---- executors: tool calls without the SDK ----------------------------------------

    def watch_executor(self, pid: int, handler: ExecutorHandler) -> int:
        """Report every child `pid` forks (handler.child) and every process such a child
        forked before it was re-keyed (handler.escaped), so that each child can become a
        tool call of its own. Returns the key; unwatch_executor(key) stops it."""
        assert self.source is not None
        with self._lock:
            key = next(self._keys)
            self._executors[key] = (pid, handler)
        if self.holds_executor_children:
            self.source.watch(pid, key, hold_children=True)  # type: ignore[call-arg]
        else:
            self.source.watch(pid, key)
        return key

    @property
    def holds_executor_children(self) -> bool:
        """Whether an executor's children stop at their first system call until placed
        (eBPF only); release_held() then lets each one go."""
        return bool(getattr(self.source, "can_hold_children", False))

    def release_held(self, pid: int) -> bool:
        """Stop holding executor child `pid`; True if it was stopped and needs SIGCONT."""
        if not self.holds_executor_children:
            return False
        return self.source.release_held(pid)  # type: ignore[union-attr]

    def unwatch_executor(self, key: int) -> None:
        with self._lock:
            self._executors.pop(key, None)
        if self.source is not None:
            self.source.unwatch(key)

    def adopt(self, tool_call_id: str, pid: int, fork_ns: int) -> ProcessTree:
        """Make an executor's child `pid` the root of tool call `tool_call_id`: its later
        events (and its future children's) carry the tree's key."""
        assert self.source is not None
        with self._lock:
            tree = self._new_tree(tool_call_id)
            tree.adopted = True
            st = read_stat(pid)
            if st is not None:
                tree.add_root(st, read_argv(pid), read_exe(pid))
        self.source.watch(pid, tree.key)
        return tree

    def adopt_escaped(self, tool_call_id: str, pid: int) -> None:
        """A process forked by an adopted child before the child was re-keyed."""
        assert self.source is not None
        with self._lock:
            tree = self._by_id.get(tool_call_id)
            if tree is None:
                return
            st = read_stat(pid)
            if st is not None:
                tree.seed(st, read_argv(pid), read_exe(pid))
            key = tree.key
        self.source.watch(pid, key)

    def _executor_event(self, ev: ProcEvent) -> Callable[[], None] | None:
        """What an event of an executor's key means; called with the lock held, returns
        the handler call to make once the lock is released.

        Runs before the daemon has placed the child, so a child's own forks (escapes)
        are recognised by the child's pid, which is known from its fork on."""
        pid, handler = self._executors[ev.key]
        if ev.kind is Kind.EXIT:
            self._adopted.pop(ev.pid, None)
            return None
        if ev.kind is not Kind.FORK:
            return None
        if ev.ppid == pid:
            self._adopted[ev.pid] = ev.pid
            return lambda: handler.child(ev.pid, ev.time_ns)
        root = self._adopted.get(ev.ppid)
        if root is not None:
            self._adopted[ev.pid] = root
            return lambda: handler.escaped(root, ev.pid)
        return None

    def _on_event(self, ev: ProcEvent) -> None:
        # Runs on the source's thread: O(1) work per event, never blocks; a handler is
        # called after the lock is released, and only hands work over.
        call: Callable[[], None] | None = None
        with self._lock:
            tree = self._by_key.get(ev.key)
            if tree is None:
                if ev.key in self._executors:
                    call = self._executor_event(ev)
                else:
                    self.unattributed += 1
            else:
                tree.apply(ev)
                for sub in self._subs:
                    try:
                        sub.queue.put_nowait((tree.tool_call_id, ev))
                    except queue.Full:
                        sub.dropped += 1
                if ev.kind is Kind.EXIT and self._adopted:
                    self._adopted.pop(ev.pid, None)
                root = tree.root
                if (
                    tree.adopted
                    and ev.kind is Kind.EXIT
                    and root is not None
                    and ev.pid == root.pid
                ):
                    handler = self._root_exit_handler
                    if handler is not None:
                        tid, code, sig = tree.tool_call_id, ev.exit_code, ev.signal
                        call = lambda: handler(tid, code, sig)  # noqa: E731
        if call is not None:
            call()
