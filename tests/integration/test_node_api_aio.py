"""The TCP listener's asyncio server on a real daemon: event streams are coroutines
(not a thread each) and do not starve unary calls, every stream gets every event,
health and metrics are served as on the threaded server."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import require_cgroup_v1
from grpc_health.v1 import health_pb2, health_pb2_grpc
from node_api_support import NodeDaemon, free_port, node_daemon

from agentd.v1 import agent_pb2 as apb
from agentd.v1 import node_pb2 as pb

WATCHERS = 150  # more than the offload pool (8) and the old server's unary threads (16)
TIMEOUT = 10


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeDaemon]:
    require_cgroup_v1()
    metrics_port = free_port()
    running = node_daemon(
        tmp_path,
        api=f"max_watchers = {WATCHERS + 10}\nreaders = 0",  # the daemon's own server
        tables=f'[prometheus]\nlisten = "127.0.0.1:{metrics_port}"\n',
    )
    running.metrics_port = metrics_port  # type: ignore[attr-defined]
    yield running
    leftovers = running.daemon.cleanup()
    assert not leftovers, f"groups left behind: {leftovers}"
    assert running.daemon.exit_status in (0, None), running.daemon.logs()[-4000:]


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _metric(node: NodeDaemon, prefix: str) -> float:
    url = f"http://127.0.0.1:{node.metrics_port}/metrics"  # type: ignore[attr-defined]
    text = urllib.request.urlopen(url, timeout=TIMEOUT).read().decode()
    values = [
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    ]
    assert len(values) == 1, f"{prefix}: {values}"
    return values[0]


def test_many_watchers_are_coroutines_that_get_every_event_and_do_not_starve_unary_calls(node):
    pid = node.daemon.process.pid
    stub = node.stub()
    token = stub.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).resume_token
    threads_before = _threads(pid)
    streams = [
        stub.WatchNodeEvents(pb.WatchNodeEventsRequest(resume_token=token), timeout=120)
        for _ in range(WATCHERS)
    ]
    try:
        with node.daemon.client() as client:
            session = client.session("watched", memory="32M")
            # Every stream is open once it has the first event.
            for stream in streams:
                first = next(stream).event
                assert (first.kind, first.session_id) == (
                    pb.NODE_EVENT_KIND_SESSION_OPENED,
                    "watched",
                )
            open_streams = (
                'agentd_api_streams_open{method="/agentd.v1.NodeService/WatchNodeEvents",'
                'transport="tcp"}'
            )
            assert _metric(node, open_streams) == WATCHERS
            # The old server held a thread per stream; these are coroutines on one loop.
            grown = _threads(pid) - threads_before
            assert grown < 16, f"{grown} more daemon threads with {WATCHERS} streams open"

            # Unary calls are answered meanwhile, inline (ScorePlacement) and from the
            # offload pool (GetNodeState, Throttle), each well within its deadline.
            request = pb.ScorePlacementRequest(
                candidates=[
                    pb.Candidate(
                        id=f"c{i}",
                        intent=apb.Intent(resources=apb.Resources(memory_max="64M", cpu="0.5")),
                    )
                    for i in range(10)
                ]
            )
            for _ in range(200):
                scores = stub.ScorePlacement(request, timeout=2).scores
                assert [s.candidate_id for s in scores] == [f"c{i}" for i in range(10)]
            for _ in range(20):
                assert stub.GetNodeState(pb.GetNodeStateRequest(), timeout=2).state.sessions
            throttled = stub.Throttle(
                pb.ThrottleRequest(target=pb.Target(session_id=session.id), cpu_max="0.5"),
                timeout=2,
            )
            assert throttled.result.changed
            session.close()
            # Each stream then gets the rest, in order.
            expected = [
                (pb.NODE_EVENT_KIND_THROTTLED, "watched"),
                (pb.NODE_EVENT_KIND_SESSION_CLOSED, "watched"),
            ]
            for stream in streams:
                got = [(e.kind, e.session_id) for e in (next(stream).event for _ in expected)]
                assert got == expected
    finally:
        for stream in streams:
            stream.cancel()


def test_health_is_served_over_tls_on_the_asyncio_server(node):
    health = health_pb2_grpc.HealthStub(node.channel())
    overall = health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    assert overall.status == health_pb2.HealthCheckResponse.SERVING
    node_service = health.Check(
        health_pb2.HealthCheckRequest(service="agentd.v1.NodeService"), timeout=TIMEOUT
    )
    assert node_service.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as unknown:
        health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=TIMEOUT)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    watch_unknown = health.Watch(health_pb2.HealthCheckRequest(service="no.Such"), timeout=TIMEOUT)
    assert next(watch_unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    watch_unknown.cancel()


def test_refused_calls_are_timed_with_their_status_code(node):
    observer = node.stub("grafana")
    refused = pb.ThrottleRequest(target=pb.Target(session_id="nobody"), cpu_max="0.5")
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as denied:
            observer.Throttle(refused, timeout=TIMEOUT)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as missing:
        node.stub().Throttle(refused, timeout=TIMEOUT)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    node.stub().ScorePlacement(pb.ScorePlacementRequest(), timeout=TIMEOUT)

    def count(method: str, code: str) -> float:
        return _metric(
            node,
            f'agentd_api_request_duration_seconds_count{{code="{code}",'
            f'method="/agentd.v1.NodeService/{method}",transport="tcp"}}',
        )

    assert count("Throttle", "PERMISSION_DENIED") == 3
    assert count("Throttle", "NOT_FOUND") == 1
    assert count("ScorePlacement", "OK") == 1
