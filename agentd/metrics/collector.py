"""The collector: one daemon thread that samples the node, agentd's sessions group,
each session with running tool calls and each running tool call, every period.

It learns which groups to sample from the event bus (tool_call_begun / _ended), keeps
everything in fixed-size rings (RingWindow) and, when a tool call ends, turns what it
saw into a dataset record. Nothing here is on a request path: `node_window()` only
reads the rings under a lock.
"""

from __future__ import annotations

import dataclasses
import errno
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import structlog
from prometheus_client import Counter, Gauge, Histogram

from agentd.events import Event, EventBus
from agentd.metrics.dataset import Dataset, Record, command_class
from agentd.metrics.runqlat import summary as runq_summary
from agentd.metrics.sources import GroupSource, NodeSource, Sample
from agentd.metrics.window import NodeWindow, RingWindow, rate
from agentd.model import ToolCall

log = structlog.get_logger("agentd.metrics")

SESSIONS_REL = "sessions"

SAMPLE_SECONDS = Histogram(
    "agentd_collector_sample_seconds",
    "Time one collector tick took (node, sessions and every tracked tool call)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
)
GROUPS_TRACKED = Gauge("agentd_collector_groups_tracked", "Tool-call groups the collector samples")
SOURCE_ERRORS = Counter(
    "agentd_collector_source_errors_total", "Samples a source failed to read", ["source"]
)
RECORDS = Counter("agentd_dataset_records_total", "Tool calls recorded in the dataset")
UNTRACKED = Counter(
    "agentd_collector_untracked_total", "Tool calls not sampled because max_groups was reached"
)


@dataclass(frozen=True)
class CollectorSettings:
    period_seconds: float = 0.1
    detail_period_seconds: float = 0.5  # detail sources (memory.stat, schedstat, ...)
    window_seconds: float = 60.0  # node ring length
    group_window_samples: int = 50  # ring length per tool call and per session
    before_seconds: float = 2.0  # the node window a record keeps from before the call
    max_groups: int = 512


@dataclass
class _Tracked:
    tool_call: ToolCall
    window_before: NodeWindow
    node_start: tuple[float, Sample]
    sessions_start: tuple[float, Sample] | None
    neighbours_at_start: int
    ring: RingWindow
    neighbours_max: int = 0
    peaks: dict[str, float] = field(default_factory=dict)


#: Gauges whose maximum over the run is kept (the rest are counters: rated).
_GAUGES = ("mem_current_bytes", "mem_peak_bytes", "nr_tasks", "anon_bytes", "file_bytes")
#: What reading a removed group's files fails with (FsError and OSError carry errno).
_GONE_ERRNOS = (errno.ENOENT, errno.ENODEV)
_WINDOW_FIELDS = tuple(f.name for f in dataclasses.fields(NodeWindow))


def window_dict(window: NodeWindow) -> dict[str, float]:
    """NodeWindow.as_dict() for the flat window it is, without dataclasses.asdict's
    recursive deep copy: that was ~40% of the collector's work per tool call back to
    back (two windows per record). Same keys and values (a test holds them equal)."""
    return {name: getattr(window, name) for name in _WINDOW_FIELDS}


def _runq_of_run(samples: list[tuple[float, Sample]], duration: float) -> dict[str, float]:
    """The eBPF run-queue histogram over the whole run: its cumulative counts start at
    the tool call's begin, so the last sample that has them is the whole run."""
    last = next((s for _, s in reversed(samples) if "rql_count" in s), None)
    return runq_summary(None, last, duration) if last is not None else {}


