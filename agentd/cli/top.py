"""`agentctl top`: a live view of sessions and tool calls, refreshed in place.

Built on NodeService.GetNodeState over the local socket (one consistent read:
sessions with their own usage and frozen/throttled state, their tool calls, node
capacity, allocation and pressure), falling back to the AgentService listings
(ListSessions, ListToolCalls) on a daemon without NodeService. Either way it shows
what the caller may see (root: everything).
CPU% is the rate between two refreshes (100% = one core); the first frame, and
`--once`, show each tool call's average since it started instead, marked "avg".
Plain ANSI redraw (home + clear) rather than curses: it degrades to plain text when
piped and needs no terminal database.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any

from agentd.cli.agentctl import (
    EXIT_OK,
    _age,
    _daemon_errors,
    _shorten,
    connect,
    human_size,
    session_dict,
    table,
    tool_call_dict,
)

CLEAR = "\x1b[H\x1b[2J"
HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"
BOLD = "\x1b[1m"
RESET = "\x1b[0m"


@dataclass
class Snapshot:
    taken: float  # time.monotonic()
    now: float  # time.time()
    status: dict[str, Any]
    sessions: list[dict[str, Any]]
    tool_calls: list[dict[str, Any]]
    node: dict[str, Any] | None = None  # from NodeService.GetNodeState, when served


def _status(client: Any) -> dict[str, Any]:
    st = client.status()
    return {
        "version": st.version,
        "sessions_open": st.sessions_open,
        "tool_calls_running": st.tool_calls_running,
        "process_tracking": st.process_tracking,
        "cgroup_mode": st.cgroup_mode,
        "caller_uid": st.caller_uid,
    }


class NodeStateReader:
    """NodeService.GetNodeState over the local socket, as the calling uid: one
    consistent read of sessions (with their own cgroup usage, frozen, throttled),
    their tool calls, and node capacity, allocation, usage and pressure. A daemon
    without NodeService answers UNIMPLEMENTED: then `read` returns None for good and
    top uses the AgentService listings."""

    def __init__(self, socket_path: str) -> None:
        from agentd.sdk.node import LocalNodeClient

        self.client: Any = LocalNodeClient(socket_path)

    def read(self) -> Any:
        import grpc

        from agentd.sdk.errors import from_rpc_error
        from agentd.v1 import node_pb2

        if self.client is None:
            return None
        request = node_pb2.GetNodeStateRequest(include_tool_calls=True)
        try:
            return self.client.call("GetNodeState", request).state
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
                self.close()
                return None
            raise from_rpc_error(e) from None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def _pressure(p: Any) -> dict[str, float]:
    return {"some_avg10": p.some_avg10, "full_avg10": p.full_avg10}


def take_snapshot(client: Any, reader: NodeStateReader | None = None) -> Snapshot:
    from agentd.v1 import agent_pb2 as pb

    status = _status(client)
    state = reader.read() if reader is not None else None
    if state is None:
        sessions = [session_dict(s) for s in client.sessions()]
        request = pb.ListToolCallsRequest(include_ended=False)
        calls = client.call("ListToolCalls", request).tool_calls
        return Snapshot(
            time.monotonic(), time.time(), status, sessions, [tool_call_dict(t) for t in calls]
        )
    sessions, tool_calls = [], []
    for view in state.sessions:
        s = session_dict(view.session)
        s["state"] = "frozen" if view.frozen else "throttled" if view.throttled else "open"
        if view.HasField("usage"):
            s["usage"] = {
                "memory_bytes": view.usage.memory_bytes,
                "cpu_seconds": view.usage.cpu_user_seconds + view.usage.cpu_system_seconds,
                "processes_running": view.usage.processes_running,
            }
        sessions.append(s)
        for t in view.tool_calls:
            tool_call = tool_call_dict(t)
            if view.frozen:
                tool_call["state"] = "frozen"
            tool_calls.append(tool_call)
    node = {
        "name": state.node_name,
        "memory_capacity_bytes": state.capacity.memory_bytes,
        "cpus": state.capacity.cpus,
        "memory_allocated_bytes": int(state.allocated.memory_max or 0),
        "memory_used_bytes": state.usage.memory_bytes,
        "cpu_used_cores": state.usage.cpu_cores,
        "pressure": {
            "cpu": _pressure(state.cpu_pressure),
            "memory": _pressure(state.memory_pressure),
            "io": _pressure(state.io_pressure),
        },
    }
    return Snapshot(time.monotonic(), time.time(), status, sessions, tool_calls, node)


def _cpu_seconds(t: dict[str, Any]) -> float:
    u = t["usage"]
    return u["cpu_user_seconds"] + u["cpu_system_seconds"]


def with_cpu_rates(current: Snapshot, previous: Snapshot | None) -> Snapshot:
    """Each tool call gets "cpu_percent" and "cpu_basis" ("interval" or "average");
    each session gets its tool calls' memory, processes and CPU% summed."""
    before = {t["id"]: _cpu_seconds(t) for t in previous.tool_calls} if previous else {}
    interval = current.taken - previous.taken if previous else 0.0
    for t in current.tool_calls:
        if t["id"] in before and interval > 0:
            t["cpu_percent"] = 100.0 * max(_cpu_seconds(t) - before[t["id"]], 0.0) / interval
            t["cpu_basis"] = "interval"
        else:
            wall = t["usage"]["wall_seconds"]
            t["cpu_percent"] = 100.0 * _cpu_seconds(t) / wall if wall > 0 else 0.0
            t["cpu_basis"] = "average"
    by_session: dict[str, list[dict[str, Any]]] = {}
    for t in current.tool_calls:
        by_session.setdefault(t["session_id"], []).append(t)
    sessions_before = {
        s["id"]: s["usage"]["cpu_seconds"] for s in (previous.sessions if previous else [])
        if "usage" in s
    }  # fmt: skip
    for s in current.sessions:
        mine = by_session.get(s["id"], [])
        for t in mine:  # a tool call without a class of its own runs in its session's
            t["priority"] = t["priority"] or s["priority"]
        own = s.get("usage")
        if own is None:  # AgentService listings: the session is the sum of its tool calls
            s["memory_bytes"] = sum(t["usage"]["memory_bytes"] for t in mine)
            s["processes"] = sum(t["usage"]["processes_running"] for t in mine)
            s["cpu_percent"] = sum(t["cpu_percent"] for t in mine)
            continue
        s["memory_bytes"] = own["memory_bytes"]
        s["processes"] = own["processes_running"]
        if s["id"] in sessions_before and interval > 0:
            used = max(own["cpu_seconds"] - sessions_before[s["id"]], 0.0)
            s["cpu_percent"] = 100.0 * used / interval
        else:
            s["cpu_percent"] = sum(t["cpu_percent"] for t in mine)
    return current


