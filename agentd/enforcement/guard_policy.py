"""What the daemon does when a tool call's memory guard tripped: a pure function of
the figures, so that every branch is tested without a kernel.

The kernel has already stopped the process whose allocation crossed (or only reported
it, by configuration). The daemon then, in order of preference:
  GRANT  raise the tool call's limit, if its session has room for it: the work goes on;
  WAIT   keep it stopped while the session has no room, for a bounded time, in case a
         sibling tool call ends or shrinks;
  KILL   end the tool call, telling the agent why and what to ask for next time.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class Verdict(enum.Enum):
    GRANT = "grant"
    WAIT = "wait"
    KILL = "kill"


@dataclass(frozen=True)
class PolicySettings:
    #: a grant raises the limit to the current figure plus this fraction of it (and at
    #: least to the old limit plus this fraction), so that the next step of a growing
    #: process does not trip again at once
    grant_step: float = 0.25
    #: a grant smaller than this fraction of the current figure is not worth it: the
    #: process would trip again within milliseconds
    min_grant: float = 0.05
    #: how long a stopped tool call may wait for room before it is killed
    wait_seconds: float = 10.0


@dataclass(frozen=True)
class MemoryCrossing:
    value: int  # the tool call's memory now (bytes)
    limit: int  # its limit (bytes; 0 = none)
    session_used: int  # the session's memory now, this tool call included
    session_budget: int  # the session's budget (bytes; 0 = none)
    waited_seconds: float = 0.0  # since it was stopped


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    new_limit: int = 0  # GRANT: the tool call's new limit (bytes)
    room: int = 0  # what the session could still give (bytes; -1 = unbounded)


def decide_memory(c: MemoryCrossing, settings: PolicySettings) -> Decision:
    wanted = max(
        math.ceil(c.value * (1 + settings.grant_step)),
        math.ceil(c.limit * (1 + settings.grant_step)),
    )
    if c.session_budget <= 0:
        return Decision(Verdict.GRANT, new_limit=wanted, room=-1)
    others = max(c.session_used - c.value, 0)
    room = c.session_budget - others  # what this tool call may hold in all
    grant = min(wanted, room)
    if grant - c.value >= max(math.ceil(c.value * settings.min_grant), 1):
        # Never lowered: a session-budget trip under its own limit resumes with the
        # limit it had (the session's sum is what stops it next time).
        return Decision(Verdict.GRANT, new_limit=max(grant, c.limit), room=room - c.value)
    if c.waited_seconds >= settings.wait_seconds:
        return Decision(Verdict.KILL, room=room - c.value)
    return Decision(Verdict.WAIT, room=room - c.value)


def suggested_memory(peak: int, settings: PolicySettings) -> int:
    """An intent.memory_max that would have held `peak` with the grant step's margin."""
    return math.ceil(peak * (1 + settings.grant_step))


def deadlocked(waiting_since: dict[str, float], session_tool_calls: int) -> str | None:
    """When every guarded tool call of a session is stopped waiting for room, none of them
    will ever free any: waiting is pointless. The one that stopped last (whose growth
    filled the session) is given up at once; the others then get its room. Returns its
    id, or None while some tool call of the session still runs."""
    if not waiting_since or len(waiting_since) < session_tool_calls:
        return None
    return max(waiting_since, key=lambda k: waiting_since[k])
