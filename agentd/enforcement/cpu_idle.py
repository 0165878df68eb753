"""Batch sessions yield the CPU outright while an interactive session is open.

CPU weights alone (interactive 400, batch 25) divide bandwidth between groups over
time; on a 2-CPU node an interactive session's thread that wakes (from a sleep, a
pipe, a page fault's I/O) still queues behind a batch task's slice. While at least one
interactive session is open, every batch session group gets `cpu.idle = 1` (cgroup v1
and v2, kernel 5.15+): its tasks are scheduled like SCHED_IDLE against the sibling
session groups (weight 3 and preempted at a sibling's wake-up), so they run on what the
others leave. When the last interactive session closes, the batch groups return to
their weight. An idle group still gets an otherwise idle CPU, so batch work is paused
only while interactive work actually wants the CPU.

Kept on the session group (one write per session, inherited by every process of its
tool calls, however they fork) rather than SCHED_IDLE per thread (a write per thread,
racing with forks, and the group's weight would still compete at the session level).
Decided in the manager's lock at each session open and close (`sync`), so a batch
session opened next to an interactive one is idle before its first tool call runs.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog
from prometheus_client import Gauge

from agentd.cgroups.base import CgroupBackend, CgroupError
from agentd.model import Priority, Session

log = structlog.get_logger("agentd.cpu_idle")

IDLE_SESSIONS = Gauge(
    "agentd_priorities_idle_sessions",
    "Batch sessions whose group is cpu.idle while an interactive session is open",
)


class BatchIdle:
    def __init__(self, backend: CgroupBackend, enabled: bool) -> None:
        self.backend = backend
        self.enabled = enabled
        #: session group -> cpu.idle last written (or tried) by this daemon
        self._written: dict[str, bool] = {}

    def sync(self, sessions: Iterable[Session]) -> None:
        """Make each open batch session's cpu.idle match "an interactive session is
        open"; called with the manager's lock held after a session opened or closed."""
        sessions = list(sessions)
        wanted = self.enabled and any(s.priority == Priority.INTERACTIVE for s in sessions)
        open_rels = set()
        for session in sessions:
            if session.priority != Priority.BATCH:
                continue
            rel = session.cgroup_rel
            open_rels.add(rel)
            # Unknown groups are written too: a previous daemon may have left one idle.
            if self._written.get(rel) == wanted:
                continue
            self._written[rel] = wanted  # not retried on failure: one warning per session
            try:
                self.backend.set_cpu_idle(rel, wanted)
            except CgroupError as e:
                # A kernel without cpu.idle (< 5.15) or a group that just vanished: the
                # weights still order the classes.
                log.warning("priorities.cpu_idle_failed", session=session.id, error=str(e))
                continue
            log.info("priorities.cpu_idle", session=session.id, idle=wanted)
        for rel in set(self._written) - open_rels:  # closed sessions
            del self._written[rel]
        IDLE_SESSIONS.set(sum(self._written.values()))
