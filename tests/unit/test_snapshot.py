"""The snapshot the reader processes answer from: published whole, reloaded when
replaced, and stale (the reader waits) from the moment the daemon changes something
until a snapshot built after that change is out."""

from __future__ import annotations

import time

from agentd.api.snapshot import ChangeCounter, NodeSnapshot, SnapshotFile, SnapshotPublisher
from agentd.events import Event, EventBus
from agentd.scoring import Capacity, Room
from agentd.v1 import node_pb2 as pb


def _publisher(tmp_path, built: list[int], interval: float = 60.0):
    counter = ChangeCounter(tmp_path / "generation", writer=True)
    bus = EventBus()

    def build(generation: int) -> NodeSnapshot:
        built.append(generation)
        state = pb.GetNodeStateResponse(resume_token=f"boot.{len(built)}")
        view = state.state.sessions.add()
        view.tool_calls.add(id="t1")
        return NodeSnapshot(
            state=state.SerializeToString(),
            room=Room(memory=len(built), cpu=1.0, pids=10),
            stall_percent=0.0,
            capacity=Capacity(memory=100, cpus=2, pids=100),
            generation=generation,
        )

    return SnapshotPublisher(tmp_path / "node.snapshot", counter, build, bus, interval), bus


def test_a_change_makes_readers_wait_until_a_snapshot_after_it_is_out(tmp_path):
    built: list[int] = []
    publisher, _ = _publisher(tmp_path, built)
    publisher.publish()
    reader = SnapshotFile(publisher.path, ChangeCounter(tmp_path / "generation", writer=False))
    assert reader.current().room.memory == 1 and not reader.stale()
    publisher.changed()  # e.g. a reservation admitted: before it is republished...
    assert reader.stale()
    publisher.publish()
    assert not reader.stale() and reader.current().room.memory == 2  # reloaded
    publisher.stop()


def test_an_event_republishes_at_once(tmp_path):
    built: list[int] = []
    publisher, bus = _publisher(tmp_path, built, interval=60.0)
    publisher.start()
    reader = SnapshotFile(publisher.path, ChangeCounter(tmp_path / "generation", writer=False))
    assert not reader.stale()
    bus.publish(Event("s1", "", 0, "session_opened", {}))
    deadline = time.monotonic() + 5
    while reader.stale() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not reader.stale()  # long before the 60 s interval
    assert reader.current().generation == 1
    publisher.stop()


def test_state_without_tool_calls_unless_asked(tmp_path):
    built: list[int] = []
    publisher, _ = _publisher(tmp_path, built)
    publisher.publish()
    reader = SnapshotFile(publisher.path, ChangeCounter(tmp_path / "generation", writer=False))
    assert [t.id for t in reader.state(with_tool_calls=True).state.sessions[0].tool_calls] == ["t1"]
    assert not reader.state(with_tool_calls=False).state.sessions[0].tool_calls
    assert reader.state(with_tool_calls=True).resume_token == "boot.1"
    publisher.stop()
