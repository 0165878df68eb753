"""Node and session figures read at scrape time (a prometheus_client Collector).

Nothing polls in the background: each scrape reads the few cgroupfs and
/proc/pressure files it reports, so an idle daemon does no work for metrics and a
scrape always sees the current state. A session's series exist exactly while it is
open (labels bounded by the open sessions), so a closed session's series vanish
from the next scrape without any removal bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agentd.cgroups.base import CgroupError
from agentd.manager import Caller, Manager
from agentd.model import Session
from agentd.tracking import Tracker

log = structlog.get_logger("agentd.metrics")

PRESSURE_DIR = Path("/proc/pressure")
PRESSURE_RESOURCES = ("cpu", "memory", "io")
# Only ever reads: root sees every session.
_ROOT = Caller(uid=0, gid=0, pid=0)


def read_pressure(resource: str, base: Path = PRESSURE_DIR) -> dict[str, dict[str, float]]:
    """{"some": {"avg10": .., "avg60": .., "avg300": .., "total": ..}, "full": {...}} of
    /proc/pressure/<resource>; {} when PSI is off. total is in microseconds."""
    try:
        text = (base / resource).read_text()
    except OSError:
        return {}
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        kind, _, fields = line.partition(" ")
        values = {}
        for field in fields.split():
            key, _, value = field.partition("=")
            try:
                values[key] = float(value)
            except ValueError:
                continue
        if kind in ("some", "full"):
            out[kind] = values
    return out


class NodeCollector(Collector):
    def __init__(
        self, manager: Manager, tracker: Tracker | None, session_metrics: bool = True
    ) -> None:
        self.manager = manager
        self.tracker = tracker
        self.session_metrics = session_metrics

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        try:
            yield from self._node()
            yield from self._pressure()
            yield from self._tracking()
        except Exception:
            # A scrape must never take the endpoint down; the log says what broke.
            log.exception("metrics.collect_failed")

    def _node(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        node = self.manager.node
        sessions = self.manager.list_sessions(_ROOT)
        yield _gauge(
            "agentd_node_memory_capacity_bytes",
            "Physical memory of the node",
            psutil.virtual_memory().total,
        )
        yield _gauge(
            "agentd_node_memory_allocatable_bytes",
            "Memory sessions may use together (capacity minus [node] reserved_memory)",
            node.allocatable_memory,
        )
        yield _gauge("agentd_node_cpu_capacity_cores", "CPUs sessions may use", node.cpus)
        yield _gauge(
            "agentd_node_memory_allocated_bytes",
            "Sum of the memory budgets (memory_max) of open sessions",
            sum(s.budget.memory_max or 0 for s in sessions),
        )
        yield _gauge(
            "agentd_node_cpu_allocated_cores",
            "Sum of the CPU budgets of open sessions",
            sum(s.budget.cpu or 0.0 for s in sessions),
        )
        yield _gauge("agentd_sessions_open", "Open sessions", len(sessions))
        yield _gauge(
            "agentd_tool_calls_running", "Running tool calls", self.manager.tool_calls_running()
        )
        backend = self.manager.backend
        try:
            root = backend.usage("")
        except CgroupError as e:
            log.warning("metrics.root_usage_failed", error=str(e))
        else:
            yield _gauge(
                "agentd_root_memory_bytes",
                "Memory charged to agentd's cgroup root (all sessions and tool calls)",
                root.memory_current,
            )
            yield _counter(
                "agentd_root_cpu_seconds",
                "CPU time used in agentd's cgroup root",
                (root.cpu_user_usec + root.cpu_system_usec) / 1e6,
            )
            yield _gauge(
                "agentd_root_processes", "Tasks in agentd's cgroup root", root.pids_current
            )
        if self.session_metrics:
            yield from self._sessions(sessions)

    def _sessions(
        self, sessions: list[Session]
    ) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        memory = GaugeMetricFamily(
            "agentd_session_memory_bytes", "Memory charged to the session", labels=["session"]
        )
        limit = GaugeMetricFamily(
            "agentd_session_memory_limit_bytes", "The session's memory budget", labels=["session"]
        )
        cpu = CounterMetricFamily(
            "agentd_session_cpu_seconds", "CPU time used by the session", labels=["session"]
        )
        processes = GaugeMetricFamily(
            "agentd_session_processes", "Tasks in the session", labels=["session"]
        )
        running = GaugeMetricFamily(
            "agentd_session_tool_calls_running",
            "Running tool calls of the session",
            labels=["session"],
        )
        for session in sessions:
            try:
                usage = self.manager.backend.usage(session.cgroup_rel)
            except CgroupError:
                continue  # closed between the listing and this read
            labels = [session.id]
            memory.add_metric(labels, usage.memory_current)
            limit.add_metric(labels, session.budget.memory_max or 0)
            cpu.add_metric(labels, (usage.cpu_user_usec + usage.cpu_system_usec) / 1e6)
            processes.add_metric(labels, usage.pids_current)
            running.add_metric(labels, self.manager.running_count(session.id))
        yield from (memory, limit, cpu, processes, running)

    def _pressure(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        ratio = GaugeMetricFamily(
            "agentd_node_pressure_ratio",
            "PSI: share of time some (full) tasks stalled on the resource, over the window",
            labels=["resource", "kind", "window"],
        )
        stalled = CounterMetricFamily(
            "agentd_node_pressure_stalled_seconds",
            "PSI: total time some (full) tasks stalled on the resource",
            labels=["resource", "kind"],
        )
        for resource in PRESSURE_RESOURCES:
            for kind, values in read_pressure(resource).items():
                for window in ("avg10", "avg60", "avg300"):
                    if window in values:
                        ratio.add_metric([resource, kind, window], values[window] / 100.0)
                if "total" in values:
                    stalled.add_metric([resource, kind], values["total"] / 1e6)
        yield from (ratio, stalled)

    def _tracking(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        if self.tracker is None:
            return
        status = self.tracker.status()
        source = str(status["source"])
        lost = CounterMetricFamily(
            "agentd_tracking_lost_events",
            "Process events the tracking source missed (ring buffer full, netlink gaps)",
            labels=["source"],
        )
        lost.add_metric([source], status["lost_events"])
        yield lost
        yield _gauge(
            "agentd_tracking_loss_exact",
            "1 when the source sees all of its losses (eBPF, netlink), 0 when it cannot "
            "(procfs scanning): a lost count of 0 then proves nothing",
            1 if status["loss_exact"] else 0,
            labels={"source": source},
        )
        yield _counter(
            "agentd_tracking_unattributed_events",
            "Process events of no tracked tool call",
            status["unattributed_events"],
        )
        yield _gauge(
            "agentd_tracking_tool_calls",
            "Process trees held in memory",
            status["tracked_tool_calls"],
        )


def _gauge(
    name: str, doc: str, value: float, labels: dict[str, str] | None = None
) -> GaugeMetricFamily:
    if not labels:
        return GaugeMetricFamily(name, doc, value=value)
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
