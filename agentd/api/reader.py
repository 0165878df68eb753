"""A reader process: one of `[api] readers` processes sharing the TCP listener's port
(SO_REUSEPORT: the kernel spreads connections over them), so that NodeService's
reads use every core instead of the daemon's one GIL (docs/node-api.md).

- ScorePlacement and GetNodeState are answered here, from the snapshot the daemon
  publishes (snapshot.py), by NodeService's own code (ReaderNodeService is a
  NodeService whose scoring inputs and state come from the snapshot): same
  validation, roles from the verified client certificate, deadline and errors.
- Every other call (Admit, ReleaseReservation, Throttle, Freeze, Resume, Evict,
  WatchNodeEvents, health, reflection) is passed, bytes unchanged, to the daemon's
  forward socket with the caller's verified certificate and its deadline; the daemon
  identifies, rate-limits, role-checks and audits it as if it had come to it directly
  (node_service_aio.ForwardedContext). Its status and details come back unchanged.

Started by the daemon (readers.py) as `python -m agentd.api.reader SPEC_JSON`; it dies
with the daemon (PR_SET_PDEATHSIG), so a killed daemon leaves no reader behind.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from agentd.api import reader_health, reuseport
from agentd.api.auth import Authenticator
from agentd.api.decode import checked_aio
from agentd.api.event_tail import TAIL_METHOD, EventLog, decode_batch, decode_header
from agentd.api.node_events import parse_token, token
from agentd.api.node_service import UNCACHEABLE_WINDOW, NodeService, check_deadline, node_rpc
from agentd.api.peercred import TokenRegistry
from agentd.api.score_cache import ScoreCache
from agentd.api.shared_ratelimit import SharedRateLimiter
from agentd.api.snapshot import ChangeCounter, NodeSnapshot, SnapshotFile
from agentd.api.status import to_status
from agentd.errors import (
    AgentdError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from agentd.log import configure_logging
from agentd.metrics.window import NodeWindow
from agentd.observability.interceptor import AioApiMetricsInterceptor
from agentd.scoring import Room
from agentd.v1 import node_pb2 as pb

log = structlog.get_logger("agentd.api.reader")

#: Metadata the daemon's forward socket reads the caller from; a client's own
#: metadata of these names is dropped before forwarding.
FORWARDED_CERT = "agentd-forwarded-cert-bin"
FORWARDED_PEER = "agentd-forwarded-peer"
_PR_SET_PDEATHSIG = 1
#: How long a read waits for the snapshot of a change the daemon just made (it is
#: built at once: ~1-3 ms) before asking the daemon instead.
FRESH_WAIT_SECONDS = 0.1
FRESH_POLL_SECONDS = 0.001
WATCH_METHOD = "/agentd.v1.NodeService/WatchNodeEvents"
SCORE_METHOD = "/agentd.v1.NodeService/ScorePlacement"
#: The score cache's key of a whole request's answer (its other keys are a
#: candidate's bytes or (intent, budget) bytes: never a tuple starting with a str).
_WHOLE_REQUEST = "request"
#: A watcher's token may be a little ahead of this reader's event log (it came from
#: a snapshot or another reader): wait this long for the log before asking the daemon.
CATCH_UP_SECONDS = 0.5
TAIL_RETRY_SECONDS = 0.2
# Sent on by grpc itself, or ours: never taken from the client.
_NOT_FORWARDED = ("agentd-forwarded-", "grpc-", ":", "user-agent")


@dataclass(frozen=True)
class ReaderSpec:
    address: str  # the TCP listener, "host:port"
    tls_cert: str
    tls_key: str
    tls_client_ca: str
    snapshot: str  # the published NodeSnapshot
    generation: str  # the daemon's ChangeCounter
    forward_socket: str  # the daemon's unix socket for everything else
    rate_limit: float
    rate_burst: int
    rate_buckets: str  # the token buckets shared with the daemon (shared_ratelimit.py)
    max_request_bytes: int
    max_response_bytes: int
    model: str  # the predictor's model file ("" = the fallback rule)
    daemon_pid: int
    log_format: str  # as the daemon's ([daemon] log_format, log_level)
    log_level: str
    ready_fd: int  # written to once listening
    max_watchers: int = 128  # WatchNodeEvents streams this reader serves ([api] max_watchers)
    event_history: int = 16_384  # events its log keeps for watchers ([api] event_history)
    slot: int = 0  # this reader's place among the readers (0..readers-1)
    # reuseport.py's program and sockets map, inherited; -1: the kernel's hash.
    balance_program_fd: int = -1
    balance_sockets_fd: int = -1
    balance_streaming_fd: int = -1  # this reader marks itself there while it streams

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def _streaming() -> dict[str, tuple[bool, bool]]:
    """(request streams, response streams) of every method a reader forwards."""
    methods: dict[str, tuple[bool, bool]] = {}
    for module in (pb, health_pb2, reflection_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                methods[f"/{service.full_name}/{m.name}"] = (m.client_streaming, m.server_streaming)
    return methods


class ReaderNodeService(NodeService):
    """NodeService's reads over a published snapshot. Only ScorePlacement and
    GetNodeState are routed to it; the rest of NodeService's state is not here."""

    def __init__(self, snapshots: SnapshotFile, limiter: SharedRateLimiter, model: str) -> None:
        # Not NodeService.__init__: no manager, control or reservations in a reader.
        self.snapshots = snapshots
        self.auth = Authenticator(TokenRegistry())  # TCP: certificates only
        self.limiter = limiter
        self.audit = None  # reads are not audited
        self.after_change = None
        self.stopping = threading.Event()
        self._window = NodeWindow()
        self._windowed: NodeSnapshot | None = None  # the snapshot _window is from
        self.predictor = _placement_predictor(model, lambda: self._window)
        self.capacity = snapshots.current().capacity
        self.score_cache = ScoreCache()

    def scoring_inputs(self) -> tuple[Room, float]:
        snapshot = self.snapshots.current()
        if snapshot is not self._windowed:  # once per snapshot, not per call
            self._windowed = snapshot
            self.capacity = snapshot.capacity
            if snapshot.window:
                self._window = NodeWindow.from_dict(snapshot.window)
        return snapshot.room, snapshot.stall_percent

    def answers(self) -> dict[Any, bytes] | None:
        """The score cache's table for the current scoring inputs (score_cache.py):
        the one ScorePlacement itself fills, emptied when the room, stall, capacity,
        predictor or prediction epoch change; None when the predictor cannot be
        cached. Whole answers are kept in it too, by the request's bytes."""
        room, stall = self.scoring_inputs()
        window = self._prediction_window()
        if window is UNCACHEABLE_WINDOW:
            return None
        return self.score_cache.answers((room, stall, self.capacity), (self.predictor, window))

    def keep(self, table: dict[Any, bytes] | None, request: bytes, answer: bytes) -> None:
        """Keep `answer` to `request` when the inputs it was computed with (`table`'s)
        are still the current ones (the prediction epoch may have turned meanwhile)."""
        if table is not None and self.answers() is table:
            self.score_cache.put(table, (_WHOLE_REQUEST, request), answer)

    def admit(self, name: str, context: Any) -> grpc.Status | None:
        """serve()'s checks without running the method: the status to abort with,
        or None. Per call, whatever is cached: an observer is refused control."""
        try:
            who = self.principal(context)
            self.limiter.take(who.key)
            check_deadline(context)
            who.check_allowed(name)
        except AgentdError as e:
            return to_status(e)
        return None

    @node_rpc
    def GetNodeState(self, who: Any, request: pb.GetNodeStateRequest, context: Any):
        # Every TCP principal (scheduler, observer) sees the node-wide state.
        return self.snapshots.state(with_tool_calls=request.include_tool_calls)


