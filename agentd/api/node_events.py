"""EventBus events as NodeEvents, and the resume token.

The token is `<boot id>.<sequence number>` (events.py numbers every event of one
daemon run). It is opaque to clients; it is parsed here only to find where to
resume, and a token of another daemon run is recognised as such.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from agentd.errors import InvalidArgumentError
from agentd.events import Event
from agentd.model import ToolCall
from agentd.v1 import agent_pb2
from agentd.v1 import node_pb2 as pb

KINDS: dict[str, int] = {
    "tool_call_begun": pb.NODE_EVENT_KIND_TOOL_CALL_STARTED,
    "tool_call_ended": pb.NODE_EVENT_KIND_TOOL_CALL_ENDED,
    "oom_kill": pb.NODE_EVENT_KIND_OOM_KILL,
    "guard_action": pb.NODE_EVENT_KIND_GUARD_ACTION,
    "throttled": pb.NODE_EVENT_KIND_THROTTLED,
    "frozen": pb.NODE_EVENT_KIND_FROZEN,
    "resumed": pb.NODE_EVENT_KIND_RESUMED,
    "evicted": pb.NODE_EVENT_KIND_EVICTED,
    "pressure": pb.NODE_EVENT_KIND_PRESSURE,
    "session_opened": pb.NODE_EVENT_KIND_SESSION_OPENED,
    "session_closed": pb.NODE_EVENT_KIND_SESSION_CLOSED,
}

_TOKEN = re.compile(r"^([0-9a-f]{16})\.([0-9]{1,19})$")


@dataclass(frozen=True)
class ResumePoint:
    boot_id: str
    seq: int


def token(boot_id: str, seq: int) -> str:
    return f"{boot_id}.{seq}"


def parse_token(text: str) -> ResumePoint | None:
    """None for an empty token (start with new events)."""
    if not text:
        return None
    match = _TOKEN.match(text)
    if match is None:
        raise InvalidArgumentError(
            "resume_token", "is not a token this daemon gave (use a NodeEvent's resume_token)"
        )
    return ResumePoint(match.group(1), int(match.group(2)))


def to_node_event(
    event: Event, boot_id: str, tool_call_pb: Callable[[ToolCall], agent_pb2.ToolCall]
) -> pb.NodeEvent | None:
    """The NodeEvent for `event`, or None for kinds NodeService does not carry
    (per-process events: AgentService.Watch has those)."""
    kind = KINDS.get(event.kind)
    if kind is None:
        return None
    msg = pb.NodeEvent(
        resume_token=token(boot_id, event.seq),
        kind=kind,  # type: ignore[arg-type]
        session_id=event.session_id,
        tool_call_id=event.tool_call_id,
    )
    msg.time.FromNanoseconds(int(event.time * 1e9))
    if isinstance(event.payload, ToolCall):
        msg.tool_call.CopyFrom(tool_call_pb(event.payload))
    elif isinstance(event.payload, dict):
        msg.details.update({str(k): str(v) for k, v in event.payload.items()})
    return msg


def overflow(boot_id: str, last_lost: int, lost: int, reason: str) -> pb.NodeEvent:
    """Sent first when events between the client's token and the buffer are gone; its
    token is that of the last lost event, so resuming from it loses nothing more."""
    msg = pb.NodeEvent(
        resume_token=token(boot_id, last_lost),
        kind=pb.NODE_EVENT_KIND_OVERFLOW,
        lost=lost,
        details={"reason": reason},
    )
    msg.time.GetCurrentTime()
    return msg
