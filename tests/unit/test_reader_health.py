"""A reader's health answer from the snapshot (reader_health.py): the daemon's own
statuses while its snapshots are fresh, NOT_SERVING once they are not."""

from __future__ import annotations

import gc

from grpc_health.v1 import health, health_pb2

from agentd.api import reader_health
from agentd.api.node_api import HEALTH_SERVICES, health_statuses
from agentd.api.reader import settle_heap
from agentd.api.snapshot import NodeSnapshot
from agentd.scoring import Capacity, Room

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _snapshot(published_at: float, statuses: dict[str, int]) -> NodeSnapshot:
    return NodeSnapshot(
        state=b"",
        room=Room(memory=1, cpu=1.0, pids=1),
        stall_percent=0.0,
        capacity=Capacity(memory=1, cpus=1, pids=1),
        published_at=published_at,
        health=statuses,
    )


def test_the_daemons_status_while_fresh_not_serving_when_stale_unknown_otherwise():
    snapshot = _snapshot(1000.0, {"": SERVING, "agentd.v1.NodeService": NOT_SERVING})
    assert reader_health.check(snapshot, "", 1000.5) == SERVING
    assert reader_health.check(snapshot, "agentd.v1.NodeService", 1000.5) == NOT_SERVING
    assert reader_health.check(snapshot, "other", 1000.5) is None
    stale = 1000.0 + reader_health.STALE_SECONDS + 0.01
    assert reader_health.check(snapshot, "", stale) == NOT_SERVING
    assert reader_health.check(snapshot, "other", stale) is None


def test_the_snapshot_carries_what_the_daemons_health_servicer_says():
    servicer = health.HealthServicer()
    # grpc_health knows only the server ("") until the daemon sets its services.
    assert health_statuses(servicer) == {"": SERVING}
    for name in HEALTH_SERVICES:
        servicer.set(name, SERVING)
    assert health_statuses(servicer) == dict.fromkeys(HEALTH_SERVICES, SERVING)
    servicer.enter_graceful_shutdown()
    assert health_statuses(servicer) == dict.fromkeys(HEALTH_SERVICES, NOT_SERVING)


def test_settling_the_heap_takes_the_start_up_objects_out_of_collections():
    try:
        frozen = settle_heap()
        assert frozen > 1000 and gc.get_freeze_count() == frozen
        assert sum(gc.get_count()) < frozen  # what the next collections look at
    finally:
        gc.unfreeze()


def test_a_status_the_daemon_sets_makes_readers_wait_for_the_snapshot_with_it(tmp_path):
    from agentd.api.node_api import _publish_health_changes
    from agentd.api.snapshot import ChangeCounter, SnapshotFile, SnapshotPublisher
    from agentd.events import EventBus

    servicer = health.HealthServicer()
    counter = ChangeCounter(tmp_path / "generation", writer=True)

    def build(generation: int) -> NodeSnapshot:
        snapshot = _snapshot(0.0, health_statuses(servicer))
        return NodeSnapshot(**{**snapshot.__dict__, "generation": generation})

    publisher = SnapshotPublisher(tmp_path / "node.snapshot", counter, build, EventBus(), 60.0)
    publisher.publish()
    _publish_health_changes(servicer, publisher)
    reader = SnapshotFile(publisher.path, ChangeCounter(tmp_path / "generation", writer=False))
    assert not reader.stale() and "agentd.v1.NodeService" not in reader.current().health
    servicer.set("agentd.v1.NodeService", SERVING)
    assert reader.stale()  # a reader now waits for the snapshot that has it
    publisher.publish()
    assert reader.current().health["agentd.v1.NodeService"] == SERVING
    servicer.enter_graceful_shutdown()  # through `set`: stale again
    assert reader.stale()
    publisher.stop()
