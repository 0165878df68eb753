"""agentd.v1.AgentService: the agent-facing API over the local unix socket."""

from __future__ import annotations

import contextlib
import functools
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
import structlog

from agentd import __version__
from agentd.api import convert
from agentd.api.peercred import TokenRegistry
from agentd.api.status import internal, to_status, unauthenticated
from agentd.errors import (
    AgentdError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from agentd.events import Event
from agentd.executors import Executors
from agentd.manager import Caller, Manager
from agentd.model import Resources, Session, ToolCall
from agentd.reservations import Reservations
from agentd.v1 import agent_pb2 as pb
from agentd.v1 import agent_pb2_grpc as pb_grpc

log = structlog.get_logger("agentd.api")

#: Event streams per uid and in total; each holds a server worker thread (server.py).
MAX_WATCHES_PER_UID = 4
MAX_WATCHES = 16
#: What Watch streams: process and tool-call events, and what the daemon did to the
#: caller's own work (as DaemonEvent). Node-wide kinds ("pressure", session opened or
#: closed) are NodeService's (WatchNodeEvents).
WATCH_KINDS = frozenset(
    {
        "process",
        "tool_call_begun",
        "tool_call_ended",
        "guard_action",
        "oom_kill",
        "throttled",
        "frozen",
        "resumed",
        "evicted",
    }
)

Response = TypeVar("Response")


def rpc(method: Callable[..., Response]) -> Callable[..., Response]:
    """Authenticate the caller, run the method, and turn every failure into a status.

    An unexpected exception is logged with its stack and answered INTERNAL: the
    daemon keeps serving whatever one request did.
    """

    @functools.wraps(method)
    def wrapper(self: AgentService, request: Any, context: grpc.ServicerContext) -> Response:
        caller = self.tokens.lookup(context.invocation_metadata())
        if caller is None:
            context.abort_with_status(
                unauthenticated(
                    "no valid agentd token: connect to the .cred socket next to the gRPC "
                    "socket first (the SDK does this for you)"
                )
            )
        try:
            with self.before_reply():
                return method(self, caller, request, context)
        except AgentdError as e:
            context.abort_with_status(to_status(e))
        except Exception as e:
            log.exception("rpc.failed", method=method.__name__)
            context.abort_with_status(internal(f"{type(e).__name__}: {e}"))
        raise AssertionError("unreachable")  # abort_with_status raises

    return wrapper


class AgentService(pb_grpc.AgentServiceServicer):
    def __init__(
        self,
        manager: Manager,
        tokens: TokenRegistry,
        node_info: Callable[[], dict[str, Any]],
        executors: Executors,
    ) -> None:
        self.manager = manager
        self.executors = executors
        self.tokens = tokens
        self.node_info = node_info
        self.started_at = time.time()
        # Set by the daemon when NodeService runs: CreateSession may use a reservation.
        self.reservations: Reservations | None = None
        self.stopping = threading.Event()  # ends Watch streams at shutdown
        # Set by the daemon when reader processes serve NodeService: a session opened
        # or closed is in their snapshot before the reply (SnapshotPublisher).
        self.before_reply: Callable[[], contextlib.AbstractContextManager[None]] = (
            contextlib.nullcontext
        )
        self._watch_lock = threading.Lock()
        self._watches: dict[int, int] = {}  # uid -> open Watch streams

    def _session(self, s: Session) -> pb.Session:
        running = self.manager.running_count(s.id) if s.open else 0
        return convert.session_to_pb(s, running, self.manager.backend.path_of(s.cgroup_rel))

    def _tool_call(self, t: ToolCall, with_usage_paths: bool = False) -> pb.ToolCall:
        backend = self.manager.backend
        # Only BeginToolCall's caller needs the paths (the SDK reads the final usage).
        paths = backend.usage_paths(t.cgroup_rel) if with_usage_paths else None
        return convert.tool_call_to_pb(t, backend.path_of(t.cgroup_rel), paths)

    @rpc
    def CreateSession(self, caller: Caller, request: pb.CreateSessionRequest, context: Any):
        budget = convert.resources_from_pb(request.budget, "budget")
        reservation = None
        if request.reservation_id:
            reservation = self.reservations and self.reservations.get(request.reservation_id)
            if not reservation:
                raise NotFoundError(
                    "reservation (expired, used or released?)", request.reservation_id
                )
            if budget == Resources():
                budget = reservation.resources
        session = self.manager.create_session(
            caller,
            request.name,
            budget,
            convert.priority_from_pb(request.priority, "priority"),
            exist_ok=request.exist_ok,
        )
        if reservation is not None and self.reservations is not None:
            # The session's budget counts against the node from now on, not the reservation.
            self.reservations.take(reservation.id)
        return self._session(session)

    @rpc
    def GetSession(self, caller: Caller, request: pb.GetSessionRequest, context: Any):
        return self._session(self.manager.get_session(caller, _required(request.session_id)))

    @rpc
    def ListSessions(self, caller: Caller, request: pb.ListSessionsRequest, context: Any):
        sessions = self.manager.list_sessions(caller, request.include_closed)
        return pb.ListSessionsResponse(sessions=[self._session(s) for s in sessions])

    @rpc
    def CloseSession(self, caller: Caller, request: pb.CloseSessionRequest, context: Any):
        session, ended = self.manager.close_session(caller, _required(request.session_id))
        self.executors.drop_session(session.id)
        return pb.CloseSessionResponse(
            session=self._session(session), ended_tool_calls=[self._tool_call(t) for t in ended]
        )

    @rpc
    def BeginToolCall(self, caller: Caller, request: pb.BeginToolCallRequest, context: Any):
        intent = convert.intent_from_pb(request.intent)
        session_id = _required(request.session_id)
        ends = [
            (
                _required(end.tool_call_id, f"ends[{i}].tool_call_id"),
                convert.exit_from_pb(end.exit),
                end.label,
                _seconds(end.started_at),
            )
            for i, end in enumerate(request.ends)
        ]
        if request.more_pids and not request.ahead:
            raise InvalidArgumentError("more_pids", "only launchers placed ahead come in batches")
        if ends:
            self.manager.end_tool_calls(caller, ends)
        tool_call = self.manager.begin_tool_call(
            caller, session_id, intent, request.pid, ahead=request.ahead
        )
        reply = self._tool_call(tool_call, with_usage_paths=True)
        reply.ends_handled = len(ends)
        for pid in request.more_pids:
            try:
                more = self.manager.begin_tool_call(caller, session_id, intent, pid, ahead=True)
            except AgentdError as e:  # the client aborts this launcher and the rest
                log.info("tool_call.batch_placement_refused", pid=pid, error=str(e))
                break
            reply.more_placed.append(self._tool_call(more, with_usage_paths=True))
        return reply

    @rpc
    def StartToolCall(self, caller: Caller, request: pb.StartToolCallRequest, context: Any):
        tool_call = self.manager.start_tool_call(
            caller,
            _required(request.tool_call_id, "tool_call_id"),
            request.label,
            _seconds(request.started_at),
        )
        return self._tool_call(tool_call)

    @rpc
    def EndToolCall(self, caller: Caller, request: pb.EndToolCallRequest, context: Any):
        exit_status = convert.exit_from_pb(request.exit)
        tool_call = self.manager.end_tool_call(
            caller,
            _required(request.tool_call_id, "tool_call_id"),
            exit_status,
            label=request.label,
            started_at=_seconds(request.started_at),
        )
        return self._tool_call(tool_call)

    @rpc
    def KillToolCall(self, caller: Caller, request: pb.KillToolCallRequest, context: Any):
        sig = request.signal or signal.SIGKILL
        if sig not in signal.valid_signals():
            raise InvalidArgumentError("signal", f"{sig} is not a signal number")
        tool_call = self.manager.kill_tool_call(
            caller, _required(request.tool_call_id, "tool_call_id"), sig
        )
        return self._tool_call(tool_call)

    @rpc
    def GetToolCall(self, caller: Caller, request: pb.GetToolCallRequest, context: Any):
        tool_call = self.manager.get_tool_call(
            caller, _required(request.tool_call_id, "tool_call_id")
        )
        return self._tool_call(tool_call)

    @rpc
    def ListToolCalls(self, caller: Caller, request: pb.ListToolCallsRequest, context: Any):
        tool_calls = self.manager.list_tool_calls(
            caller, request.session_id or None, request.include_ended
        )
        return pb.ListToolCallsResponse(tool_calls=[self._tool_call(t) for t in tool_calls])

    @rpc
    def GetNodeStatus(self, caller: Caller, request: pb.GetNodeStatusRequest, context: Any):
        info = self.node_info()
        visible = self.manager.list_sessions(caller)
        status = pb.NodeStatus(
            version=__version__,
            cgroup_mode=info["cgroup_mode"],
            cgroup_backend=self.manager.backend.name,
            cgroup_root=self.manager.backend.root_path(),
            controllers=self.manager.backend.controllers(),
            capabilities=info["capabilities"],
            sessions_open=len(visible),
            tool_calls_running=sum(self.manager.running_count(s.id) for s in visible),
            caller_uid=caller.uid,
            process_tracking=info.get("process_tracking", "off"),
        )
        stats = self.executors.stats
        windows = sorted(stats.windows_ns)
        status.executor_children_placed = stats.placed
        status.executor_escapes = stats.escaped
        status.executor_missed = stats.missed
        status.executor_children_held = stats.held
        if windows:
            status.executor_window_p50_ms = windows[len(windows) // 2] / 1e6
            status.executor_window_p99_ms = (
                windows[min(len(windows) - 1, len(windows) * 99 // 100)] / 1e6
            )
        status.started_at.FromNanoseconds(int(self.started_at * 1e9))
        return status

    @rpc
    def GetProcessTree(self, caller: Caller, request: pb.GetProcessTreeRequest, context: Any):
        snapshot = self.manager.process_tree(
            caller, _required(request.tool_call_id, "tool_call_id")
        )
        return convert.process_tree_to_pb(snapshot)

    def Watch(
        self, request: pb.WatchRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchEvent]:
        """Streams events until the client goes away or the daemon stops. Each watcher
        has a bounded queue; what a slow watcher missed is counted in dropped_before."""
        caller = self.tokens.lookup(context.invocation_metadata())
        if caller is None:
            context.abort_with_status(unauthenticated("no valid agentd token"))
        session_id = request.session_id
        try:
            if session_id:
                self.manager.get_session(caller, session_id)
            self._count_watch(caller, +1)
        except AgentdError as e:
            context.abort_with_status(to_status(e))

        def accept(event: Event) -> bool:
            if event.kind not in WATCH_KINDS:
                return False
            if session_id and event.session_id != session_id:
                return False
            return caller.is_root or event.owner_uid == caller.uid

        subscription = self.manager.bus.subscribe(accept)
        try:
            while context.is_active() and not self.stopping.is_set():
                try:
                    event, dropped = subscription.get(timeout=0.5)
                except queue.Empty:
                    continue
                yield self._watch_event(event, dropped)
        finally:
            subscription.close()
            self._count_watch(caller, -1)

    def _count_watch(self, caller: Caller, delta: int) -> None:
        """A Watch stream holds one of the server's worker threads for its whole life:
        bounded per uid and in total, so watchers can never starve the unary calls."""
        with self._watch_lock:
            if delta > 0:
                mine = self._watches.get(caller.uid, 0)
                total = sum(self._watches.values())
                if total >= MAX_WATCHES:
                    raise ResourceExhaustedError(
                        f"{total} event streams are open on this node (the limit)"
                    )
                if not caller.is_root and mine >= MAX_WATCHES_PER_UID:
                    raise ResourceExhaustedError(
                        f"uid {caller.uid} has {mine} event streams open (the limit): "
                        "close one, or watch all your sessions with one stream"
                    )
            self._watches[caller.uid] = self._watches.get(caller.uid, 0) + delta

    def _watch_event(self, event: Event, dropped: int) -> pb.WatchEvent:
        msg = pb.WatchEvent(
            session_id=event.session_id, tool_call_id=event.tool_call_id, dropped_before=dropped
        )
        msg.time.FromNanoseconds(int(event.time * 1e9))
        if event.kind == "process":
            msg.process.CopyFrom(convert.process_event_to_pb(event.payload))
        elif isinstance(event.payload, dict):  # guard_action, oom_kill, ...
            details = {str(k): str(v) for k, v in event.payload.items()}
            msg.daemon.CopyFrom(pb.DaemonEvent(kind=event.kind, details=details))
        else:
            tool_call: ToolCall = event.payload
            kind = (
                pb.TOOL_CALL_EVENT_KIND_BEGUN
                if event.kind == "tool_call_begun"
                else pb.TOOL_CALL_EVENT_KIND_ENDED
            )
            msg.tool_call.CopyFrom(
                pb.ToolCallEvent(kind=kind, tool_call=self._tool_call(tool_call))
            )
        return msg

    @rpc
    def RegisterExecutor(self, caller: Caller, request: pb.RegisterExecutorRequest, context: Any):
        executor = self.executors.register(
            caller,
            _required(request.session_id),
            request.pid,
            convert.intent_from_pb(request.intent),
        )
        return pb.Executor(
            pid=executor.pid, session_id=executor.session_id, owner_uid=executor.owner_uid
        )

    @rpc
    def UnregisterExecutor(
        self, caller: Caller, request: pb.UnregisterExecutorRequest, context: Any
    ):
        mine = {e.pid for e in self.executors.of_caller(caller)}
        removed = request.pid in mine and self.executors.unregister(request.pid)
        return pb.UnregisterExecutorResponse(removed=removed)


def _seconds(timestamp: Any) -> float | None:
    """A Timestamp as epoch seconds; None when unset."""
    if not timestamp.seconds and not timestamp.nanos:
        return None
    return float(timestamp.ToNanoseconds()) / 1e9


def _required(value: str, field: str = "session_id") -> str:
    if not value:
        raise InvalidArgumentError(field, "is required")
    return value
