"""A fan-out of daemon events to watchers, each with a bounded queue.

A slow watcher loses events (counted, and told with the next event it gets) rather
than growing the daemon's memory or slowing the producers.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    session_id: str
    tool_call_id: str
    owner_uid: int
    kind: str  # "process", "tool_call_begun" or "tool_call_ended"
    payload: Any  # a ProcEvent or a ToolCall
    time: float = field(default_factory=time.time)


class Subscription:
    def __init__(self, bus: EventBus, accept: Callable[[Event], bool], maxsize: int) -> None:
        self._bus = bus
        self.accept = accept
        self.queue: queue.Queue[Event] = queue.Queue(maxsize)
        self.dropped = 0

    def get(self, timeout: float) -> tuple[Event, int]:
        """The next event and how many were dropped before it; queue.Empty on timeout."""
        event = self.queue.get(timeout=timeout)
        dropped, self.dropped = self.dropped, 0
        return event, dropped

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []

    def subscribe(self, accept: Callable[[Event], bool], maxsize: int = 10_000) -> Subscription:
        sub = Subscription(self, accept, maxsize)
        with self._lock:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def publish(self, event: Event) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            if not sub.accept(event):
                continue
            try:
                sub.queue.put_nowait(event)
            except queue.Full:
                sub.dropped += 1

    @property
    def watchers(self) -> int:
        return len(self._subs)
