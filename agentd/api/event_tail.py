"""The daemon's events, carried to the reader processes so that they serve
WatchNodeEvents themselves (docs/node-api.md, "Watchers in the readers").

Before, every watcher connected to a reader was a forwarded stream: each event
crossed a second gRPC hop once per watcher (100 watchers, 100 messages on the daemon
and 100 more in the reader). Now each reader holds one stream from the daemon, the
tail, and keeps what it received in an EventLog; its watchers read the log.

The tail (`TAIL_METHOD`, only on the daemon's root-only forward socket) sends every
event number of the bus in order, each with its serialized WatchNodeEventsResponse
(or nothing, for kinds NodeService does not carry), so a reader knows exactly which
numbers it has. Frames (bytes, no protobuf):

- header: b"H", the boot id (16 hex digits), then u64 `start`: the events that
  follow are those numbered after `start`;
- batch: b"E", u64 `lost` (events after the last one sent that the daemon's ring no
  longer had: the reader's log restarts after them), then per event u64 seq,
  u32 length, the payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from agentd.api.node_service import NodeService

TAIL_METHOD = "/agentd.internal.EventTail/Tail"
HEADER = b"H"
BATCH = b"E"
_U64 = struct.Struct("<Q")
_RECORD = struct.Struct("<QI")
#: How often an idle tail looks at whether the daemon is stopping.
IDLE_CHECK_SECONDS = 0.5
HELD_POLL_SECONDS = 0.001
BATCH_LIMIT = 1024


def encode_header(boot_id: str, start: int) -> bytes:
    return HEADER + boot_id.encode() + _U64.pack(start)


def decode_header(frame: bytes) -> tuple[str, int]:
    if frame[:1] != HEADER or len(frame) != 1 + 16 + _U64.size:
        raise ValueError("not a tail header")
    return frame[1:17].decode(), _U64.unpack_from(frame, 17)[0]


def encode_batch(lost: int, records: list[tuple[int, bytes]]) -> bytes:
    parts = [BATCH, _U64.pack(lost)]
    for seq, payload in records:
        parts.append(_RECORD.pack(seq, len(payload)))
        parts.append(payload)
    return b"".join(parts)


def decode_batch(frame: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    if frame[:1] != BATCH:
        raise ValueError("not a tail batch")
    lost = _U64.unpack_from(frame, 1)[0]
    records = []
    offset = 1 + _U64.size
    while offset < len(frame):
        seq, length = _RECORD.unpack_from(frame, offset)
        offset += _RECORD.size
        records.append((seq, frame[offset : offset + length]))
        offset += length
    return lost, records


async def serve_tail(
    service: NodeService, published: Any, start: int | None
) -> AsyncIterator[bytes]:
    """The daemon side: every event after `start` (None: from now on), as frames.
    `published()` is the asyncio.Event the bus sets at its next publish (BusWakeup)."""
    bus = service.manager.bus
    cursor = bus.last_seq if start is None or not 0 <= start <= bus.last_seq else start
    yield encode_header(bus.boot_id, cursor)
    while not service.stopping.is_set():
        wakeup = published()
        events, lost = bus.read_after(cursor, timeout=0, limit=BATCH_LIMIT)
        if lost:
            cursor += lost
        # Not past an event whose snapshot is not out yet (SnapshotPublisher.before_reply).
        visible = service.events_visible(events[-1].seq) if events else cursor
        held = bool(events) and visible < events[-1].seq
        records = []
        for event in (e for e in events if e.seq <= visible):
            cursor = event.seq
            response = service.response_of(event)
            records.append((event.seq, b"" if response is None else response.SerializeToString()))
        if records or lost:
            yield encode_batch(lost, records)
        if held:
            await asyncio.sleep(HELD_POLL_SECONDS)  # a build: about a millisecond
        elif not (records or lost):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), IDLE_CHECK_SECONDS)


class EventLog:
    """The reader side: the events received from the tail, the newest `capacity`.
    It covers every number in (base, last]: a watcher whose cursor is in
    [base, last] is served from here; any other is the daemon's to serve."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.boot_id = ""
        self.base = 0
        self.last = 0
        self.connected = False
        self._records: deque[tuple[int, bytes]] = deque(maxlen=capacity)
        self._changed = asyncio.Event()

    @property
    def changed(self) -> asyncio.Event:
        """Set at the next append: take it before reading (`after`), then wait."""
        return self._changed

    def restart(self, boot_id: str, start: int) -> None:
        """A tail (re)connected; its events follow `start`. Kept records stay valid
        when they lead up to `start` (a reconnect after the last one received)."""
        if boot_id != self.boot_id or start != self.last:
            self._records.clear()
            self.boot_id, self.base, self.last = boot_id, start, start
        self.connected = True
        self._wake()

    def append(self, lost: int, records: list[tuple[int, bytes]]) -> None:
        if lost:  # the daemon's ring moved past us: no longer covered
            self._records.clear()
            self.base = self.last = self.last + lost
        for seq, payload in records:
            self._records.append((seq, payload))
            self.last = seq
        if len(self._records) == self.capacity and self._records:
            self.base = self._records[0][0] - 1
        self._wake()

    def disconnected(self) -> None:
        self.connected = False
        self._wake()

    def covers(self, cursor: int) -> bool:
        return self.connected and self.base <= cursor <= self.last

    def after(self, cursor: int) -> list[tuple[int, bytes]] | None:
        """The records numbered after `cursor`; None when the log no longer covers
        it (the caller goes to the daemon)."""
        if not self.covers(cursor):
            return None
        if cursor == self.last:
            return []
        # Numbers are consecutive from base + 1: index directly.
        first = self._records[0][0] if self._records else self.last + 1
        start = cursor + 1 - first
        return [self._records[i] for i in range(max(start, 0), len(self._records))]

    def _wake(self) -> None:
        woken, self._changed = self._changed, asyncio.Event()
        woken.set()
