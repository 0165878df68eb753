"""The daemon's events carried to the reader processes (agentd/api/event_tail.py):
every event number arrives, in order, with the message the daemon's own watchers
get; the reader's log knows exactly which numbers it covers."""

from __future__ import annotations

import asyncio
import threading

from agentd.api.event_tail import (
    EventLog,
    decode_batch,
    decode_header,
    encode_batch,
    encode_header,
    serve_tail,
)
from agentd.api.node_events import to_node_event
from agentd.api.snapshot import ChangeCounter, SnapshotPublisher
from agentd.events import Event, EventBus
from agentd.v1 import node_pb2 as pb


class _Service:
    """What serve_tail uses of NodeService."""

    def __init__(self, bus: EventBus) -> None:
        self.manager = type("M", (), {"bus": bus})()
        self.stopping = threading.Event()
        self.events_visible = lambda last: last

    def response_of(self, event: Event) -> pb.WatchNodeEventsResponse | None:
        msg = to_node_event(event, self.manager.bus.boot_id, lambda t: None)
        return None if msg is None else pb.WatchNodeEventsResponse(event=msg)


def test_frames_round_trip():
    assert decode_header(encode_header("0123456789abcdef", 42)) == ("0123456789abcdef", 42)
    records = [(5, b"abc"), (6, b""), (7, b"\x00" * 300)]
    assert decode_batch(encode_batch(3, records)) == (3, records)


def test_the_tail_sends_every_number_with_the_daemons_message():
    bus = EventBus()
    service = _Service(bus)
    bus.publish(Event("before", "", 0, "session_opened", {}))  # 1: before the tail

    async def run() -> list[bytes]:
        wakeup = asyncio.Event()
        frames: list[bytes] = []

        async def publish_later() -> None:
            await asyncio.sleep(0.05)
            bus.publish(Event("s1", "", 0, "session_opened", {}))  # 2
            bus.publish(Event("s1", "t1", 0, "process", {}))  # 3: not a NodeService kind
            bus.publish(Event("s1", "", 0, "session_closed", {}))  # 4
            wakeup.set()

        task = asyncio.create_task(publish_later())
        async for frame in serve_tail(service, lambda: wakeup, start=None):
            frames.append(frame)
            if len(frames) == 2:
                break
        await task
        return frames

    frames = asyncio.run(run())
    assert decode_header(frames[0]) == (bus.boot_id, 1)  # from now on: after 1
    lost, records = decode_batch(frames[1])
    assert lost == 0 and [seq for seq, _ in records] == [2, 3, 4]
    messages = [pb.WatchNodeEventsResponse.FromString(p) if p else None for _, p in records]
    assert messages[1] is None
    assert [(m.event.kind, m.event.session_id) for m in messages if m] == [
        (pb.NODE_EVENT_KIND_SESSION_OPENED, "s1"),
        (pb.NODE_EVENT_KIND_SESSION_CLOSED, "s1"),
    ]
    assert messages[0] == service.response_of(bus.read_after(1, timeout=0)[0][0])


def test_a_tail_resumed_past_the_daemons_ring_reports_the_loss():
    bus = EventBus(history=4)
    service = _Service(bus)
    for n in range(10):
        bus.publish(Event(f"s{n}", "", 0, "session_opened", {}))

    async def run() -> list[bytes]:
        frames = []
        async for frame in serve_tail(service, asyncio.Event, start=2):
            frames.append(frame)
            if len(frames) == 2:
                break
        return frames

    header, batch = asyncio.run(run())
    assert decode_header(header)[1] == 2
    lost, records = decode_batch(batch)
    assert lost == 4 and [seq for seq, _ in records] == [7, 8, 9, 10]


def test_the_events_of_a_change_wait_for_its_snapshot(tmp_path):
    """SnapshotPublisher.before_reply: a room event published inside is held from the
    readers' tails until the snapshot with it is out, and the readers' counter does
    not move (nobody waits for the publisher thread)."""
    bus = EventBus()
    service = _Service(bus)
    counter = ChangeCounter(tmp_path / "generation", writer=True)
    published: list[int] = []

    def build(generation: int) -> dict[str, int]:
        published.append(bus.last_seq)
        return {"generation": generation}

    publisher = SnapshotPublisher(tmp_path / "node.snapshot", counter, build, bus)
    service.events_visible = publisher.visible_seq
    replied = threading.Event()

    def create_session() -> None:  # an AgentService thread
        with publisher.before_reply():
            bus.publish(Event("s1", "", 0, "session_opened", {}))
            replied.wait(5)  # the work goes on; its snapshot is not out yet

    async def run() -> tuple[list[bytes], list[bytes]]:
        frames: list[bytes] = []

        async def tail() -> None:
            async for frame in serve_tail(service, asyncio.Event, start=None):
                frames.append(frame)

        task = asyncio.create_task(tail())
        await asyncio.sleep(0.05)  # the tail starts after event 0
        worker = threading.Thread(target=create_session)
        worker.start()
        await asyncio.sleep(0.2)
        while_held = list(frames)
        replied.set()
        await asyncio.to_thread(worker.join, 5)
        for _ in range(100):
            if len(frames) > len(while_held):
                break
            await asyncio.sleep(0.01)
        service.stopping.set()
        await asyncio.wait_for(task, 2)
        return while_held, frames

    while_held, frames = asyncio.run(run())
    assert len(while_held) == 1  # the header only
    assert published == [1]  # built once, at the end of the block, with event 1 in it
    assert [seq for seq, _ in decode_batch(frames[1])[1]] == [1]
    assert counter.value() == 0


def test_the_log_covers_what_it_received_and_no_more():
    async def run() -> None:
        log = EventLog(capacity=4)
        assert not log.covers(0)  # not connected yet
        log.restart("b" * 16, 10)
        assert log.covers(10) and not log.covers(9) and log.after(10) == []
        changed = log.changed
        log.append(0, [(11, b"a"), (12, b""), (13, b"c")])
        assert changed.is_set()
        assert log.after(10) == [(11, b"a"), (12, b""), (13, b"c")]
        assert log.after(12) == [(13, b"c")]
        assert log.after(14) is None  # ahead: not covered
        log.append(0, [(14, b"d"), (15, b"e")])  # 11 falls off
        assert log.base == 11 and log.after(10) is None
        assert log.after(11) == [(12, b""), (13, b"c"), (14, b"d"), (15, b"e")]
        log.disconnected()
        assert log.after(15) is None  # the daemon serves while the tail is down
        log.restart("b" * 16, 15)  # reconnected where it stopped: kept
        assert log.after(13) == [(14, b"d"), (15, b"e")]
        log.append(5, [(21, b"f")])  # 16..20 lost on the daemon's side
        assert log.after(15) is None and log.after(20) == [(21, b"f")]
        log.restart("c" * 16, 3)  # another daemon run
        assert log.after(21) is None and log.after(3) == []

    asyncio.run(run())
