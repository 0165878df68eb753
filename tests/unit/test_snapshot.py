"""The snapshot the reader processes answer from: published whole, reloaded when
replaced, and stale (the reader waits) from the moment the daemon changes something
until a snapshot built after that change is out."""

from __future__ import annotations

import os
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


def test_other_events_wait_for_the_next_periodic_snapshot(tmp_path):
    built: list[int] = []
    publisher, bus = _publisher(tmp_path, built, interval=0.2)
    publisher.start()
    reader = SnapshotFile(publisher.path, ChangeCounter(tmp_path / "generation", writer=False))
    first = reader.current()
    began = time.monotonic()
    # A process or a tool call: readers do not wait (no generation bump) and no
    # snapshot is built for it; the periodic one, at most `interval` later, has it.
    for n in range(50):
        bus.publish(Event("s1", f"t{n}", 0, "tool_call_begun", {}))
    assert not reader.stale()
    while reader.current() is first and time.monotonic() - began < 5:
        time.sleep(0.01)
    elapsed = time.monotonic() - began
    assert 0.05 < elapsed < 2.0  # the period (0.2 s), not at once
    assert len(built) <= 2 + elapsed / 0.2  # the first and the periodic ones: not 50 more
    publisher.stop()


def test_snapshots_go_to_a_private_tmpfs_directory_and_dead_daemons_are_cleaned(
    tmp_path, monkeypatch
):
    from agentd.api import snapshot

    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(snapshot, "SHARED_MEMORY", shm)
    dead = shm / "agentd-snapshot-999999999-abc"  # a pid that cannot be running
    dead.mkdir()
    (dead / "node.snapshot").write_bytes(b"x")
    alive = shm / f"agentd-snapshot-{os.getpid()}-def"  # a running daemon's
    alive.mkdir()
    other = shm / "someone-else"
    other.mkdir()
    made = snapshot.snapshot_directory(tmp_path / "fallback")
    assert made.parent == shm and made.stat().st_mode & 0o777 == 0o700
    assert not dead.exists() and alive.exists() and other.exists()
    snapshot.remove_directory(made)
    assert not made.exists()
    monkeypatch.setattr(snapshot, "SHARED_MEMORY", tmp_path / "no-tmpfs")
    assert snapshot.snapshot_directory(tmp_path / "fallback") == tmp_path / "fallback"


def test_a_failed_build_is_retried_at_once_not_after_the_interval(tmp_path):
    """A session closing while the snapshot is built (its tool calls are read after
    the list of sessions) fails that build; readers are waiting for the change's
    snapshot, so the next try must not wait out the period."""
    built: list[int] = []
    publisher, bus = _publisher(tmp_path, built, interval=60.0)
    inner = publisher.build
    failures = [1]

    def racing_build(generation: int) -> NodeSnapshot:
        if failures[0]:
            failures[0] -= 1
            raise LookupError("session 's1' not found")  # closed mid-build
        return inner(generation)

    publisher.start()
    reader = SnapshotFile(publisher.path, ChangeCounter(tmp_path / "generation", writer=False))
    publisher.build = racing_build
    began = time.monotonic()
    bus.publish(Event("s1", "", 0, "session_closed", {}))
    while reader.stale() and time.monotonic() - began < 5:
        time.sleep(0.001)
    elapsed = time.monotonic() - began
    assert not reader.stale() and failures == [0]
    assert elapsed < 0.5  # at once (before: the interval, here 60 s)
    publisher.stop()
