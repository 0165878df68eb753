"""Tool-call counters, fed by the daemon's event bus.

Counted from the "tool_call_begun" / "tool_call_ended" events rather than by hooks
in the manager: the manager already publishes them for every way a tool call
starts (SDK, executor child) and ends (reported, killed, reaped, session closed).
"""

from __future__ import annotations

import queue
import threading

from prometheus_client import Counter

from agentd.events import Event, EventBus
from agentd.model import ToolCall

OUTCOMES = ("exit_zero", "exit_nonzero", "signal", "oom", "unknown")

TOOL_CALLS_BEGUN = Counter("agentd_tool_calls_begun_total", "Tool calls started")
TOOL_CALLS_ENDED = Counter(
    "agentd_tool_calls_ended_total",
    "Tool calls ended, by outcome: exit_zero, exit_nonzero, signal (killed by a signal), "
    "oom (the kernel OOM-killed a process of it), unknown (its end was not reported)",
    ["outcome"],
)
EVENTS_DROPPED = Counter(
    "agentd_metrics_events_dropped_total",
    "Tool-call events the metrics consumer could not keep up with (counters undercount)",
)
for _outcome in OUTCOMES:  # every outcome is exported from the start, at 0
    TOOL_CALLS_ENDED.labels(_outcome)


def outcome_of(tool_call: ToolCall) -> str:
    # OOM first: the OOM killer's SIGKILL is the symptom, the limit the cause.
    if tool_call.oom_killed:
        return "oom"
    if not tool_call.exit.known:
        return "unknown"
    if tool_call.exit.signal:
        return "signal"
    return "exit_zero" if tool_call.exit.exit_code == 0 else "exit_nonzero"


class ToolCallCounter:
    """A thread that counts tool-call events off the bus until stopped."""

    KINDS = ("tool_call_begun", "tool_call_ended")

    def __init__(self, bus: EventBus) -> None:
        self._subscription = bus.subscribe(lambda e: e.kind in self.KINDS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agentd-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self._subscription.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                event, dropped = self._subscription.get(timeout=0.5)
            except queue.Empty:
                continue
            if dropped:
                EVENTS_DROPPED.inc(dropped)
            self.count(event)

    @staticmethod
    def count(event: Event) -> None:
        if event.kind == "tool_call_begun":
            TOOL_CALLS_BEGUN.inc()
        elif event.kind == "tool_call_ended":
            TOOL_CALLS_ENDED.labels(outcome_of(event.payload)).inc()