class Collector:
    def __init__(
        self,
        node_sources: list[NodeSource],
        group_sources: list[GroupSource],
        settings: CollectorSettings,
        dataset: Dataset | None = None,
        bus: EventBus | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._node_sources = node_sources
        self._group_sources = group_sources
        self._fast_node = [s for s in node_sources if not s.detail]
        self._fast_groups = [s for s in group_sources if not s.detail]
        # Aggregates (the sessions group, each session) never read per-process sources.
        self._aggregate_sources = [s for s in group_sources if not s.per_process]
        self._fast_aggregate = [s for s in self._aggregate_sources if not s.detail]
        self._detail_every = max(1, round(settings.detail_period_seconds / settings.period_seconds))
        self._ticks = 0
        self._dataset = dataset
        self._clock = clock
        capacity = max(2, round(settings.window_seconds / settings.period_seconds))
        self._node = RingWindow(capacity)
        self._sessions = RingWindow(capacity)
        self._session_rings: dict[str, RingWindow] = {}
        self._tracked: dict[str, _Tracked] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: set[str] = set()
        self._window_cache: tuple[object, NodeWindow] | None = None
        self._events = (
            bus.subscribe(lambda e: e.kind in ("tool_call_begun", "tool_call_ended"))
            if bus is not None
            else None
        )

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="agentd-collector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        for source in [*self._node_sources, *self._group_sources]:
            close = getattr(source, "close", None)  # sources holding kernel programs
            if close is not None:
                close()
        if self._events is not None:
            self._events.close()

    def _run(self) -> None:
        period = self.settings.period_seconds
        next_tick = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception:
                log.exception("collector.tick_failed")
            SAMPLE_SECONDS.observe(time.monotonic() - started)
            self._drain_events()
            # Fixed rate, not fixed delay; after a stall skip ticks rather than burst.
            next_tick = max(next_tick + period, time.monotonic())
            self._stop.wait(max(0.0, next_tick - time.monotonic()))

    def _drain_events(self) -> None:
        """Handle the events of the last period as one batch: the tool calls that ended
        in it share one node sample at their end and one dataset transaction (per tool
        call, these cost more than all the rest of its record)."""
        if self._events is None:
            return
        ended: list[ToolCall] = []
        while True:
            try:
                event, _dropped = self._events.get(timeout=0)
            except queue.Empty:
                break
            if event.kind == "tool_call_ended":
                ended.append(event.payload)
            else:
                self.handle(event)
        if ended:
            self.end_many(ended)

    # -- sampling ------------------------------------------------------------------

    def tick(self) -> None:
        """Take one sample of everything tracked (called by the thread; tests call it)."""
        now = self._clock()
        full = self._ticks % self._detail_every == 0
        self._ticks += 1
        node = self._sample_node(full)
        sessions = self._sample_group(SESSIONS_REL, aggregate=True, full=full)
        with self._lock:
            self._node.append(now, node)
            if sessions is not None:
                self._sessions.append(now, sessions)
            tracked = list(self._tracked.items())
            session_ids = {t.tool_call.session_id for _, t in tracked}
        running = len(tracked)
        for session_id in session_ids:
            sample = self._sample_group(f"{SESSIONS_REL}/{session_id}", aggregate=True, full=full)
            if sample is not None:
                with self._lock:
                    ring = self._session_rings.setdefault(
                        session_id, RingWindow(self.settings.group_window_samples)
                    )
                    ring.append(now, sample)
        for _, t in tracked:
            sample = self._sample_group(t.tool_call.cgroup_rel, full=full)
            if sample is None:
                continue
            with self._lock:
                t.ring.append(now, sample)
                t.neighbours_max = max(t.neighbours_max, running - 1)
                for key in _GAUGES:
                    if key in sample:
                        t.peaks[key] = max(t.peaks.get(key, 0.0), sample[key])
        with self._lock:
            gone = [s for s in self._session_rings if s not in session_ids]
            for session_id in gone:
                del self._session_rings[session_id]
        for session_id in gone:
            for source in self._aggregate_sources:
                source.forget(f"{SESSIONS_REL}/{session_id}")

    def _sample_node(self, full: bool = True) -> Sample:
        out: Sample = {}
        for source in self._node_sources if full else self._fast_node:
            try:
                out.update(source.sample())
            except Exception as e:
                self._source_failed(source.name, "node", e)
        return out

    def _sample_group(self, rel: str, aggregate: bool = False, full: bool = True) -> Sample | None:
        if aggregate:
            sources = self._aggregate_sources if full else self._fast_aggregate
        else:
            sources = self._group_sources if full else self._fast_groups
        out: Sample = {}
        for source in sources:
            try:
                out.update(source.sample(rel))
            except Exception as e:
                # A group that ended between the event and the read is normal.
                SOURCE_ERRORS.labels(source.name).inc()
                if source.name not in self._failed:
                    self._failed.add(source.name)
                    log.info(
                        "collector.group_read_failed", source=source.name, rel=rel, error=str(e)
                    )
        return out or None

    def _final_sample(self, rel: str) -> Sample | None:
        """An ended tool call's last sample. Its group is usually gone by now (the group
        worker removes it within milliseconds, the collector drains every period):
        once a source finds it missing, the other sources of the group's files are not
        tried (back to back, the failed opens and their error counts were a third of
        the collector's work per tool call); sources whose data outlives the group
        (`outlives_group`: the eBPF run-queue histogram) are still read."""
        out: Sample = {}
        gone = False
        for source in self._group_sources:
            outlives = getattr(source, "outlives_group", False)
            if gone and not outlives:
                continue
            try:
                out.update(source.sample(rel))
            except Exception as e:
                if outlives or getattr(e, "errno", None) not in _GONE_ERRNOS:
                    SOURCE_ERRORS.labels(source.name).inc()
                else:
                    gone = True  # removed (ENOENT) or removed while open (ENODEV)
        return out or None

    def _source_failed(self, name: str, what: str, error: Exception) -> None:
        SOURCE_ERRORS.labels(name).inc()
        if name not in self._failed:
            self._failed.add(name)
            log.warning("collector.source_failed", source=name, what=what, error=str(error))

    # -- tool calls ----------------------------------------------------------------

    def handle(self, event: Event) -> None:
        if event.kind == "tool_call_begun":
            self.begin(event.payload, event.time)
        elif event.kind == "tool_call_ended":
            self.end(event.payload)

    def begin(self, tool_call: ToolCall, at: float | None = None) -> None:
        at = tool_call.started_at if at is None else at
        with self._lock:
            if tool_call.id in self._tracked:
                return
            if len(self._tracked) >= self.settings.max_groups:
                UNTRACKED.inc()
                return
            before = self._window_locked(self.settings.before_seconds, end=at)
            node_last = self._node.last() or (at, {})
            self._tracked[tool_call.id] = _Tracked(
                tool_call=tool_call,
                window_before=before,
                node_start=node_last,
                sessions_start=self._sessions.last(),
                neighbours_at_start=len(self._tracked),
                neighbours_max=len(self._tracked),
                ring=RingWindow(self.settings.group_window_samples),
            )
            GROUPS_TRACKED.set(len(self._tracked))

    def end(self, tool_call: ToolCall) -> Record | None:
        """Stop sampling `tool_call`, build its record and store it in the dataset."""
        return self.end_many([tool_call])[0]

    def end_many(self, tool_calls: list[ToolCall]) -> list[Record | None]:
        """end() of tool calls that ended together: one node and sessions sample for
        all of them, their records stored in one transaction."""
        # The node first: its run-queue source reads the eBPF maps, which the tool
        # calls' run-queue source then reuses (one read of the maps, not two).
        node_end = (self._clock(), self._sample_node())
        # One last look at each group (if the group worker has not removed it yet).
        finals = [self._final_sample(t.cgroup_rel) for t in tool_calls]
        sessions_end = self._sample_group(SESSIONS_REL, aggregate=True)
        records = [
            self._end_one(t, final, node_end, sessions_end)
            for t, final in zip(tool_calls, finals, strict=True)
        ]
        stored = [r for r in records if r is not None]
        if self._dataset is not None and stored:
            try:
                self._dataset.add_many(stored)
                RECORDS.inc(len(stored))
            except Exception:
                log.exception(
                    "collector.record_failed", tool_call_ids=[r.tool_call_id for r in stored]
                )
        return records

    def _end_one(
        self,
        tool_call: ToolCall,
        final: Sample | None,
        node_end: tuple[float, Sample],
        sessions_end: Sample | None,
    ) -> Record | None:
        with self._lock:
            tracked = self._tracked.pop(tool_call.id, None)
            GROUPS_TRACKED.set(len(self._tracked))
        for source in self._group_sources:
            source.forget(tool_call.cgroup_rel)
        if tracked is None:
            return None
        if final is not None:
            tracked.ring.append(node_end[0], final)
        return self._record(tracked, tool_call, node_end, sessions_end)

    def _record(
        self,
        t: _Tracked,
        tool_call: ToolCall,
        node_end: tuple[float, Sample],
        sessions_end: Sample | None,
    ) -> Record:
        node_run = [t.node_start, node_end]
        agentd_run = (
            [t.sessions_start, (node_end[0], sessions_end)]
            if t.sessions_start is not None and sessions_end is not None
            else []
        )
        window_run = NodeWindow.from_samples(node_run, agentd_run, float(t.neighbours_max + 1))
        usage = tool_call.usage
        duration = usage.wall_seconds or (
            (tool_call.ended_at or node_end[0]) - tool_call.started_at
        )
        cpu_seconds = usage.cpu_user_seconds + usage.cpu_system_seconds
        own_cores = cpu_seconds / duration if duration > 0 else 0.0
        samples = list(t.ring)
        group_run = {
            "cpu_cores": rate(samples, "cpu_usage_us") / 1e6,
            "throttled_frac": rate(samples, "cpu_throttled_us") / 1e6,
            "runq_delay_frac": rate(samples, "runq_delay_ns") / 1e9,
            "pgfault_per_s": rate(samples, "pgfault"),
            "pgmajfault_per_s": rate(samples, "pgmajfault"),
            "mem_limit_hits_per_s": rate(samples, "mem_limit_hits"),
            "samples": float(len(samples)),
            **_runq_of_run(samples, duration),
            **{f"max_{k}": v for k, v in t.peaks.items()},
        }
        intent = tool_call.intent
        return Record(
            tool_call_id=tool_call.id,
            session_id=tool_call.session_id,
            label=intent.label,
            command_class=command_class(intent.label),
            intent={
                "memory_max": intent.resources.memory_max,
                "cpu": intent.resources.cpu,
                "pids_max": intent.resources.pids_max,
                "expected_duration_seconds": intent.expected_duration_seconds,
                "priority": int(intent.priority) if intent.priority is not None else None,
            },
            started_at=tool_call.started_at,
            ended_at=tool_call.ended_at or node_end[0],
            duration_seconds=duration,
            exit_code=tool_call.exit.shell_code,
            cpu_seconds=cpu_seconds,
            peak_memory_bytes=usage.peak_memory_bytes,
            neighbours_at_start=t.neighbours_at_start,
            neighbours_max=t.neighbours_max,
            other_cpu_cores=max(0.0, window_run.cpu_busy_cores - own_cores),
            window_before=window_dict(t.window_before),
            window_run=window_dict(window_run),
            group_run=group_run,
        )

    # -- the predictor's view --------------------------------------------------------

    def node_window(self, seconds: float | None = None) -> NodeWindow:
        """The node over the last `seconds` (default: before_seconds), now."""
        with self._lock:
            return self._window_locked(seconds or self.settings.before_seconds, end=None)

    def _window_locked(self, seconds: float, end: float | None) -> NodeWindow:
        node = self._node.span(seconds, end)
        sessions = self._sessions.span(seconds, end)
        # Tool calls that begin in the same period see the same samples: the window
        # is computed once for them (~60 rates), only the count of tool calls differs.
        key = (
            (node[0][0], node[-1][0]) if node else None,
            (sessions[0][0], sessions[-1][0]) if sessions else None,
        )
        cached = self._window_cache
        if cached is None or cached[0] != key:
            cached = self._window_cache = (key, NodeWindow.from_samples(node, sessions))
        return replace(cached[1], agentd_tool_calls=float(len(self._tracked)))

    def tracked(self) -> list[str]:
        with self._lock:
            return list(self._tracked)

    def session_window(self, session_id: str) -> list[tuple[float, Sample]]:
        with self._lock:
            ring = self._session_rings.get(session_id)
            return list(ring) if ring is not None else []