def _placement_predictor(model: str, window: Callable[[], NodeWindow]) -> Any:
    from agentd.predictor.placement import PlacementPredictor
    from agentd.predictor.predictor import Predictor

    return PlacementPredictor(Predictor.load(Path(model) if model else None), window)


class Forwarder:
    """Passes a call to the daemon's forward socket with the caller's certificate."""

    def __init__(self, socket_path: str) -> None:
        self.channel = grpc.aio.insecure_channel(f"unix:{socket_path}")
        self.methods = _streaming()

    @staticmethod
    def _metadata(context: grpc.aio.ServicerContext) -> list[tuple[str, str | bytes]] | None:
        certs = context.auth_context().get("x509_pem_cert")
        if not certs:
            return None
        metadata = [
            (k, v)
            for k, v in context.invocation_metadata() or ()
            if not k.startswith(_NOT_FORWARDED)
        ]
        metadata += [(FORWARDED_CERT, bytes(certs[0])), (FORWARDED_PEER, context.peer())]
        return metadata

    def handler(self, method: str) -> grpc.RpcMethodHandler | None:
        kind = self.methods.get(method)
        if kind is None:
            return None  # UNIMPLEMENTED, as on the daemon
        client_streaming, server_streaming = kind
        if client_streaming and server_streaming:
            return grpc.stream_stream_rpc_method_handler(self._stream(method, True))
        if server_streaming:
            return grpc.unary_stream_rpc_method_handler(self._stream(method, False))
        return grpc.unary_unary_rpc_method_handler(self._unary(method))

    async def _prepare(self, context: grpc.aio.ServicerContext) -> tuple[list[Any], float | None]:
        metadata = self._metadata(context)
        if metadata is None:  # the handshake requires one: never here
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        return metadata, context.time_remaining()  # type: ignore[return-value]

    def _unary(self, method: str) -> Callable[..., Any]:
        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self.call(method, request, context)

        return forward

    async def call(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """The daemon's answer to unary `method`, or its status as this call's."""
        metadata, timeout = await self._prepare(context)
        try:
            return await self.channel.unary_unary(method)(
                request, metadata=metadata, timeout=timeout
            )
        except grpc.aio.AioRpcError as e:
            await _pass_on(e, context)
            raise  # unreachable: abort raises

    def _stream(self, method: str, client_streaming: bool) -> Callable[..., Any]:
        """A server-streaming method (WatchNodeEvents, health Watch), or a bidi one
        (reflection): `requests` is then the client's request iterator."""
        if client_streaming:
            stream = self.channel.stream_stream(method)
        else:
            stream = self.channel.unary_stream(method)

        async def forward(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            metadata, timeout = await self._prepare(context)
            call = stream(requests, metadata=metadata, timeout=timeout)
            try:
                async for response in call:
                    yield response
            except grpc.aio.AioRpcError as e:
                await _pass_on(e, context)
            finally:
                call.cancel()  # the client went away: so does the daemon's stream

        return forward


async def _pass_on(error: grpc.aio.AioRpcError, context: grpc.aio.ServicerContext) -> None:
    """The daemon's status, details and trailing metadata (RetryInfo, BadRequest),
    unchanged."""
    trailing = tuple((k, v) for k, v in (error.trailing_metadata() or ()))
    await context.abort(error.code(), error.details() or "", trailing)


class ReaderHandler(grpc.GenericRpcHandler):
    """ScorePlacement, GetNodeState and (from the event log) WatchNodeEvents here,
    everything else forwarded."""

    def __init__(
        self, service: ReaderNodeService, forwarder: Forwarder, watches: LocalWatches
    ) -> None:
        self.forwarder = forwarder
        self.local = {
            "/agentd.v1.NodeService/GetNodeState": _local(
                service, forwarder, "GetNodeState", pb.GetNodeStateRequest, pb.GetNodeStateResponse
            )
        }
        self.local[WATCH_METHOD] = grpc.unary_stream_rpc_method_handler(
            watches.watch, request_deserializer=pb.WatchNodeEventsRequest.FromString
        )
        self.local[SCORE_METHOD] = _score_placement(service, forwarder)
        self.local[reader_health.CHECK_METHOD] = reader_health.check_handler(
            service.snapshots, fresh
        )
        # Undecodable requests: INVALID_ARGUMENT, as on the daemon (decode.py); then
        # timed, into the files the daemon's /metrics adds up (readers.py sets
        # PROMETHEUS_MULTIPROC_DIR).
        self.timing = AioApiMetricsInterceptor("tcp")
        self.local = {
            method: self.timing.wrap(method, checked_aio(h)) for method, h in self.local.items()
        }

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        local = self.local.get(method)
        if local is not None:
            return local
        forwarded = self.forwarder.handler(method)
        return None if forwarded is None else self.timing.wrap(method, forwarded)


class Tail:
    """The reader's one event stream from the daemon (event_tail.py), into `log`;
    reconnected from the last event received when it breaks."""

    def __init__(self, channel: grpc.aio.Channel, log: EventLog) -> None:
        self.stream = channel.unary_stream(TAIL_METHOD)
        self.log = log

    async def run(self, start: int | None) -> None:
        while True:
            request = b"" if start is None else start.to_bytes(8, "little")
            call = self.stream(request)
            try:
                header = True
                async for frame in call:
                    if header:
                        self.log.restart(*decode_header(frame))
                        header = False
                    else:
                        self.log.append(*decode_batch(frame))
            except grpc.aio.AioRpcError as e:
                log.warning("reader.tail_broken", code=e.code().name)
            finally:
                call.cancel()
                self.log.disconnected()
            start = self.log.last if self.log.boot_id else None
            await asyncio.sleep(TAIL_RETRY_SECONDS)


class StreamingMark:
    """This reader's mark in the balancer's streaming map, set while it serves any
    event stream: new connections then go to the readers that serve none, while
    there is one (reuseport.py), so that a fan-out to many watchers (tens of
    microseconds of this one loop per message) does not stall their calls.
    Without the balancer (fd -1), nothing."""

    def __init__(self, fd: int, slot: int) -> None:
        self.fd = fd
        self.slot = slot
        self.streaming = False

    def set(self, streaming: bool) -> None:
        if streaming != self.streaming:
            self.streaming = streaming
            self.publish()

    def publish(self) -> None:
        """Write the mark as it is (also over a replaced reader's, at the start)."""
        if self.fd < 0:
            return
        try:
            reuseport.mark_streaming(self.fd, self.slot, self.streaming)
        except reuseport.BalanceUnavailable as e:
            log.warning("reader.streaming_mark_failed", slot=self.slot, error=str(e))


class LocalWatches:
    """WatchNodeEvents from the reader's event log: same checks as the daemon's
    (identity from the certificate, rate limit, role, a bound on streams), the same
    messages (the daemon built them), in order. What the log does not cover (a token
    older than it, of another daemon run, malformed, or a session's stream, which
    the daemon checks against its sessions) goes to the daemon, as before."""

    def __init__(
        self,
        service: ReaderNodeService,
        forwarder: Forwarder,
        event_log: EventLog,
        limit: int,
        mark: StreamingMark | None = None,
    ) -> None:
        self.service = service
        self.forwarder = forwarder
        self.log = event_log
        self.limit = limit
        self.open = 0
        self.mark = mark or StreamingMark(-1, 0)
        self._forward = forwarder.handler(WATCH_METHOD)

    async def _start(self, request: pb.WatchNodeEventsRequest) -> int | None:
        """Where a local stream starts, or None when the daemon must serve it."""
        if request.session_id or not self.log.connected:
            return None
        try:
            point = parse_token(request.resume_token)
        except AgentdError:
            return None  # the daemon says what is wrong with it
        if point is None:
            return self.log.last
        if point.boot_id != self.log.boot_id:
            return None
        waited = 0.0
        # A token from another process's snapshot can be a little ahead of this log.
        while point.seq > self.log.last and waited < CATCH_UP_SECONDS:
            await asyncio.sleep(FRESH_POLL_SECONDS * 5)
            waited += FRESH_POLL_SECONDS * 5
        return point.seq if self.log.covers(point.seq) else None

    async def watch(
        self, request: pb.WatchNodeEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        try:
            who = self.service.principal(context)
            self.service.limiter.take(who.key)
            who.check_allowed("WatchNodeEvents")
            if self.open >= self.limit:
                raise ResourceExhaustedError(
                    f"{self.limit} event streams are open on this reader (the limit)"
                )
        except AgentdError as e:
            status = to_status(e)
            await context.abort(status.code, status.details, status.trailing_metadata)
            return
        self.open += 1  # before any await: concurrent opens see each other
        self.mark.set(True)
        try:
            cursor = await self._start(request)
            if cursor is None:
                async for message in self._forwarded(request, context):
                    yield message
                return
            while True:
                changed = self.log.changed
                batch = self.log.after(cursor)
                if batch is None:  # fell off the log, or the tail broke: the daemon
                    resumed = pb.WatchNodeEventsRequest(
                        resume_token=token(self.log.boot_id, cursor)
                    )
                    async for message in self._forwarded(resumed, context):
                        yield message
                    return
                for seq, payload in batch:
                    cursor = seq
                    if payload:
                        yield payload
                if not batch:
                    # No timeout (asyncio.wait_for makes a task per wait: the most of
                    # an idle watcher's cost): stopping the server cancels the call.
                    await changed.wait()
        finally:
            self.open -= 1
            if self.open == 0:
                self.mark.set(False)

    def _forwarded(
        self, request: pb.WatchNodeEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        assert self._forward is not None
        return self._forward.unary_stream(request.SerializeToString(), context)


async def fresh(snapshots: SnapshotFile) -> bool:
    """Wait for a snapshot as new as the daemon's last change; False after
    FRESH_WAIT_SECONDS (the daemon is busy: the caller asks it directly)."""
    waited = 0.0
    while snapshots.stale():
        if waited >= FRESH_WAIT_SECONDS:
            return False
        await asyncio.sleep(FRESH_POLL_SECONDS)
        waited += FRESH_POLL_SECONDS
    return True


def _local(
    service: ReaderNodeService, forwarder: Forwarder, name: str, request: Any, response: Any
) -> Any:
    """On the loop, no thread hand-off: a snapshot read and arithmetic."""
    method = getattr(type(service), name).__wrapped__
    path = f"/agentd.v1.NodeService/{name}"

    async def handler(message: Any, context: grpc.aio.ServicerContext) -> Any:
        # The usual case (no change since the snapshot) awaits nothing.
        if service.snapshots.stale() and not await fresh(service.snapshots):
            answer = await forwarder.call(path, message.SerializeToString(), context)
            return response.FromString(answer)
        result, status = service.serve(method, message, context)
        if status is not None:
            await context.abort(status.code, status.details, status.trailing_metadata)
        return result

    return grpc.unary_unary_rpc_method_handler(
        handler,
        request_deserializer=request.FromString,
        response_serializer=response.SerializeToString,
    )


def _score_placement(service: ReaderNodeService, forwarder: Forwarder) -> grpc.RpcMethodHandler:
    """ScorePlacement on raw bytes: a request seen with the current scoring inputs
    is answered with the bytes answered then (ReaderNodeService.answers), after
    the same per-call checks (identity from the certificate, rate limit, deadline,
    role); any other goes through NodeService's own code and is kept."""
    method = NodeService.ScorePlacement.__wrapped__

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        # The usual case (no change since the snapshot) awaits nothing.
        if service.snapshots.stale() and not await fresh(service.snapshots):
            return await forwarder.call(SCORE_METHOD, request, context)
        table = service.answers()
        answer = table.get((_WHOLE_REQUEST, request)) if table is not None else None
        if answer is not None:
            status = service.admit("ScorePlacement", context)
        else:
            try:
                message = pb.ScorePlacementRequest.FromString(request)
            except DecodeError:
                status = to_status(
                    InvalidArgumentError("request", "is not a ScorePlacementRequest")
                )
            else:
                result, status = service.serve(method, message, context)
                if result is not None:
                    answer = result.SerializeToString()
                    service.keep(table, request, answer)
        if status is not None:
            await context.abort(status.code, status.details, status.trailing_metadata)
        return answer

    return grpc.unary_unary_rpc_method_handler(handler)


async def serve(spec: ReaderSpec) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    service = ReaderNodeService(
        SnapshotFile(Path(spec.snapshot), ChangeCounter(Path(spec.generation), writer=False)),
        SharedRateLimiter(Path(spec.rate_buckets), spec.rate_limit, spec.rate_burst),
        spec.model,
    )
    forwarder = Forwarder(spec.forward_socket)
    event_log = EventLog(spec.event_history)
    tail = asyncio.create_task(
        Tail(forwarder.channel, event_log).run(_snapshot_seq(service.snapshots))
    )
    mark = StreamingMark(spec.balance_streaming_fd, spec.slot)
    watches = LocalWatches(service, forwarder, event_log, spec.max_watchers, mark)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", spec.max_request_bytes),
            ("grpc.max_send_message_length", spec.max_response_bytes),
            ("grpc.so_reuseport", 1),
        ]
    )
    server.add_generic_rpc_handlers([ReaderHandler(service, forwarder, watches)])
    credentials = grpc.ssl_server_credentials(
        [(Path(spec.tls_key).read_bytes(), Path(spec.tls_cert).read_bytes())],
        root_certificates=Path(spec.tls_client_ca).read_bytes(),
        require_client_auth=True,
    )
    if server.add_secure_port(spec.address, credentials) == 0:
        raise OSError(f"cannot listen on {spec.address}")
    await server.start()
    balance(spec, mark)
    settle_heap()
    os.write(spec.ready_fd, b"1")
    os.close(spec.ready_fd)
    log.info("reader.listening", address=spec.address, pid=os.getpid())
    await stop.wait()
    await server.stop(1.0)
    tail.cancel()
    await forwarder.channel.close()


def balance(spec: ReaderSpec, mark: StreamingMark) -> None:
    """Join the daemon's spreading of connections (reuseport.py) at this reader's
    slot; without it the kernel's hash spreads them, as it would anyway."""
    if spec.balance_program_fd < 0:
        return
    try:
        reuseport.register(
            spec.balance_program_fd,
            spec.balance_sockets_fd,
            spec.slot,
            int(spec.address.rsplit(":", 1)[1]),
        )
        mark.publish()
    except reuseport.BalanceUnavailable as e:
        log.warning("reader.balance_unavailable", slot=spec.slot, error=str(e))
    finally:
        # The group holds the program, the program the maps: not ours to keep,
        # but for the streaming map, which `mark` writes to.
        os.close(spec.balance_program_fd)
        os.close(spec.balance_sockets_fd)


def settle_heap() -> int:
    """Move everything alive after the start (grpc, protobuf, the model, the first
    snapshot) out of the garbage collector's reach,
    and return how many. Their full collections, triggered now and then by the
    calls' short-lived objects, took 40-300 ms in a reader under load (measured with
    gc.callbacks): a whole stalled event loop, every call in flight on the p99. What
    is frozen still goes when its last reference does; only its cycles stay."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _snapshot_seq(snapshots: SnapshotFile) -> int | None:
    """The event number the snapshot's state was taken at: the log starts there, so
    that a watcher listing then watching through this reader is served here."""
    try:
        point = parse_token(snapshots.state(with_tool_calls=False).resume_token)
    except AgentdError:
        return None
    return None if point is None else point.seq


def main(argv: list[str]) -> int:
    spec = ReaderSpec(**json.loads(argv[1]))
    configure_logging(spec.log_format, spec.log_level)
    # Die with the daemon, whatever kills it (readers.py stops us first otherwise).
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != spec.daemon_pid:
        return 1  # the daemon died before the prctl took effect
    asyncio.run(serve(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
