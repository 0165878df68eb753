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
from collections.abc import Iterable
from typing import Any

from agentd.tracking.events import LossReport, ProcEvent
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

    @classmethod
    def start(cls, prefer: str = "auto", process_usage: bool = True, **kwargs: Any) -> Tracker:
        tracker = cls(**kwargs)
        tracker.source, tracker.reason = choose_source(tracker._on_event, prefer, process_usage)
        return tracker

    def stop(self) -> None:
        if self.source is not None:
            self.source.stop()

    @property
    def source_name(self) -> str:
        return self.source.name if self.source else "none"

    # ---- tool calls --------------------------------------------------------------

    def begin(self, tool_call_id: str, pid: int, cgroup_procs: str | None = None) -> ProcessTree:
        """Track the tool call whose launcher is `pid`; call before it executes."""
        assert self.source is not None
        with self._lock:
            tree = self._new_tree(tool_call_id)
            st = read_stat(pid)
            if st is not None:
                tree.add_root(st, read_argv(pid), read_exe(pid))
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

    def tree(self, tool_call_id: str) -> ProcessTree | None:
        """The live tree object; read it under `locked()` or use snapshot()."""
        return self._by_id.get(tool_call_id)

    def locked(self) -> threading.Lock:
        return self._lock

    def snapshot(self, tool_call_id: str) -> dict[str, Any] | None:
        """The JSON shape `agentctl tree --json` prints."""
        with self._lock:
            tree = self._by_id.get(tool_call_id)
            if tree is None:
                return None
            out = tree.as_dict()
        loss = self.loss()
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

    def _on_event(self, ev: ProcEvent) -> None:
        # Runs on the source's thread: O(1) work per event, never blocks.
        with self._lock:
            tree = self._by_key.get(ev.key)
            if tree is None:
                self.unattributed += 1
                return
            tree.apply(ev)
            for sub in self._subs:
                try:
                    sub.queue.put_nowait((tree.tool_call_id, ev))
                except queue.Full:
                    sub.dropped += 1