def snapshot_dict(snap: Snapshot) -> dict[str, Any]:
    return {
        "time": snap.now,
        "daemon": snap.status,
        "node": snap.node,
        "sessions": snap.sessions,
        "tool_calls": snap.tool_calls,
    }


def render(snap: Snapshot, socket_path: str, width: int, bold: bool) -> str:
    st = snap.status
    on, off = (BOLD, RESET) if bold else ("", "")
    stamp = time.strftime("%H:%M:%S", time.localtime(snap.now))
    seen = "" if st["caller_uid"] == 0 else f" (uid {st['caller_uid']}'s)"
    lines = [
        f"{on}agentd {st['version']}{off} on {socket_path}  {stamp}  "
        f"cgroup {st['cgroup_mode']}, tracking {st['process_tracking'] or 'off'}",
        f"{_count(st['sessions_open'], 'session')}{seen}, "
        f"{_count(st['tool_calls_running'], 'tool call')} running",
    ]
    if snap.node is not None:
        n = snap.node
        psi = "  ".join(f"{r} {p['some_avg10']:.0f}%" for r, p in n["pressure"].items())
        lines.append(
            f"node {n['name']}: memory {human_size(n['memory_used_bytes'])} used, "
            f"{human_size(n['memory_allocated_bytes'])} allocated of "
            f"{human_size(n['memory_capacity_bytes'])}; cpu {n['cpu_used_cores']:.2f} of "
            f"{n['cpus']:g} cores; stall (some, 10s) {psi}"
        )
    lines.append("")
    sessions = sorted(snap.sessions, key=lambda s: (-s["memory_bytes"], s["id"]))
    if sessions:
        rows = [
            [
                s["id"],
                s.get("state", "open"),
                str(s["owner_uid"]),
                s["priority"] or "-",
                str(s["running_tool_calls"]),
                human_size(s["memory_bytes"]),
                human_size(s["budget"]["memory_max"]) if s["budget"]["memory_max"] else "-",
                f"{s['cpu_percent']:.0f}",
                str(s["processes"]),
                _age(s["created_at"], snap.now),
            ]
            for s in sessions
        ]
        headers = ["SESSION", "STATE", "UID", "PRIORITY", "RUNNING", "MEM", "BUDGET", "CPU%"]
        headers += ["PIDS", "AGE"]
        lines += _clip(table(headers, rows), width, on, off)
    else:
        lines.append("no open sessions")
    lines.append("")
    tool_calls = sorted(snap.tool_calls, key=lambda t: (-t["usage"]["memory_bytes"], t["id"]))
    if tool_calls:
        averaged = any(t["cpu_basis"] == "average" for t in tool_calls)
        rows = [
            [
                t["id"],
                t["session_id"],
                t["state"],
                t["priority"] or "-",
                human_size(t["usage"]["memory_bytes"]),
                human_size(t["usage"]["peak_memory_bytes"]),
                f"{t['cpu_percent']:.0f}" + ("*" if t["cpu_basis"] == "average" else ""),
                str(t["usage"]["processes_running"]),
                _age(t["started_at"], snap.now),
                _shorten(t["label"], 200),
            ]
            for t in tool_calls
        ]
        headers = ["TOOL CALL", "SESSION", "STATE", "PRIORITY", "MEM", "PEAK", "CPU%", "PIDS"]
        lines += _clip(table([*headers, "AGE", "COMMAND"], rows), width, on, off)
        if averaged:
            lines.append("* CPU% averaged since the tool call started")
    else:
        lines.append("no running tool calls")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _clip(text: str, width: int, on: str, off: str) -> list[str]:
    out = [line[:width] for line in text.splitlines()]
    out[0] = f"{on}{out[0]}{off}"
    return out


def cmd_top(args: argparse.Namespace) -> int:
    tty = sys.stdout.isatty() and not args.json
    previous: Snapshot | None = None
    with _daemon_errors(args.socket), connect(args.socket) as client:
        reader = NodeStateReader(args.socket)
        if tty and not args.once:
            sys.stdout.write(HIDE_CURSOR)
        try:
            while True:
                snap = with_cpu_rates(take_snapshot(client, reader), previous)
                previous = snap
                if args.json:
                    text = json.dumps(snapshot_dict(snap), indent=None if not args.once else 2)
                else:
                    width = shutil.get_terminal_size((160, 40)).columns if tty else 10_000
                    text = render(snap, args.socket, width, bold=tty)
                    if tty and not args.once:
                        text = CLEAR + text
                print(text, flush=True)
                if args.once:
                    return EXIT_OK
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return EXIT_OK
        finally:
            reader.close()
            if tty and not args.once:
                sys.stdout.write(SHOW_CURSOR)
                sys.stdout.flush()
