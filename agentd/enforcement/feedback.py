"""Enforcement records, the text an agent reads, and the event-stream payloads."""

from __future__ import annotations

import math
import time

from agentd.model import Enforcement


def _mb(n: int) -> str:
    """Whole MiB, rounded up, in the form intents accept ("700M"): for suggestions."""
    return f"{math.ceil(max(n, 0) / 2**20)}M"


def _fig(n: int) -> str:
    """A measured figure: MiB with one decimal, so that 4 KiB over 128M reads 128.0M."""
    return f"{max(n, 0) / 2**20:.1f}M"


def _bound(limit: int, intent: int) -> str:
    return f"intent {_mb(limit)}" if limit == intent or not intent else f"limit {_mb(limit)}"


def memory_stopped(
    value: int, limit: int, pid: int, comm: str, argv: tuple[str, ...], intent: int = 0
) -> Enforcement:
    return Enforcement(
        action="stopped", limit="memory", limit_value=limit, value=value, unit="bytes",
        pid=pid, comm=comm, argv=argv, time=time.time(),
        suggestion=(
            f"memory {_fig(value)} over {_bound(limit, intent)}: stopped while agentd decides"
        ),
    )  # fmt: skip


def memory_resumed(
    value: int,
    old_limit: int,
    new_limit: int,
    pid: int,
    comm: str,
    argv: tuple[str, ...],
    intent: int = 0,
) -> Enforcement:
    return Enforcement(
        action="resumed", limit="memory", limit_value=new_limit, value=value, unit="bytes",
        pid=pid, comm=comm, argv=argv, time=time.time(),
        suggestion=(
            f"memory {_fig(value)} over {_bound(old_limit, intent)}: resumed with {_mb(new_limit)} "
            f"from the session's budget; declare intent.memory_max={_mb(new_limit)} next time"
        ),
    )  # fmt: skip


def memory_killed(
    limit_name: str,
    value: int,
    limit: int,
    suggested: int,
    session_used: int,
    session_budget: int,
    pid: int,
    comm: str,
    argv: tuple[str, ...],
    intent: int = 0,
) -> Enforcement:
    if limit_name == "session_memory":
        text = (
            f"session memory {_fig(session_used)} over its budget {_mb(session_budget)} "
            f"(this tool call {_fig(value)}): run fewer tool calls at once or open the "
            f"session with a larger budget.memory_max"
        )
        limit_value, shown = session_budget, session_used
    else:
        text = (
            f"memory {_fig(value)} over {_bound(limit, intent)} and the session had no room "
            f"({_fig(session_used)} of {_mb(session_budget)} in use): raise intent.memory_max "
            f"to {_mb(suggested)}, or use fewer parallel workers"
        )
        limit_value, shown = limit, value
    return Enforcement(
        action="killed", limit=limit_name, limit_value=limit_value, value=shown, unit="bytes",
        pid=pid, comm=comm, argv=argv, time=time.time(), suggestion=text,
    )  # fmt: skip


def node_paused(
    node_used: int, node_budget: int, pid: int, comm: str, argv: tuple[str, ...]
) -> Enforcement:
    return Enforcement(
        action="stopped", limit="node_memory", limit_value=node_budget, value=node_used,
        unit="bytes", pid=pid, comm=comm, argv=argv, time=time.time(),
        suggestion=(
            f"node memory {_fig(node_used)} over {_mb(node_budget)}, the bound for work "
            "below interactive priority: paused until there is room; nothing to do, or "
            "run it when the node is less busy"
        ),
    )  # fmt: skip


def node_resumed(
    node_used: int, node_budget: int, pid: int, comm: str, argv: tuple[str, ...]
) -> Enforcement:
    return Enforcement(
        action="resumed", limit="node_memory", limit_value=node_budget, value=node_used,
        unit="bytes", pid=pid, comm=comm, argv=argv, time=time.time(),
        suggestion=f"node memory {_fig(node_used)} of {_mb(node_budget)}: resumed",
    )  # fmt: skip


def node_killed(
    node_used: int, node_limit: int, held: int, pid: int, comm: str, argv: tuple[str, ...]
) -> Enforcement:
    return Enforcement(
        action="killed", limit="node_memory", limit_value=node_limit, value=node_used,
        unit="bytes", pid=pid, comm=comm, argv=argv, time=time.time(),
        suggestion=(
            f"node memory {_fig(node_used)} of {_mb(node_limit)}: every tool call was "
            f"stopped waiting for room and none could go on without the node's OOM killer; "
            f"this one held least ({_fig(held)}) and was killed: run it again when the node "
            "is less busy"
        ),
    )  # fmt: skip


def memory_reported(
    value: int, limit: int, pid: int, comm: str, argv: tuple[str, ...]
) -> Enforcement:
    return Enforcement(
        action="reported", limit="memory", limit_value=limit, value=value, unit="bytes",
        pid=pid, comm=comm, argv=argv, time=time.time(),
        suggestion=f"memory {_fig(value)} over intent {_mb(limit)}: raise intent.memory_max",
    )  # fmt: skip


def fork_killed(
    limit_name: str, value: int, limit: int, pid: int, comm: str, argv: tuple[str, ...]
) -> Enforcement:
    if limit_name == "fork_rate":
        text = (
            f"fork rate {value}/s over {limit}/s: the tool call was killed as a fork bomb; "
            "use fewer parallel workers (e.g. pytest -n 2, make -j2) or spawn them gradually"
        )
        unit = "forks/s"
    elif limit_name == "pids_max":
        text = (
            f"reached its pids_max of {limit} ({value} forks refused): the tool call was "
            "killed as a fork loop; use fewer parallel workers or declare a larger "
            "intent.pids_max"
        )
        unit = "forks refused"
    else:
        text = (
            f"{value} processes over {limit}: the tool call was killed; use fewer parallel "
            "workers or declare a larger intent.pids_max"
        )
        unit = "processes"
    return Enforcement(
        action="killed", limit=limit_name, limit_value=limit, value=value, unit=unit,
        pid=pid, comm=comm, argv=argv, time=time.time(), suggestion=text,
    )  # fmt: skip


def oom_killed(
    value: int, limit: int, suggested: int, pid: int, comm: str, argv: tuple[str, ...]
) -> Enforcement:
    what = f"{comm or 'process'} (pid {pid})"
    if limit:
        text = (
            f"the kernel OOM-killed {what} at {_fig(value)} with a limit of {_mb(limit)}: "
            f"raise intent.memory_max to {_mb(suggested)}"
        )
    else:
        text = f"the kernel OOM-killed {what} at {_fig(value)}: declare intent.memory_max"
    return Enforcement(
        action="oom_killed", limit="oom", limit_value=limit, value=value, unit="bytes",
        pid=pid, comm=comm, argv=argv, time=time.time(), suggestion=text,
    )  # fmt: skip


def event_details(e: Enforcement) -> dict[str, str]:
    """The payload of a "guard_action" / "oom_kill" event: every field as text."""
    return {
        "action": e.action,
        "limit": e.limit,
        "limit_value": str(e.limit_value),
        "value": str(e.value),
        "unit": e.unit,
        "pid": str(e.pid),
        "comm": e.comm,
        "argv": " ".join(e.argv),
        "suggestion": e.suggestion,
    }
