"""The gRPC health check answered in a reader process (reader.py) instead of being
forwarded to the daemon.

Forwarded, a Check crossed three gRPC legs (client -> reader -> daemon -> back) and
cost ~2 ms of server CPU; a load balancer or kubelet probing every node adds that to
the calls that matter. A reader already holds what the answer depends on: the
daemon's own statuses (the HealthServicer the daemon sets), copied into every
snapshot, and the snapshot's age. So:

- a service the daemon does not know: NOT_FOUND, as grpc_health answers;
- the daemon's status for it while the snapshot is at most STALE_SECONDS old (the
  daemon publishes every 0.1 s);
- NOT_SERVING when it is older: a daemon that no longer publishes (hung, its
  publisher thread failing) is not serving schedulers current answers, whatever
  the last status it set said.

Watch (rare: a stream per prober) is still forwarded.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2

from agentd.api.snapshot import NodeSnapshot, SnapshotFile

#: A snapshot older than this makes every service NOT_SERVING: 20 publication
#: periods, so that a daemon briefly busy (a burst of tool calls, a GC) does not
#: flap its node out of a load balancer.
STALE_SECONDS = 2.0
CHECK_METHOD = "/grpc.health.v1.Health/Check"
_ANSWERS = {
    status: health_pb2.HealthCheckResponse(status=status).SerializeToString()
    for status in health_pb2.HealthCheckResponse.ServingStatus.values()
}
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def check(snapshot: NodeSnapshot, service: str, now: float) -> int | None:
    """The ServingStatus to answer for `service`, or None when it is unknown."""
    status = snapshot.health.get(service)
    if status is None:
        return None
    if now - snapshot.published_at > STALE_SECONDS:
        return _NOT_SERVING
    return status


def check_handler(
    snapshots: SnapshotFile, fresh: Callable[[SnapshotFile], Awaitable[bool]]
) -> grpc.RpcMethodHandler:
    """Health/Check on raw bytes from the current snapshot. A status the daemon set
    bumps the change counter (node_api.py): like any read, a check waits (`fresh`)
    for the snapshot that has it, so the daemon's SERVING right after its start is
    what every reader says next."""

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            service = health_pb2.HealthCheckRequest.FromString(request).service
        except Exception:  # DecodeError: not a HealthCheckRequest
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not a HealthCheckRequest")
        if snapshots.stale():
            await fresh(snapshots)  # on a timeout the last one answers (and ages)
        status = check(snapshots.current(), service, time.time())
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service!r}")
        return _ANSWERS[status]

    return grpc.unary_unary_rpc_method_handler(handler)
