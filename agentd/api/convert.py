"""Translation between the wire (agentd.v1 messages) and the domain model.

Parsing of user-typed amounts happens here, so an unparseable value is refused
with the exact field path of the request.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from agentd.errors import InvalidArgumentError
from agentd.model import (
    Enforcement,
    ExitStatus,
    Intent,
    Priority,
    Resources,
    Session,
    ToolCall,
    Usage,
)
from agentd.tracking.events import ProcEvent
from agentd.units import UnitError, parse_cpu, parse_size
from agentd.v1 import agent_pb2 as pb


def _size(text: str, field: str) -> int | None:
    if not text:
        return None
    try:
        value = parse_size(text)
    except UnitError as e:
        raise InvalidArgumentError(field, str(e)) from None
    if value == 0:
        raise InvalidArgumentError(field, "must be more than 0 bytes (leave it empty for no limit)")
    return value


def resources_from_pb(msg: pb.Resources, prefix: str) -> Resources:
    cpu = None
    if msg.cpu:
        try:
            cpu = parse_cpu(msg.cpu)
        except UnitError as e:
            raise InvalidArgumentError(f"{prefix}.cpu", str(e)) from None
    if msg.pids_max < 0:
        raise InvalidArgumentError(f"{prefix}.pids_max", f"{msg.pids_max} is negative")
    return Resources(
        memory_max=_size(msg.memory_max, f"{prefix}.memory_max"),
        memory_high=_size(msg.memory_high, f"{prefix}.memory_high"),
        memory_low=_size(msg.memory_low, f"{prefix}.memory_low"),
        cpu=cpu,
        pids_max=msg.pids_max or None,
    )


def resources_to_pb(r: Resources) -> pb.Resources:
    return pb.Resources(
        memory_max=str(r.memory_max) if r.memory_max else "",
        memory_high=str(r.memory_high) if r.memory_high else "",
        memory_low=str(r.memory_low) if r.memory_low else "",
        cpu=f"{r.cpu:g}" if r.cpu else "",
        pids_max=r.pids_max or 0,
    )


def priority_from_pb(value: int, field: str) -> Priority | None:
    if value == pb.PRIORITY_CLASS_UNSPECIFIED:
        return None
    try:
        return Priority(value)
    except ValueError:
        raise InvalidArgumentError(field, f"{value} is not a priority class") from None


def intent_from_pb(msg: pb.Intent, prefix: str = "intent") -> Intent:
    expected = None
    if msg.HasField("expected_duration"):
        # Not ToTimedelta(): it overflows (an uncaught error) on out-of-range seconds.
        d = msg.expected_duration
        expected = d.seconds + d.nanos / 1e9
        if expected < 0:
            raise InvalidArgumentError(f"{prefix}.expected_duration", "is negative")
    if len(msg.label) > 4096:
        raise InvalidArgumentError(f"{prefix}.label", "is longer than 4096 characters")
    return Intent(
        resources=resources_from_pb(msg.resources, f"{prefix}.resources"),
        expected_duration_seconds=expected,
        priority=priority_from_pb(msg.priority, f"{prefix}.priority"),
        label=msg.label,
    )


def intent_to_pb(intent: Intent) -> pb.Intent:
    msg = pb.Intent(
        resources=resources_to_pb(intent.resources),
        priority=int(intent.priority) if intent.priority else 0,
        label=intent.label,
    )
    if intent.expected_duration_seconds is not None:
        msg.expected_duration.CopyFrom(_duration(intent.expected_duration_seconds))
    return msg


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def session_to_pb(s: Session, running: int, cgroup: str) -> pb.Session:
    return pb.Session(
        id=s.id,
        owner_uid=s.owner_uid,
        budget=resources_to_pb(s.budget),
        priority=int(s.priority),
        state=pb.SESSION_STATE_OPEN if s.open else pb.SESSION_STATE_CLOSED,
        created_at=_timestamp(s.created_at),
        closed_at=_timestamp(s.closed_at),
        running_tool_calls=running,
        tool_calls_total=s.tool_calls_total,
        cgroup=cgroup,
    )


def exit_from_pb(msg: pb.ExitStatus) -> ExitStatus:
    if msg.signal < 0 or msg.signal > 64:
        raise InvalidArgumentError("exit.signal", f"{msg.signal} is not a signal number")
    return ExitStatus(known=msg.known, exit_code=msg.exit_code, signal=msg.signal)


def usage_to_pb(u: Usage) -> pb.Usage:
    return pb.Usage(
        wall_seconds=u.wall_seconds,
        cpu_user_seconds=u.cpu_user_seconds,
        cpu_system_seconds=u.cpu_system_seconds,
        peak_memory_bytes=u.peak_memory_bytes,
        memory_bytes=u.memory_bytes,
        oom_kills=u.oom_kills,
        cpu_throttled_seconds=u.cpu_throttled_seconds,
        cpu_throttled_periods=u.cpu_throttled_periods,
        processes=u.processes,
        processes_running=u.processes_running,
    )


def _tool_call_state(t: ToolCall) -> int:
    if not t.running:
        return pb.TOOL_CALL_STATE_ENDED
    return pb.TOOL_CALL_STATE_WAITING if t.waiting else pb.TOOL_CALL_STATE_RUNNING


def tool_call_to_pb(
    t: ToolCall, cgroup: str, usage_paths: dict[str, str] | None = None
) -> pb.ToolCall:
    return pb.ToolCall(
        id=t.id,
        session_id=t.session_id,
        owner_uid=t.owner_uid,
        intent=intent_to_pb(t.intent),
        limits=resources_to_pb(t.limits),
        state=_tool_call_state(t),
        started_at=_timestamp(t.started_at),
        ended_at=_timestamp(t.ended_at),
        exit=pb.ExitStatus(known=t.exit.known, exit_code=t.exit.exit_code, signal=t.exit.signal),
        usage=usage_to_pb(t.usage),
        oom_killed=t.oom_killed,
        leftover_processes_killed=t.leftover_processes_killed,
        cgroup=cgroup,
        launcher_pid=t.launcher_pid,
        enforcements=[enforcement_to_pb(e) for e in t.enforcements],
        usage_paths=usage_paths or {},
    )


def enforcement_to_pb(e: Enforcement) -> pb.Enforcement:
    return pb.Enforcement(
        action=e.action,
        limit=e.limit,
        limit_value=max(e.limit_value, 0),
        value=max(e.value, 0),
        unit=e.unit,
        pid=e.pid,
        comm=e.comm,
        argv=list(e.argv),
        suggestion=e.suggestion,
        time=_timestamp(e.time),
    )


def process_tree_to_pb(snapshot: dict[str, Any]) -> pb.ProcessTree:
    """From Tracker.snapshot() (the JSON shape of `agentctl tree --json`)."""
    processes = []
    for node in snapshot["processes"]:
        info = pb.ProcessInfo(
            pid=node["pid"],
            ppid=node["ppid"] or 0,
            argv=node["argv"] or [],
            argv_known=node["argv"] is not None,
            exe=node["exe"] or "",
            comm=node["comm"] or "",
            exited=node["end_time"] is not None,
            exit_code_known=node["exit_code"] is not None,
            exit_code=node["exit_code"] or 0,
            signal=node["signal"] or 0,
            start_ns=node["start_ns"] or 0,
            seeded=bool(node["seeded"]),
            usage_known=node.get("cpu_seconds") is not None,
            cpu_seconds=node.get("cpu_seconds") or 0.0,
            peak_rss_bytes=node.get("peak_rss_bytes") or 0,
        )
        if node["start_time"] is not None:
            info.start_time.CopyFrom(_timestamp(node["start_time"]))
        if node["end_time"] is not None:
            info.end_time.CopyFrom(_timestamp(node["end_time"]))
        processes.append(info)
    return pb.ProcessTree(
        tool_call_id=snapshot["tool_call_id"],
        source=snapshot["source"],
        lost_events=snapshot["lost_events"],
        loss_exact=snapshot["loss_exact"],
        processes=processes,
        dropped_processes=snapshot["dropped_processes"],
        unmatched_events=snapshot["unmatched_events"],
    )


def process_event_to_pb(event: ProcEvent) -> pb.ProcessEvent:
    return pb.ProcessEvent(
        kind=int(event.kind),
        pid=event.pid,
        ppid=event.ppid,
        argv=list(event.argv or ()),
        exe=event.exe or "",
        exit_code_known=event.exit_code is not None,
        exit_code=event.exit_code or 0,
        signal=event.signal or 0,
    )
