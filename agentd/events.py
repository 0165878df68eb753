"""A fan-out of daemon events to watchers, each with a bounded queue, and a
numbered history for watchers that resume.

A slow watcher loses events (counted, and told with the next event it gets) rather
than growing the daemon's memory or slowing the producers.

Every published event gets the next number of this boot's sequence (1, 2, ...) and
is kept in a fixed-size ring. A reader that knows the last number it saw reads
everything after it with `read_after`, waiting for new ones; when the ring has
moved past it, it learns how many it lost. `boot_id` tells one daemon run's
numbers from another's.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Event:
    session_id: str
    tool_call_id: str
    owner_uid: int
    # "process", "tool_call_begun", "tool_call_ended", or one of the agreed kinds:
    # "guard_action", "throttled", "frozen", "resumed", "evicted", "pressure",
    # "oom_kill", "session_opened", "session_closed"
    kind: str
    payload: Any  # a ProcEvent, a ToolCall, or a dict[str, str] of details
    time: float = field(default_factory=time.time)
    seq: int = 0  # set by EventBus.publish: this boot's sequence number


#: Events kept for readers that resume (read_after): ~10 s at 1,000 events/s.
HISTORY = 16_384


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
    def __init__(self, history: int = HISTORY) -> None:
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []
        self.boot_id = secrets.token_hex(8)
        self._ring: list[Event | None] = [None] * history
        self._seq = 0  # the last number given
        self._published = threading.Condition(self._lock)

    def subscribe(self, accept: Callable[[Event], bool], maxsize: int = 10_000) -> Subscription:
        sub = Subscription(self, accept, maxsize)
        with self._lock:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def publish(self, event: Event) -> Event:
        """Number, keep and deliver `event`; returns it with its number. Under one
        lock, so every reader sees the events in the order of their numbers."""
        with self._lock:
            self._seq += 1
            event = replace(event, seq=self._seq)
            self._ring[self._seq % len(self._ring)] = event
            subs = list(self._subs)
            self._published.notify_all()
        for sub in subs:
            if not sub.accept(event):
                continue
            try:
                sub.queue.put_nowait(event)
            except queue.Full:
                sub.dropped += 1
        return event

    @property
    def last_seq(self) -> int:
        return self._seq

    def read_after(self, after: int, timeout: float, limit: int = 1024) -> tuple[list[Event], int]:
        """Events numbered after `after` (at most `limit`), waiting up to `timeout`
        seconds for the first; and how many after `after` are no longer kept."""
        if after < 0 or after > self._seq:
            raise ValueError(f"sequence number {after} was never given (last: {self._seq})")
        with self._lock:
            if self._seq <= after:
                self._published.wait(timeout)
            oldest = max(1, self._seq - len(self._ring) + 1)
            start = max(after + 1, oldest)
            end = min(self._seq, start + limit - 1)
            events = [self._ring[n % len(self._ring)] for n in range(start, end + 1)]
        return [e for e in events if e is not None], start - (after + 1)

    @property
    def watchers(self) -> int:
        return len(self._subs)
