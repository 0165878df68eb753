"""agentd.v1.NodeService: node state, placement scores, admission, control and a
resumable event stream for schedulers (TCP + mutual TLS) and local callers (unix
socket). Who may call what is in auth.py; the control primitives are control.py's.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import structlog

from agentd.api import convert
from agentd.api.audit import AuditLog
from agentd.api.auth import ADMISSION_METHODS, CONTROL_METHODS, Authenticator, Principal, Role
from agentd.api.node_events import overflow, parse_token, to_node_event, token
from agentd.api.node_sampler import NodeSampler, Pressure
from agentd.api.ratelimit import RateLimiter
from agentd.api.score_cache import (
    COMPUTED,
    FROM_ANSWER,
    FROM_ENTRY,
    ScoreCache,
    candidate_key,
    score_entry,
)
from agentd.api.shared_ratelimit import SharedRateLimiter
from agentd.api.status import internal, to_status
from agentd.cgroups.base import CgroupError
from agentd.control import Control, ControlResult, Target
from agentd.errors import (
    AgentdError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from agentd.events import Event
from agentd.manager import Caller, Manager
from agentd.model import Resources, Session, ToolCall
from agentd.reservations import Reservation, Reservations
from agentd.scoring import Capacity, Demand, Predictor, Room, infeasibility, score, total
from agentd.units import UnitError, parse_cpu, parse_size
from agentd.v1 import agent_pb2, node_pb2_grpc
from agentd.v1 import node_pb2 as pb

log = structlog.get_logger("agentd.api.node")

MAX_CANDIDATES = 256
MAX_ID_LENGTH = 256
DEFAULT_TTL_SECONDS = 30.0
MAX_TTL_SECONDS = 600.0
#: Event streams per local agent uid and per transport (on the unix socket each holds a
#: server thread; on TCP they are coroutines, bounded by [api] max_watchers).
MAX_WATCHES_PER_AGENT = 4
AUDITED = CONTROL_METHODS | ADMISSION_METHODS
#: Stream messages kept for reuse by every stream (events numbered in order: the
#: streams that keep up all read the last few).
RESPONSE_CACHE = 1024
# Node-wide sums (allocated, room) count every session, whoever asks.
_ALL = Caller(uid=0, gid=0, pid=0)
#: Who the published snapshot is built for: what any TCP client (scheduler or observer,
#: both node-wide) may see.
NODE_WIDE_PRINCIPAL = Principal(name="snapshot", role=Role.SCHEDULER, transport="tcp", caller=_ALL)

Response = TypeVar("Response")
#: A predictor whose inputs are unknown: its answers are never cached.
UNCACHEABLE_WINDOW = object()


@dataclass(frozen=True)
class WatchLimits:
    unix: int = 8  # the unix server's pool is shared with AgentService
    tcp: int = 128


@dataclass
class Watch:
    """One event stream: who reads it, what it is limited to, and the number of the
    last event it has been given (or skipped as not visible)."""

    who: Principal
    session_id: str
    cursor: int
    restarted: bool = False  # the token is of another daemon run: OVERFLOW first

    def visible(self, event: Event) -> bool:
        if self.session_id and event.session_id != self.session_id:
            return False
        return self.who.may_see(event.owner_uid)


def check_deadline(context: grpc.ServicerContext) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceededError("the call's deadline passed before the work was done")


def node_rpc(method: Callable[..., Response]) -> Callable[..., Response]:
    """Identify the caller, apply its rate limit, deadline and role, run the method,
    audit control actions, and turn every failure into a status (INTERNAL, logged,
    for the unexpected: the daemon keeps serving). The undecorated method stays
    reachable as `__wrapped__`: the asyncio server (node_service_aio.py) runs it
    through the same `NodeService.serve`."""

    @functools.wraps(method)
    def wrapper(self: NodeService, request: Any, context: grpc.ServicerContext) -> Response:
        result, status = self.serve(method, request, context)
        if status is not None:
            context.abort_with_status(status)
        return result  # type: ignore[return-value]

    return wrapper


class NodeService(node_pb2_grpc.NodeServiceServicer):
    def __init__(
        self,
        manager: Manager,
        control: Control,
        reservations: Reservations,
        sampler: NodeSampler,
        auth: Authenticator,
        limiter: RateLimiter | SharedRateLimiter,
        audit: AuditLog | None,
        node_name: str,
        capacity: Capacity,
        predictor: Predictor | None = None,
        watch_limits: WatchLimits | None = None,
        on_session_evicted: Callable[[str], None] | None = None,
        after_change: Callable[[], None] | None = None,
    ) -> None:
        self.manager = manager
        self.control = control
        self.reservations = reservations
        self.sampler = sampler
        self.auth = auth
        self.limiter = limiter
        self.audit = audit
        self.node_name = node_name
        self.capacity = capacity
        self.predictor = predictor
        self.watch_limits = watch_limits or WatchLimits()
        self.on_session_evicted = on_session_evicted
        # Called after every successful control or admission call, before it answers:
        # the reader processes' snapshot is republished (readers.py), so that a
        # scheduler's next score, on any process, sees its own reservation.
        self.after_change = after_change
        # The last event the readers' tails may send of those up to `last` (the
        # snapshot publisher holds back events whose snapshot is not out yet).
        self.events_visible: Callable[[int], int] = lambda last: last
        self.stopping = threading.Event()  # ends watch streams at shutdown
        self._watch_lock = threading.Lock()
        self._watches: dict[str, int] = {}  # principal key -> open streams
        self._watches_by_transport: dict[str, int] = {"unix": 0, "tcp": 0}
        self._responses_lock = threading.Lock()
        self._responses: dict[int, pb.WatchNodeEventsResponse | None] = {}  # by seq
        self.score_cache = ScoreCache()

    def serve(
        self, method: Callable[..., Response], request: Any, context: Any
    ) -> tuple[Response | None, grpc.Status | None]:
        """One call of `method` (undecorated) for whoever `context` says is calling:
        its response, or the status to abort with. Shared by both servers; `context`
        is a grpc or grpc.aio ServicerContext (peer, auth_context, metadata and
        time_remaining are all this reads)."""
        name = method.__name__
        principal: Principal | None = None
        try:
            principal = self.principal(context)
            self.limiter.take(principal.key)
            check_deadline(context)
            principal.check_allowed(name)
            result = method(self, principal, request, context)
        except AgentdError as e:
            self._audit(name, principal, request, f"refused: {type(e).__name__}: {e.message}")
            return None, to_status(e)
        except Exception as e:
            log.exception("rpc.failed", method=name)
            self._audit(name, principal, request, "failed")
            return None, internal(f"{type(e).__name__}: {e}")
        self._audit(name, principal, request, "ok", result=result)
        if name in AUDITED and self.after_change is not None:
            try:
                self.after_change()
            except Exception:  # the action is done: a failed publish must not undo it
                log.exception("rpc.after_change_failed", method=name)
        return result, None

    def principal(self, context: grpc.ServicerContext) -> Principal:
        return self.auth.principal(
            context.peer(), context.auth_context(), context.invocation_metadata()
        )

    # ---- read-only ----------------------------------------------------------------

    @node_rpc
    def GetNodeState(self, who: Principal, request: pb.GetNodeStateRequest, context: Any):
        # Read first: an event that races with the state is sent again, never missed.
        resume_token = token(self.manager.bus.boot_id, self.manager.bus.last_seq)
        sample = self.sampler.fresh()
        open_sessions = self.manager.list_sessions(who.caller)
        reservations = self.reservations.live()
        state = pb.NodeState(
            node_name=self.node_name,
            capacity=pb.NodeCapacity(
                memory_bytes=self.capacity.memory, cpus=self.capacity.cpus, pids=self.capacity.pids
            ),
            allocated=_resources_pb(self._allocated(reservations)),
            usage=pb.NodeUsage(
                memory_bytes=sample.memory_bytes,
                cpu_cores=sample.cpu_cores,
                processes=sample.processes,
            ),
            sessions=[
                self._session_view(s, request.include_tool_calls, who) for s in open_sessions
            ],
        )
        for field, resource in (
            ("cpu_pressure", "cpu"),
            ("memory_pressure", "memory"),
            ("io_pressure", "io"),
        ):
            if resource in sample.pressure:
                getattr(state, field).CopyFrom(_pressure_pb(sample.pressure[resource]))
        if who.role is not Role.AGENT:  # reservations are the schedulers' business
            state.reservations.extend(_reservation_pb(r) for r in reservations)
        state.time.GetCurrentTime()
        return pb.GetNodeStateResponse(state=state, resume_token=resume_token)

    @node_rpc
    def ScorePlacement(self, who: Principal, request: pb.ScorePlacementRequest, context: Any):
        if len(request.candidates) > MAX_CANDIDATES:
            raise InvalidArgumentError(
                "candidates", f"{len(request.candidates)} given, at most {MAX_CANDIDATES}"
            )
        room, stall = self.scoring_inputs()
        # Each candidate's answer is kept until an input changes (score_cache.py):
        # only the candidates not seen with these inputs are parsed, predicted and
        # scored. The window is the predictor's, taken before predicting; answers
        # predicted from another one (it turned over meanwhile) are not kept.
        window = self._prediction_window()
        cacheable = window is not UNCACHEABLE_WINDOW
        answers = (
            self.score_cache.answers((room, stall, self.capacity), (self.predictor, window))
            if cacheable
            else {}
        )
        # Two keys per candidate: its whole bytes (id included) for the finished
        # response entry, the usual case of a scheduler scoring the same pending work
        # again; and its intent and budget alone for the answer under any other id.
        entries: list[bytes] = []
        missing: list[int] = []
        for i, c in enumerate(request.candidates):
            entry = answers.get(c.SerializeToString(deterministic=True))
            if entry is None:
                missing.append(i)
            entries.append(entry or b"")
        FROM_ENTRY.inc(len(entries) - len(missing))
        if missing:
            self._fill(request, missing, entries, answers, cacheable, window, room, stall, context)
        check_deadline(context)
        return pb.ScorePlacementResponse.FromString(b"".join(entries))

    def _fill(
        self,
        request: pb.ScorePlacementRequest,
        missing: list[int],
        entries: list[bytes],
        answers: dict[Any, bytes],
        cacheable: bool,
        window: Any,
        room: Room,
        stall: float,
        context: Any,
    ) -> None:
        """The response entries of the candidates at `missing`, from the answers to
        their intents where known, computed otherwise; kept unless the predictor's
        window turned over meanwhile."""
        keys = {i: candidate_key(request.candidates[i]) for i in missing}
        known = {i: answers.get(keys[i]) for i in missing}  # before any put clears it
        unknown = [
            i for i in missing if known[i] is None or len(request.candidates[i].id) > MAX_ID_LENGTH
        ]
        predicted = self.score_cache.predictions() if cacheable else {}
        computed = self._score_candidates(
            request, unknown, [keys[i] for i in unknown], predicted, window, room, stall, context
        )
        COMPUTED.inc(len(unknown))
        FROM_ANSWER.inc(len(missing) - len(unknown))
        known.update(zip(unknown, computed, strict=True))
        keep = cacheable and (not unknown or self._prediction_window() is window)
        for i in missing:
            c = request.candidates[i]
            answer = known[i]
            assert answer is not None
            entries[i] = score_entry(c.id, answer)
            if keep:
                self.score_cache.put(answers, keys[i], answer)
                self.score_cache.put(answers, c.SerializeToString(deterministic=True), entries[i])

    def _score_candidates(
        self,
        request: pb.ScorePlacementRequest,
        indices: list[int],
        keys: list[Any],
        predicted: dict[Any, Any],
        window: Any,
        room: Room,
        stall: float,
        context: Any,
    ) -> list[bytes]:
        """The serialized answers (without candidate ids) of the candidates at
        `indices` (whose candidate_keys are `keys`): parsed (an invalid one raises
        its error), predicted on `window` in one model call unless in `predicted`
        (which gets the new ones), scored."""
        parsed = [_candidate(request.candidates[i], f"candidates[{i}]") for i in indices]
        unknown = [n for n, key in enumerate(keys) if key not in predicted]
        fresh = self._predict_all([parsed[n][1:] for n in unknown], window)
        for n, prediction in zip(unknown, fresh, strict=True):
            predicted[keys[n]] = prediction
        predictions = [predicted[key] for key in keys]
        check_deadline(context)
        out = []
        for n, (_, intent, budget) in enumerate(parsed):
            if n % 16 == 15:
                check_deadline(context)
            prediction = predictions[n]
            result = score(Demand.of(intent, budget), room, self.capacity, stall, prediction)
            entry = pb.Score(
                feasible=result.feasible,
                reason=result.reason,
                memory_headroom_bytes=max(result.memory_headroom, 0),
                cpu_headroom_cores=max(result.cpu_headroom, 0.0),
                score=result.score,
            )
            if prediction is not None:
                entry.prediction.CopyFrom(
                    pb.Prediction(
                        predicted_slowdown=prediction.slowdown,
                        low=prediction.low,
                        high=prediction.high,
                        model=prediction.model,
                    )
                )
            out.append(entry.SerializeToString(deterministic=True))
        return out

    def _prediction_window(self) -> Any:
        """What the predictor's answers depend on besides the candidate: the node
        window it predicts from (PlacementPredictor.window(), one object per window),
        taken anew at most every PREDICTION_REFRESH_SECONDS (score_cache.py); None
        without a predictor; UNCACHEABLE_WINDOW for a predictor that does not say."""
        if self.predictor is None:
            return None
        window = getattr(self.predictor, "window", None)
        if not callable(window):
            return UNCACHEABLE_WINDOW
        if not self.score_cache.epoch_due(self.predictor):
            return self.score_cache.window
        return self.score_cache.epoch(self.predictor, window())

    # ---- admission ----------------------------------------------------------------

    @node_rpc
    def Admit(self, who: Principal, request: pb.AdmitRequest, context: Any):
        candidate_id, intent, budget = _candidate(request.candidate, "candidate")
        ttl = DEFAULT_TTL_SECONDS
        if request.HasField("ttl"):
            ttl = request.ttl.seconds + request.ttl.nanos / 1e9
            if not 0 < ttl <= MAX_TTL_SECONDS:
                raise InvalidArgumentError(
                    "ttl", f"{ttl:g} s: must be more than 0 and at most {MAX_TTL_SECONDS:g} s"
                )
        demand = Demand.of(intent, budget)

        def refusal(live: list[Reservation]) -> str:
            return infeasibility(demand, self._room(live))

        reservation, reason = self.reservations.admit(
            candidate_id, demand.as_resources(), ttl, who.name, refusal
        )
        if reservation is None:
            return pb.AdmitResponse(admitted=False, reason=reason)
        log.info("reservation.admitted", id=reservation.id, by=who.name, ttl=ttl)
        return pb.AdmitResponse(admitted=True, reservation=_reservation_pb(reservation))

    @node_rpc
    def ReleaseReservation(
        self, who: Principal, request: pb.ReleaseReservationRequest, context: Any
    ):
        if not request.reservation_id:
            raise InvalidArgumentError("reservation_id", "is required")
        released = self.reservations.take(request.reservation_id) is not None
        return pb.ReleaseReservationResponse(released=released)

    # ---- control ------------------------------------------------------------------

    @node_rpc
    def Throttle(self, who: Principal, request: pb.ThrottleRequest, context: Any):
        cpu_max = memory_high = None
        if request.cpu_max:
            try:
                cpu_max = parse_cpu(request.cpu_max)
            except UnitError as e:
                raise InvalidArgumentError("cpu_max", str(e)) from None
        if request.memory_high:
            try:
                memory_high = parse_size(request.memory_high)
            except UnitError as e:
                raise InvalidArgumentError("memory_high", str(e)) from None
        target = _target(request)
        check_deadline(context)
        result = self.control.throttle(who.caller, target, cpu_max, memory_high, by=who.name)
        return pb.ThrottleResponse(result=_control_pb(result))

    @node_rpc
    def Freeze(self, who: Principal, request: pb.FreezeRequest, context: Any):
        target = _target(request)
        check_deadline(context)
        result = self.control.freeze(who.caller, target, by=who.name)
        return pb.FreezeResponse(result=_control_pb(result))

    @node_rpc
    def Resume(self, who: Principal, request: pb.ResumeRequest, context: Any):
        target = _target(request)
        check_deadline(context)
        result = self.control.resume(who.caller, target, by=who.name)
        return pb.ResumeResponse(result=_control_pb(result))

    @node_rpc
    def Evict(self, who: Principal, request: pb.EvictRequest, context: Any):
        target = _target(request)
        if len(request.reason) > 1024:
            raise InvalidArgumentError("reason", "is longer than 1024 characters")
        check_deadline(context)
        result = self.control.evict(who.caller, target, request.reason, by=who.name)
        if not target.tool_call_id and self.on_session_evicted is not None:
            self.on_session_evicted(target.session_id)
        return pb.EvictResponse(result=_control_pb(result))

    # ---- events -------------------------------------------------------------------

    def WatchNodeEvents(
        self, request: pb.WatchNodeEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchNodeEventsResponse]:
        """Every event numbered after the resume token (or from now on), in order; an
        OVERFLOW first when some of them are no longer kept."""
        try:
            watch = self.open_watch(request, context)
        except AgentdError as e:
            context.abort_with_status(to_status(e))
        try:
            while context.is_active() and not self.stopping.is_set():
                yield from self.watch_batch(watch, timeout=0.5)
        finally:
            self.close_watch(watch)

    def open_watch(self, request: pb.WatchNodeEventsRequest, context: Any) -> Watch:
        """Check the caller and the resume token and count the stream; raises
        AgentdError. Every opened watch is closed with `close_watch`."""
        who = self.principal(context)
        self.limiter.take(who.key)
        who.check_allowed("WatchNodeEvents")
        session_id = request.session_id
        if session_id:
            self.manager.get_session(who.caller, session_id)  # exists, and visible
        bus = self.manager.bus
        point = parse_token(request.resume_token)
        cursor = bus.last_seq
        other_boot = point is not None and point.boot_id != bus.boot_id
        if point is not None and not other_boot:
            if point.seq > bus.last_seq:
                raise InvalidArgumentError(
                    "resume_token", "is ahead of this daemon's events (a forged token?)"
                )
            cursor = point.seq
        elif other_boot:
            cursor = 0
        self._count_watch(who, +1)
        return Watch(who, session_id, cursor, restarted=other_boot)

    def close_watch(self, watch: Watch) -> None:
        self._count_watch(watch.who, -1)

    def watch_batch(self, watch: Watch, timeout: float) -> list[pb.WatchNodeEventsResponse]:
        """What the stream sends next: the events after its cursor it may see (waiting
        up to `timeout` for one to be published), after an OVERFLOW for any it can no
        longer get. Advances the cursor."""
        bus = self.manager.bus
        out: list[pb.WatchNodeEventsResponse] = []
        if watch.restarted:
            # Whatever followed the token in the previous run is unknown: say so once
            # (with what this run no longer keeps), then replay what it does keep.
            watch.restarted = False
            _, lost = bus.read_after(0, timeout=0, limit=1)
            restarted = overflow(bus.boot_id, lost, lost, "the daemon restarted since the token")
            out.append(pb.WatchNodeEventsResponse(event=restarted))
            watch.cursor = lost
        events, lost = bus.read_after(watch.cursor, timeout=timeout)
        if lost:
            watch.cursor += lost
            gone = overflow(
                bus.boot_id, watch.cursor, lost, "the token is older than the event buffer"
            )
            out.append(pb.WatchNodeEventsResponse(event=gone))
        for event in events:
            watch.cursor = event.seq
            if not watch.visible(event):
                continue
            response = self.response_of(event)
            if response is not None:
                out.append(response)
        return out

    def response_of(self, event: Event) -> pb.WatchNodeEventsResponse | None:
        """The stream message for `event`, built once for all streams (100 watchers
        would otherwise build 100 identical messages per event); None for kinds
        NodeService does not carry. Messages are never changed once built."""
        with self._responses_lock:
            if event.seq in self._responses:
                return self._responses[event.seq]
        msg = to_node_event(event, self.manager.bus.boot_id, self._tool_call_pb)
        response = None if msg is None else pb.WatchNodeEventsResponse(event=msg)
        with self._responses_lock:
            self._responses[event.seq] = response
            while len(self._responses) > RESPONSE_CACHE:
                del self._responses[next(iter(self._responses))]  # the oldest
        return response

    def _count_watch(self, who: Principal, delta: int) -> None:
        """Streams are bounded per transport and per local agent: on the unix socket
        each holds a server thread for its whole life, and watchers must never starve
        the unary calls; on TCP (coroutines) the bound caps memory and fan-out."""
        with self._watch_lock:
            if delta > 0:
                limit = getattr(self.watch_limits, who.transport)
                if self._watches_by_transport[who.transport] >= limit:
                    raise ResourceExhaustedError(
                        f"{limit} event streams are open over {who.transport} (the limit)"
                    )
                if who.role is Role.AGENT and self._watches.get(who.key, 0) >= (
                    MAX_WATCHES_PER_AGENT
                ):
                    raise ResourceExhaustedError(
                        f"{who.name} has {MAX_WATCHES_PER_AGENT} event streams open (the limit)"
                    )
            self._watches[who.key] = self._watches.get(who.key, 0) + delta
            self._watches_by_transport[who.transport] += delta
            if self._watches[who.key] <= 0:
                del self._watches[who.key]

    # ---- helpers ------------------------------------------------------------------

    def scoring_inputs(self) -> tuple[Room, float]:
        """What ScorePlacement scores against: the room left (live reservations
        counted) and the node's stall percent. A reader process (reader.py) answers
        with the daemon's published ones instead."""
        return self._room(self.reservations.live()), self._stall_percent()

    def node_state(self) -> pb.GetNodeStateResponse:
        """The node-wide state with tool calls, as a scheduler would get it: what the
        reader processes answer GetNodeState from (snapshot.py)."""
        request = pb.GetNodeStateRequest(include_tool_calls=True)
        return NodeService.GetNodeState.__wrapped__(self, NODE_WIDE_PRINCIPAL, request, None)

    def _allocated(self, reservations: list[Reservation]) -> Resources:
        budgets = total([s.budget for s in self.manager.list_sessions(_ALL)])
        reserved = total([r.resources for r in reservations])
        return Resources(
            memory_max=budgets.memory + reserved.memory,
            cpu=budgets.cpu + reserved.cpu,
            pids_max=budgets.pids + reserved.pids,
        )

    def _room(self, reservations: list[Reservation]) -> Room:
        allocated = total([s.budget for s in self.manager.list_sessions(_ALL)])
        reserved = total([r.resources for r in reservations])
        return Room.of(self.capacity, allocated, reserved, self.sampler.latest.cpu_cores)

    def _stall_percent(self) -> float:
        pressure = self.sampler.latest.pressure
        return max((pressure[r].some_avg10 for r in ("cpu", "memory") if r in pressure), default=0)

    def _predict_all(self, items: list[tuple[Any, Resources | None]], window: Any) -> list[Any]:
        """One prediction (or None) per (intent, budget): in one model call when the
        predictor takes a batch (PlacementPredictor.predict_many: one feature matrix,
        on `window`, the epoch's, when it says what it predicts from), else one call
        each."""
        if self.predictor is None or not items:
            return [None] * len(items)
        try:
            batch = getattr(self.predictor, "predict_many", None)
            if batch is not None:
                if window is None or window is UNCACHEABLE_WINDOW:
                    return list(batch(items))
                return list(batch(items, window))
            return [self.predictor(intent, budget) for intent, budget in items]
        except Exception:
            # A failing model must not fail placement: the scores go without it.
            log.exception("predictor.failed")
            return [None] * len(items)

    def _session_view(self, s: Session, with_tool_calls: bool, who: Principal) -> pb.SessionView:
        target = Target(s.id)
        view = pb.SessionView(
            session=convert.session_to_pb(
                s, self.manager.running_count(s.id), self.manager.backend.path_of(s.cgroup_rel)
            ),
            frozen=self.control.is_frozen(target),
            throttled=self.control.is_throttled(target),
        )
        with contextlib.suppress(CgroupError):  # closed meanwhile: no usage then
            view.usage.CopyFrom(convert.usage_to_pb(self.manager.session_usage(s)))
        if with_tool_calls:
            # Closed since the sessions were listed: shown as listed, with no tool calls
            # (they ended with it), not left out. The sessions are the state as of the
            # listing, whose close a watcher from the resume token gets as an event, and
            # the same with or without tool calls (readers strip them from one snapshot).
            with contextlib.suppress(NotFoundError):
                view.tool_calls.extend(
                    self._tool_call_pb(t)
                    for t in self.manager.list_tool_calls(who.caller, s.id, include_ended=False)
                )
        return view

    def _tool_call_pb(self, t: ToolCall) -> agent_pb2.ToolCall:
        return convert.tool_call_to_pb(t, self.manager.backend.path_of(t.cgroup_rel))

    def _audit(
        self,
        method: str,
        who: Principal | None,
        request: Any,
        outcome: str,
        result: Any = None,
    ) -> None:
        if self.audit is None or method not in AUDITED:
            return
        details: dict[str, Any] = {}
        control = getattr(result, "result", None)
        if isinstance(control, pb.ControlResult):
            details = {
                "changed": control.changed,
                "tool_calls_affected": control.tool_calls_affected,
            }
        elif isinstance(result, pb.AdmitResponse):
            details = {"reservation": result.reservation.id, "admitted": result.admitted}
            if result.reason:
                details["reason"] = result.reason
        if isinstance(request, pb.EvictRequest) and request.reason:
            details["evict_reason"] = request.reason
        self.audit.record(
            who.as_dict() if who else {"name": "unauthenticated"},
            method,
            _audit_target(request),
            outcome,
            **details,
        )


