"""The process tree of one tool call, built from ProcEvents.

A process is identified by (pid, start_ns): pids are reused, start times are not.
Parent links are the parent *at fork*: when a parent dies and the kernel reparents
its child to init or a subreaper, the child keeps its place (and its tool call) here,
because attribution never looks at the current ppid.

Memory is bounded: past `max_nodes` processes a tree stops adding nodes and counts
what it dropped, so a fork bomb cannot grow the daemon without limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentd.tracking.events import Kind, ProcEvent
from agentd.tracking.procinfo import ProcStat, boot_to_wall, same_start

DEFAULT_MAX_NODES = 20_000


@dataclass(slots=True, eq=False)
class ProcessNode:
    pid: int
    start_ns: int  # CLOCK_BOOTTIME; with pid, the identity
    ppid: int  # parent at fork (0: unknown, e.g. its fork event was lost)
    parent_start_ns: int | None = None
    comm: str = ""
    argv: tuple[str, ...] | None = None
    argv_truncated: bool = False
    exe: str | None = None
    execs: int = 0
    end_ns: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    seeded: bool = False  # found by a /proc scan, not seen forking
    cpu_ns: int | None = None  # from the EXIT event; None: unknown (netlink, procfs sources)
    peak_rss_bytes: int | None = None
    fork_seen: bool = True  # False when created from an EXEC/EXIT of an unknown process
    children: list[ProcessNode] = field(default_factory=list)

    @property
    def identity(self) -> tuple[int, int]:
        return (self.pid, self.start_ns)

    @property
    def running(self) -> bool:
        return self.end_ns is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "ppid": self.ppid,
            "start_ns": self.start_ns,
            "argv": list(self.argv) if self.argv is not None else None,
            "argv_truncated": self.argv_truncated,
            "exe": self.exe,
            "comm": self.comm,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "start_time": boot_to_wall(self.start_ns),
            "end_time": boot_to_wall(self.end_ns) if self.end_ns is not None else None,
            "seeded": self.seeded,
            "cpu_seconds": self.cpu_ns / 1e9 if self.cpu_ns is not None else None,
            "peak_rss_bytes": self.peak_rss_bytes,
        }


class ProcessTree:
    """All processes of one tool call. Not thread-safe: the Tracker serializes access."""

    def __init__(self, key: int, tool_call_id: str, max_nodes: int = DEFAULT_MAX_NODES) -> None:
        self.key = key
        self.tool_call_id = tool_call_id
        self.max_nodes = max_nodes
        self.nodes: list[ProcessNode] = []
        self.live: dict[int, ProcessNode] = {}
        self.root: ProcessNode | None = None
        self.dropped = 0  # processes not recorded because of max_nodes
        # The root is an executor's child adopted as a tool call (no SDK waits for it):
        # its exit ends the tool call.
        self.adopted = False
        # Events about processes this tree never saw start: evidence of lost events
        # (or of processes started before tracking began).
        self.unmatched = 0
        self.counts = {"fork": 0, "exec": 0, "exit": 0}

    # ---- building -------------------------------------------------------------

    def _add(self, node: ProcessNode) -> ProcessNode | None:
        if len(self.nodes) >= self.max_nodes:
            self.dropped += 1
            return None
        old = self.live.get(node.pid)
        if old is not None and old is not node:
            # The pid was reused while we still thought the old process alive: its exit
            # was lost. Close it without a status rather than merge two processes.
            old.end_ns = old.end_ns or node.start_ns
            self.unmatched += 1
        self.nodes.append(node)
        self.live[node.pid] = node
        if node.ppid:
            parent = self.live.get(node.ppid)
            if parent is not None:
                node.parent_start_ns = parent.start_ns
                parent.children.append(node)
        return node

    def add_root(
        self, stat: ProcStat, argv: tuple[str, ...] | None, exe: str | None
    ) -> ProcessNode | None:
        """The process handed to watch(): the tool call's launcher."""
        node = self._add(
            ProcessNode(
                pid=stat.pid, start_ns=stat.start_ns, ppid=stat.ppid, comm=stat.comm,
                argv=argv, exe=exe, seeded=True,
            )
        )  # fmt: skip
        self.root = self.root or node
        return node

    def seed(self, stat: ProcStat, argv: tuple[str, ...] | None, exe: str | None) -> None:
        """A process found running by a /proc scan (e.g. after a daemon restart)."""
        existing = self.live.get(stat.pid)
        if existing is not None and same_start(existing.start_ns, stat.start_ns):
            return
        self._add(
            ProcessNode(
                pid=stat.pid, start_ns=stat.start_ns, ppid=stat.ppid, comm=stat.comm,
                argv=argv, exe=exe, seeded=True,
            )
        )  # fmt: skip

    def _unknown(self, ev: ProcEvent) -> ProcessNode | None:
        self.unmatched += 1
        return self._add(
            ProcessNode(pid=ev.pid, start_ns=ev.time_ns, ppid=0, comm=ev.comm, fork_seen=False)
        )

    def apply(self, ev: ProcEvent) -> ProcessNode | None:
        if ev.kind is Kind.FORK:
            self.counts["fork"] += 1
            parent = self.live.get(ev.ppid)
            return self._add(
                ProcessNode(
                    pid=ev.pid, start_ns=ev.time_ns, ppid=ev.ppid, comm=ev.comm,
                    # Until it executes, a child runs its parent's program.
                    argv=parent.argv if parent else None,
                    exe=parent.exe if parent else None,
                )
            )  # fmt: skip
        node = self.live.get(ev.pid) or self._unknown(ev)
        if ev.kind is Kind.EXEC:
            self.counts["exec"] += 1
            if node is not None:
                node.execs += 1
                node.exe = ev.exe or node.exe
                node.argv = ev.argv
                node.argv_truncated = ev.argv_truncated
                node.comm = ev.comm or node.comm
        else:
            self.counts["exit"] += 1
            if node is not None:
                node.end_ns = ev.time_ns
                # A source that cannot know the status (procfs) must not erase one the
                # waiter already reported through set_root_exit().
                if ev.exit_code is not None or ev.signal is not None:
                    node.exit_code, node.signal = ev.exit_code, ev.signal
                if ev.cpu_ns is not None:
                    node.cpu_ns = ev.cpu_ns
                if ev.peak_rss_bytes is not None:
                    node.peak_rss_bytes = ev.peak_rss_bytes
                node.comm = ev.comm or node.comm
                self.live.pop(ev.pid, None)
        return node

    def set_root_exit(self, exit_code: int | None, signal: int | None) -> None:
        """The command's own status as its waiter (the SDK) saw it; it wins over what a
        source inferred, and fills it in when the source could not know it."""
        if self.root is not None and (exit_code is not None or signal is not None):
            self.root.exit_code, self.root.signal = exit_code, signal

    # ---- reading --------------------------------------------------------------

    def find(self, pid: int) -> list[ProcessNode]:
        """Every process that had this pid (more than one if it was reused)."""
        return [n for n in self.nodes if n.pid == pid]

    def running(self) -> list[ProcessNode]:
        return list(self.live.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "tool_call_id": self.tool_call_id,
            "processes": [n.as_dict() for n in self.nodes],
            "dropped_processes": self.dropped,
            "unmatched_events": self.unmatched,
            "counts": dict(self.counts),
        }