def _candidate(msg: pb.Candidate, prefix: str) -> tuple[str, Any, Resources | None]:
    if len(msg.id) > MAX_ID_LENGTH:
        raise InvalidArgumentError(f"{prefix}.id", f"is longer than {MAX_ID_LENGTH} characters")
    intent = convert.intent_from_pb(msg.intent, f"{prefix}.intent")
    budget = None
    if msg.HasField("session_budget"):
        budget = convert.resources_from_pb(msg.session_budget, f"{prefix}.session_budget")
    return msg.id, intent, budget


def _target(request: Any) -> Target:
    t = request.target
    if not t.session_id:
        raise InvalidArgumentError("target.session_id", "is required")
    if len(t.session_id) > MAX_ID_LENGTH or len(t.tool_call_id) > MAX_ID_LENGTH:
        raise InvalidArgumentError("target", f"ids are at most {MAX_ID_LENGTH} characters")
    return Target(session_id=t.session_id, tool_call_id=t.tool_call_id)


def _audit_target(request: Any) -> dict[str, str]:
    if isinstance(
        request, pb.ThrottleRequest | pb.FreezeRequest | pb.ResumeRequest | pb.EvictRequest
    ):
        return {
            "session_id": request.target.session_id,
            "tool_call_id": request.target.tool_call_id,
        }
    if isinstance(request, pb.AdmitRequest):
        return {"candidate_id": request.candidate.id}
    if isinstance(request, pb.ReleaseReservationRequest):
        return {"reservation_id": request.reservation_id}
    return {}


def _control_pb(result: ControlResult) -> pb.ControlResult:
    return pb.ControlResult(
        target=pb.Target(
            session_id=result.target.session_id, tool_call_id=result.target.tool_call_id
        ),
        action=result.action,
        changed=result.changed,
        tool_calls_affected=result.tool_calls_affected,
    )


def _resources_pb(r: Resources) -> agent_pb2.Resources:
    return convert.resources_to_pb(r)


def _pressure_pb(p: Pressure) -> pb.Pressure:
    return pb.Pressure(
        some_avg10=p.some_avg10,
        some_avg60=p.some_avg60,
        full_avg10=p.full_avg10,
        full_avg60=p.full_avg60,
    )


def _reservation_pb(r: Reservation) -> pb.Reservation:
    msg = pb.Reservation(
        id=r.id, candidate_id=r.candidate_id, reserved=convert.resources_to_pb(r.resources)
    )
    msg.expires_at.FromNanoseconds(int(r.expires_at * 1e9))
    return msg
