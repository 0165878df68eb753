"""agentctl: the command-line client of agentd.

    agentctl status
    agentctl sessions
    agentctl run --session fix-bug-42 --memory 1G --timeout 600 -- pytest -x
    agentctl tool-calls --session fix-bug-42 --all --json

`main(argv)` returns the exit status instead of exiting, so that tests and other
Python programs can call it directly; the console script passes it to sys.exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from agentd.units import UnitError, parse_cpu, parse_size

if TYPE_CHECKING:
    from agentd.sdk.client import Client, Session, ToolCallProcess
    from agentd.sdk.errors import AgentdError

FALLBACK_SOCKET = "/run/agentd/agentd.sock"

EXIT_OK = 0
EXIT_DAEMON_ERROR = 1
EXIT_USAGE = 2
# `run` gives its exit status to the command, so its own failures use the codes
# that env(1), timeout(1) and `docker run` use for the same situations.
EXIT_TIMEOUT = 124
EXIT_RUN_FAILED = 125
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127

# Signals that end `run` early. Each kills the whole tool call and still reports.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

PRIORITY_NAMES = ("interactive", "normal", "batch")

RUN_EPILOG = """\
exit status:
  the command's own exit status; 128+N when it was killed by signal N
  124  --timeout expired: every process of the tool call was killed
  125  agentctl or agentd failed before the command started (daemon unreachable,
       session or limits refused, ...); nothing ran
  126  the command was found but could not be executed (permission denied, ...)
  127  the command was not found
  128+N  agentctl received signal N (Ctrl-C: 130): the whole tool call was killed
  2    invalid agentctl arguments (checked before contacting the daemon)

The session is created with the daemon's default budget if it is not open yet.
--memory, --cpu, ... limit this tool call within the session's budget.
stdin, stdout and stderr are the command's own (agentctl captures nothing).
With --summary-json, the usage is written as one JSON object once the command
has ended, also after a timeout or Ctrl-C.
"""


class CliError(Exception):
    """A failure to report as one `agentctl: <message>` line, with its exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class _ParserExit(Exception):
    """argparse wanted to exit (after --help, --version): main() returns instead."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of calling sys.exit, and reports usage
    errors on one line like every other agentctl error."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see '{self.prog} --help')", EXIT_USAGE)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _ParserExit(status)


# ---- argument types: validated here for a precise message, parsed again by agentd ----


def size_arg(text: str) -> str:
    """A size such as 512M, 2G, 1.5GiB or plain bytes; returned as typed."""
    try:
        value = parse_size(text)
    except UnitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is 0 bytes; omit the option for no limit")
    return text


def cpu_arg(text: str) -> str:
    """Cores as a decimal (0.5, 2) or millicores (500m); returned as typed."""
    try:
        parse_cpu(text)
    except UnitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def positive_int_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


# ---- parsing ---------------------------------------------------------------------


def default_socket() -> str:
    # Read at call time, not import time, so a changed environment (tests, wrappers)
    # is honoured.
    return os.environ.get("AGENTD_SOCKET") or FALLBACK_SOCKET


def build_parser() -> _Parser:
    parser = _Parser(
        prog="agentctl",
        description="Inspect agentd and run commands as tool calls in their own cgroups.",
    )
    parser.add_argument("--version", action="version", version=f"agentctl {_version()}")
    socket_help = "agentd's socket (default: $AGENTD_SOCKET, else /run/agentd/agentd.sock)"
    parser.add_argument("--socket", metavar="PATH", default=None, help=socket_help)
    # Every subcommand accepts --socket too; SUPPRESS keeps a value given before the
    # subcommand from being overwritten by the subparser's default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS, help=socket_help)
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print machine-readable JSON")

    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "status",
        parents=[common, json_flag],
        help="the daemon's cgroup setup, capabilities and counts",
        description="Show the daemon's cgroup mode, backend, root, controllers, "
        "capabilities, open sessions and running tool calls.",
    )
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser(
        "sessions",
        parents=[common, json_flag],
        help="list open sessions",
        description="List the open sessions visible to you (root sees all).",
    )
    p.set_defaults(handler=cmd_sessions)

    p = sub.add_parser(
        "close",
        parents=[common],
        help="close a session, killing its running tool calls",
        description="Close SESSION: every running tool call of it is killed and its "
        "cgroups are removed.",
    )
    p.add_argument("session", metavar="SESSION")
    p.set_defaults(handler=cmd_close)

    p = sub.add_parser(
        "tool-calls",
        parents=[common, json_flag],
        help="list running (or all) tool calls",
        description="List running tool calls with their live usage; --all adds ended ones.",
    )
    p.add_argument("--session", metavar="SESSION", help="only this session's tool calls")
    p.add_argument("--all", action="store_true", help="include tool calls that have ended")
    p.set_defaults(handler=cmd_tool_calls)

    p = sub.add_parser(
        "tree",
        parents=[common, json_flag],
        help="the process tree of a tool call",
        description="Every process the tool call started: pid, parent, argv, exit status, "
        "and where the events came from (ebpf, netlink or procfs) with what was lost.",
    )
    p.add_argument("tool_call", metavar="TOOL_CALL_ID")
    p.set_defaults(handler=cmd_tree)

    p = sub.add_parser(
        "watch",
        parents=[common, json_flag],
        help="stream process and tool-call events",
        description="Print events as they happen until interrupted (Ctrl-C); --json prints "
        "one JSON object per line.",
    )
    p.add_argument("--session", metavar="SESSION", help="only this session's events")
    p.set_defaults(handler=cmd_watch)

    p = sub.add_parser(
        "run",
        parents=[common],
        usage="agentctl run --session SESSION [options] -- CMD [ARGS...]",
        help="run a command as a tool call",
        description="Run CMD as a tool call of SESSION, in its own cgroup, and exit with "
        "its exit status.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--session", metavar="SESSION", required=True, help="session name")
    p.add_argument("--memory", type=size_arg, metavar="SIZE", help="hard limit, e.g. 256M, 2G")
    p.add_argument(
        "--memory-high", type=size_arg, metavar="SIZE", help="throttle threshold, e.g. 200M"
    )
    p.add_argument("--cpu", type=cpu_arg, metavar="CORES", help="CPU cores, e.g. 0.5 or 500m")
    p.add_argument("--pids", type=positive_int_arg, metavar="N", help="maximum live tasks")
    p.add_argument("--priority", choices=PRIORITY_NAMES, help="priority class")
    p.add_argument(
        "--timeout",
        type=seconds_arg,
        metavar="SECONDS",
        help="kill the whole tool call after SECONDS (exit status 124)",
    )
    p.add_argument(
        "--summary-json",
        metavar="FILE",
        help="write the usage as one JSON object to FILE ('-': stdout) when done",
    )
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser(
        "top",
        parents=[common, json_flag],
        help="live view of sessions and tool calls",
        description="Sessions and running tool calls with memory, CPU%%, pids, state, "
        "priority and age, refreshed in place until Ctrl-C. --json prints one JSON "
        "object per refresh.",
    )
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument(
        "--interval", type=seconds_arg, default=1.0, metavar="SECONDS", help="refresh period"
    )
    p.set_defaults(handler=cmd_top)

    p = sub.add_parser(
        "predict",
        parents=[common, json_flag],
        help="predicted slowdown of a tool call placed here now",
        description="Ask NodeService.ScorePlacement how much slower a tool call with this "
        "label (and memory, cpu) would run on this node now than alone: predicted_slowdown, "
        "its interval low..high, and the model that answered (docs/predictor.md).",
    )
    p.add_argument("--label", required=True, help="the tool call's label, e.g. 'pytest'")
    p.add_argument("--memory", type=size_arg, metavar="SIZE", help="memory, e.g. 1G")
    p.add_argument("--cpu", type=cpu_arg, metavar="CORES", help="CPU cores, e.g. 1 or 500m")
    p.set_defaults(handler=cmd_predict)

    from agentd.cli import certs

    certs.add_parser(sub)
    return parser


def _subcommand_of(argv: Sequence[str]) -> str | None:
    """The subcommand word, skipping agentctl's own options that come before it."""
    skip_value = False
    for word in argv:
        if skip_value:
            skip_value = False
        elif word == "--socket":
            skip_value = True
        elif not word.startswith("-"):
            return word
        elif word == "--":
            return None
    return None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse argv; raises CliError (exit status 2) on a usage error.

    `run` takes its command after the first `--` verbatim: argparse would otherwise
    read the command's own options (`ls -l`) as agentctl's.
    """
    argv = list(argv)
    parser = build_parser()
    if _subcommand_of(argv) != "run":
        args = parser.parse_args(argv)
        args.command = None
    else:
        command: list[str] | None = None
        head = argv
        if "--" in argv:
            cut = argv.index("--")
            head, command = argv[:cut], argv[cut + 1 :]
        args, extra = parser.parse_known_args(head)
        usage = "agentctl run --session S [options] -- CMD ARGS..."
        if command is None and extra:
            raise CliError(
                f"run: the command goes after '--': {usage} (got {' '.join(extra)!r})",
                EXIT_USAGE,
            )
        if extra:
            raise CliError(
                f"run: unexpected {' '.join(extra)!r} before '--' (usage: {usage})", EXIT_USAGE
            )
        if not command:
            where = " after '--'" if command is not None else "; put it after '--'"
            raise CliError(f"run: no command{where} (usage: {usage})", EXIT_USAGE)
        args.command = command
        _check_summary_target(args.summary_json)
    if args.socket is None:
        args.socket = default_socket()
    return args


def _check_summary_target(path: str | None) -> None:
    """Refuse an unwritable --summary-json before the command runs, not after."""
    if path is None or path == "-":
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CliError(f"argument --summary-json: directory {directory} does not exist", EXIT_USAGE)
    if os.path.isdir(path):
        raise CliError(f"argument --summary-json: {path} is a directory", EXIT_USAGE)


# ---- exit status mapping ------------------------------------------------------


def exit_status_of(returncode: int) -> int:
    """The shell's view of a subprocess returncode: -N (killed by signal N) -> 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def exec_failure_status(error: OSError, program: str) -> int:
    """126 or 127 for a command that could not be started, as a shell would answer.

    A FileNotFoundError about something other than the program (agentd's launcher
    missing from the installation) is agentctl's own failure: 125.
    """
    if isinstance(error, FileNotFoundError):
        return EXIT_NOT_FOUND if error.filename == program else EXIT_RUN_FAILED
    return EXIT_NOT_EXECUTABLE


def daemon_error_message(error: AgentdError, socket_path: str) -> str:
    """One readable line for an SDK error: the field for InvalidArgument, the socket
    path when the daemon could not be reached."""
    from agentd.sdk.errors import DaemonUnavailable, InvalidArgument

    message = error.message
    if isinstance(error, InvalidArgument) and error.field and error.field not in message:
        message = f"{error.field}: {message}"
    if isinstance(error, DaemonUnavailable) and socket_path not in message:
        message = f"agentd at {socket_path}: {message}"
    if isinstance(error, DaemonUnavailable) and error.code is None and "running?" not in message:
        # No status code: the SDK could not reach the daemon at all (not a refusal
        # the daemon sent as UNAVAILABLE, e.g. cgroupfs trouble).
        message += " (is agentd running? --socket or AGENTD_SOCKET select another socket)"
    return message


def daemon_error_status(error: AgentdError) -> int:
    """Exit status of a non-`run` subcommand the daemon refused or could not serve."""
    from agentd.sdk.errors import InvalidArgument

    return EXIT_USAGE if isinstance(error, InvalidArgument) else EXIT_DAEMON_ERROR


# ---- output helpers ---------------------------------------------------------------


def human_size(num_bytes: int | None) -> str:
    """100B, 900K, 3.4M, 1.5G: the largest unit that fits, one decimal unless exact."""
    if num_bytes is None:
        return "-"
    for suffix, power in (("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        unit = 1024**power
        if num_bytes >= unit:
            if num_bytes % unit == 0:
                return f"{num_bytes // unit}{suffix}"
            return f"{num_bytes / unit:.1f}{suffix}"
    return f"{num_bytes}B"


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*cells, str(row[-1])]).rstrip())
    return "\n".join(lines)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def _timestamp(ts: Any, present: bool) -> str | None:
    if not present:
        return None
    return ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _int_or_none(text: str) -> int | None:
    return int(text) if text else None


def _resources_dict(r: Any) -> dict[str, Any]:
    """Normalized resources as JSON values: bytes as ints, cores as a float, unset None."""
    return {
        "memory_max": _int_or_none(r.memory_max),
        "memory_high": _int_or_none(r.memory_high),
        "memory_low": _int_or_none(r.memory_low),
        "cpu": float(r.cpu) if r.cpu else None,
        "pids_max": r.pids_max or None,
    }


def _priority_name(value: int) -> str | None:
    from agentd.sdk.client import PRIORITIES

    for name, number in PRIORITIES.items():
        if number == value:
            return name
    return None


def session_dict(s: Any) -> dict[str, Any]:
    from agentd.v1 import agent_pb2 as pb

    return {
        "id": s.id,
        "owner_uid": s.owner_uid,
        "state": "open" if s.state == pb.SESSION_STATE_OPEN else "closed",
        "priority": _priority_name(s.priority),
        "budget": _resources_dict(s.budget),
        "running_tool_calls": s.running_tool_calls,
        "tool_calls_total": s.tool_calls_total,
        "created_at": _timestamp(s.created_at, s.HasField("created_at")),
        "closed_at": _timestamp(s.closed_at, s.HasField("closed_at")),
        "cgroup": s.cgroup,
    }


def tool_call_dict(t: Any) -> dict[str, Any]:
    from agentd.v1 import agent_pb2 as pb

    running = t.state == pb.TOOL_CALL_STATE_RUNNING
    waiting = t.state == pb.TOOL_CALL_STATE_WAITING  # a launcher placed ahead
    exit_known = t.exit.known and t.state == pb.TOOL_CALL_STATE_ENDED
    u = t.usage
    return {
        "id": t.id,
        "session_id": t.session_id,
        "owner_uid": t.owner_uid,
        "state": "running" if running else "waiting" if waiting else "ended",
        "label": t.intent.label,
        "priority": _priority_name(t.intent.priority),
        "limits": _resources_dict(t.limits),
        "started_at": _timestamp(t.started_at, t.HasField("started_at")),
        "ended_at": _timestamp(t.ended_at, t.HasField("ended_at")),
        "exit_code": t.exit.exit_code if exit_known and not t.exit.signal else None,
        "signal": t.exit.signal if exit_known and t.exit.signal else None,
        "exit_known": exit_known,
        "oom_killed": t.oom_killed,
        "leftover_processes_killed": t.leftover_processes_killed,
        "usage": {
            "wall_seconds": u.wall_seconds,
            "cpu_user_seconds": u.cpu_user_seconds,
            "cpu_system_seconds": u.cpu_system_seconds,
            "memory_bytes": u.memory_bytes,
            "peak_memory_bytes": u.peak_memory_bytes,
            "oom_kills": u.oom_kills,
            "cpu_throttled_seconds": u.cpu_throttled_seconds,
            "processes": u.processes,
            "processes_running": u.processes_running,
        },
        "cgroup": t.cgroup,
        "launcher_pid": t.launcher_pid,
    }


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _exit_text(d: dict[str, Any]) -> str:
    if d["state"] == "running":
        return "-"
    if not d["exit_known"]:
        text = "unknown"
    elif d["signal"]:
        text = _signal_name(d["signal"])
    else:
        text = str(d["exit_code"])
    return f"{text} (oom)" if d["oom_killed"] else text


def _limit_text(value: int | None) -> str:
    return "-" if value is None else human_size(value)


def _shorten(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _age(iso: str | None, now: float) -> str:
    if iso is None:
        return "-"
    then = datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    return human_seconds(max(now - then, 0.0))


# ---- connecting ---------------------------------------------------------------------


def connect(socket_path: str) -> Client:
    from agentd.sdk.client import Client

    # One command per process: a launcher placed ahead for a next run would be
    # wasted work (docs/placement.md).
    return Client(socket_path, ahead=False)


@contextlib.contextmanager
def _daemon_errors(socket_path: str, exit_code: int | None = None) -> Iterator[None]:
    """Turn SDK errors into CliError: `exit_code` if given, else 2 for InvalidArgument
    and 1 for everything else."""
    from agentd.sdk.errors import AgentdError

    try:
        yield
    except AgentdError as e:
        code = exit_code if exit_code is not None else daemon_error_status(e)
        raise CliError(daemon_error_message(e, socket_path), code) from None


# ---- subcommands ------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    with _daemon_errors(args.socket), connect(args.socket) as client:
        st = client.status()
    data = {
        "socket": args.socket,
        "version": st.version,
        "cgroup_mode": st.cgroup_mode,
        "cgroup_backend": st.cgroup_backend,
        "cgroup_root": st.cgroup_root,
        "controllers": list(st.controllers),
        "capabilities": dict(sorted(st.capabilities.items())),
        "process_tracking": st.process_tracking,
        "sessions_open": st.sessions_open,
        "tool_calls_running": st.tool_calls_running,
        "started_at": _timestamp(st.started_at, st.HasField("started_at")),
        "caller_uid": st.caller_uid,
    }
    if args.json:
        _print_json(data)
        return EXIT_OK
    fields = [
        ("daemon", f"agentd {data['version']} on {args.socket}"),
        ("up", _age(data["started_at"], time.time())),
        ("cgroup mode", data["cgroup_mode"]),
        ("cgroup backend", data["cgroup_backend"]),
        ("cgroup root", data["cgroup_root"]),
        ("controllers", ", ".join(data["controllers"]) or "-"),
        ("process tracking", data["process_tracking"] or "-"),
        ("sessions open", str(data["sessions_open"])),
        ("tool calls running", str(data["tool_calls_running"])),
    ]
    width = max(len(k) for k, _ in fields) + 1
    for key, value in fields:
        print(f"{key + ':':<{width}} {value}")
    if data["caller_uid"] != 0:
        print(f"(counts are of the sessions of uid {data['caller_uid']})")
    print("capabilities:")
    caps = data["capabilities"]
    if caps:
        print(table(["  NAME", "STATE"], [[f"  {k}", v] for k, v in caps.items()]))
    else:
        print("  (none reported)")
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    import grpc

    from agentd.sdk.client import resources
    from agentd.sdk.node import LocalNodeClient
    from agentd.v1 import agent_pb2, node_pb2

    request = node_pb2.ScorePlacementRequest(
        candidates=[
            node_pb2.Candidate(
                id="candidate",
                intent=agent_pb2.Intent(
                    label=args.label, resources=resources(args.memory, None, None, args.cpu, None)
                ),
            )
        ]
    )
    try:
        client = LocalNodeClient(args.socket)
        try:
            response = client.call("ScorePlacement", request)
        finally:
            client.close()
    except OSError as e:
        raise CliError(f"cannot reach agentd at {args.socket}: {e}", EXIT_DAEMON_ERROR) from None
    except grpc.RpcError as e:
        code = EXIT_USAGE if e.code() == grpc.StatusCode.INVALID_ARGUMENT else EXIT_DAEMON_ERROR  # type: ignore[attr-defined]
        raise CliError(f"predict: {e.details()}", code) from None  # type: ignore[attr-defined]
    score = response.scores[0]
    if not score.HasField("prediction"):
        raise CliError("predict: the daemon has no predictor", EXIT_DAEMON_ERROR)
    data = {
        "label": args.label,
        "predicted_slowdown": round(score.prediction.predicted_slowdown, 4),
        "low": round(score.prediction.low, 4),
        "high": round(score.prediction.high, 4),
        "model": score.prediction.model,
        "feasible": score.feasible,
        "reason": score.reason,
        "score": round(score.score, 2),
    }
    if args.json:
        _print_json(data)
    else:
        print(
            f"{args.label}: {data['predicted_slowdown']:.2f}x slower than alone "
            f"({data['low']:.2f}..{data['high']:.2f}), model {data['model']}, "
            f"placement score {data['score']:.0f}"
            + ("" if score.feasible else f" (does not fit: {score.reason})")
        )
    return EXIT_OK


def cmd_sessions(args: argparse.Namespace) -> int:
    with _daemon_errors(args.socket), connect(args.socket) as client:
        sessions = [session_dict(s) for s in client.sessions()]
    sessions.sort(key=lambda s: (s["created_at"] or "", s["id"]))
    if args.json:
        _print_json({"sessions": sessions})
        return EXIT_OK
    if not sessions:
        print("no open sessions")
        return EXIT_OK
    now = time.time()
    rows = [
        [
            s["id"],
            str(s["owner_uid"]),
            s["priority"] or "-",
            _limit_text(s["budget"]["memory_max"]),
            f"{s['budget']['cpu']:g}" if s["budget"]["cpu"] else "-",
            str(s["budget"]["pids_max"] or "-"),
            str(s["running_tool_calls"]),
            str(s["tool_calls_total"]),
            _age(s["created_at"], now),
        ]
        for s in sessions
    ]
    headers = ["SESSION", "UID", "PRIORITY", "MEMORY", "CPU", "PIDS", "RUNNING", "TOTAL", "AGE"]
    print(table(headers, rows))
    return EXIT_OK


def cmd_close(args: argparse.Namespace) -> int:
    from agentd.v1 import agent_pb2 as pb

    with _daemon_errors(args.socket), connect(args.socket) as client:
        response = client.call("CloseSession", pb.CloseSessionRequest(session_id=args.session))
    ended = len(response.ended_tool_calls)
    plural = "" if ended == 1 else "s"
    print(f"closed session {response.session.id} ({ended} running tool call{plural} killed)")
    return EXIT_OK


def tree_dict(tree: Any) -> dict[str, Any]:
    """The `agentctl tree --json` object from a ProcessTree message."""
    return {
        "tool_call_id": tree.tool_call_id,
        "source": tree.source,
        "lost_events": tree.lost_events,
        "loss_exact": tree.loss_exact,
        "dropped_processes": tree.dropped_processes,
        "processes": [
            {
                "pid": p.pid,
                "ppid": p.ppid,
                "argv": list(p.argv) if p.argv_known else None,
                "exe": p.exe or None,
                "exit_code": p.exit_code if p.exit_code_known else None,
                "signal": p.signal or None,
                "start_time": _timestamp(p.start_time, p.HasField("start_time")),
                "end_time": _timestamp(p.end_time, p.HasField("end_time")),
                "seeded": p.seeded,
                "cpu_seconds": p.cpu_seconds if p.usage_known else None,
                "peak_rss_bytes": p.peak_rss_bytes if p.usage_known else None,
            }
            for p in tree.processes
        ],
    }


def cmd_tree(args: argparse.Namespace) -> int:
    with _daemon_errors(args.socket), connect(args.socket) as client:
        data = tree_dict(client.process_tree(args.tool_call))
    if args.json:
        _print_json(data)
        return EXIT_OK
    processes = data["processes"]
    children: dict[int, list[dict[str, Any]]] = {}
    pids = {p["pid"] for p in processes}
    for p in processes:
        children.setdefault(p["ppid"], []).append(p)
    roots = [p for p in processes if p["ppid"] not in pids]
    loss = f"{data['lost_events']} lost" + ("" if data["loss_exact"] else " (lower bound)")
    print(f"{data['tool_call_id']}: {len(processes)} processes, source {data['source']}, {loss}")

    def show(p: dict[str, Any], depth: int) -> None:
        if p["end_time"] is None:
            state = "running"
        elif p["signal"]:
            state = f"killed by {_signal_name(p['signal'])}"
        elif p["exit_code"] is not None:
            state = f"exit {p['exit_code']}"
        else:
            state = "exited"
        argv = " ".join(p["argv"]) if p["argv"] else (p["exe"] or "?")
        usage = (
            f"{p['cpu_seconds']:6.2f}s {human_size(p['peak_rss_bytes']):>6}"
            if p["cpu_seconds"] is not None
            else f"{'-':>7} {'-':>6}"
        )
        print(f"{'  ' * depth}{p['pid']:>7}  {state:<18} {usage}  {argv[:110]}")
        for child in children.get(p["pid"], []):
            show(child, depth + 1)

    for root in roots:
        show(root, 0)
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    try:
        with _daemon_errors(args.socket), connect(args.socket) as client:
            for event in client.watch(args.session or ""):
                if args.json:
                    print(json.dumps(MessageToDict(event)), flush=True)
                    continue
                when = time.strftime("%H:%M:%S", time.localtime(event.time.ToSeconds()))
                if event.HasField("process"):
                    p = event.process
                    kind = pb_kind_name(p.kind)
                    detail = " ".join(p.argv) if kind == "exec" else f"ppid {p.ppid}"
                    if kind == "exit":
                        detail = (
                            f"killed by {_signal_name(p.signal)}"
                            if p.signal
                            else f"exit {p.exit_code}"
                            if p.exit_code_known
                            else "exit ?"
                        )
                    print(f"{when} {event.tool_call_id} {kind:<5} {p.pid:>7} {detail}", flush=True)
                elif event.HasField("daemon"):  # guard_action, oom_kill, ...
                    d = event.daemon
                    text = d.details.get("suggestion") or " ".join(
                        f"{k}={v}" for k, v in sorted(d.details.items())
                    )
                    print(f"{when} {event.tool_call_id} {d.kind} {text}", flush=True)
                else:
                    t = event.tool_call
                    kind = "begun" if t.kind == 1 else "ended"
                    print(
                        f"{when} {event.tool_call_id} {kind} session {event.session_id} "
                        f"{t.tool_call.intent.label[:80]}",
                        flush=True,
                    )
                if event.dropped_before:
                    print(
                        f"({event.dropped_before} events dropped: reading too slowly)",
                        file=sys.stderr,
                    )
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def cmd_top(args: argparse.Namespace) -> int:
    from agentd.cli.top import cmd_top as top

    return top(args)


def pb_kind_name(kind: int) -> str:
    return {1: "fork", 2: "exec", 3: "exit"}.get(kind, "?")


def cmd_tool_calls(args: argparse.Namespace) -> int:
    from agentd.v1 import agent_pb2 as pb

    request = pb.ListToolCallsRequest(session_id=args.session or "", include_ended=args.all)
    with _daemon_errors(args.socket), connect(args.socket) as client:
        tool_calls = [tool_call_dict(t) for t in client.call("ListToolCalls", request).tool_calls]
    tool_calls.sort(key=lambda t: (t["started_at"] or "", t["id"]))
    if args.json:
        _print_json({"tool_calls": tool_calls})
        return EXIT_OK
    if not tool_calls:
        print("no running tool calls" if not args.all else "no tool calls")
        return EXIT_OK
    rows = []
    for t in tool_calls:
        u = t["usage"]
        running = t["state"] == "running"
        rows.append(
            [
                t["id"],
                t["session_id"],
                t["state"],
                _exit_text(t),
                human_size(u["memory_bytes"]) if running else "-",
                human_size(u["peak_memory_bytes"]),
                human_seconds(u["cpu_user_seconds"] + u["cpu_system_seconds"]),
                human_seconds(u["wall_seconds"]),
                str(u["processes"]),
                _shorten(t["label"]),
            ]
        )
    headers = ["TOOL CALL", "SESSION", "STATE", "EXIT", "MEM", "PEAK", "CPU", "WALL", "PROCS"]
    print(table([*headers, "COMMAND"], rows))
    return EXIT_OK


# ---- run ----------------------------------------------------------------------------


class _Interrupted(BaseException):
    """Raised out of the wait for the command when agentctl receives a signal.

    A BaseException so that no `except Exception` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _SignalGuard:
    """Records SIGINT/SIGTERM/SIGHUP during `run`; raises _Interrupted only while
    waiting for the command, so that a signal never cuts a daemon request in half
    (which could leave a tool call begun but never killed)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.waiting = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.received is None
        if first:
            self.received = signum
        if first and self.waiting:
            self.waiting = False
            raise _Interrupted(signum)

    def __enter__(self) -> _SignalGuard:
        # Handlers can only be installed from the main thread; from any other thread
        # (a test harness, an embedding program) signals keep their usual meaning.
        if threading.current_thread() is threading.main_thread():
            for sig in FORWARDED_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def wait(self, process: ToolCallProcess, timeout: float | None) -> bool:
        """Wait for the command; False if it outlived `timeout`. Raises _Interrupted."""
        if self.received is not None:
            raise _Interrupted(self.received)
        self.waiting = True
        try:
            process.popen.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
        finally:
            self.waiting = False


def _session_for_run(client: Client, name: str) -> Session:
    """The open session `name`, created with the default budget if it is not open.

    Attaching first lets root use another user's session; exist_ok makes creation
    safe against a concurrent `agentctl run` creating the same session.
    """
    from agentd.sdk.errors import NotFound

    try:
        return client.attach(name)
    except NotFound:
        return client.session(name, exist_ok=True)


def run_summary(
    usage: dict[str, Any] | None,
    *,
    tool_call_id: str,
    session_id: str,
    args: Sequence[str],
    returncode: int,
    timed_out: bool,
    interrupted_by: int | None,
    error: str | None = None,
) -> dict[str, Any]:
    """The --summary-json object: Usage.as_dict() plus how the run ended.

    When the daemon could not report the usage (`usage` None) the usage fields are
    null and `error` says why, so a reader always finds the keys it expects.
    """
    summary: dict[str, Any] = {
        "tool_call_id": tool_call_id,
        "session_id": session_id,
        "args": list(args),
        "exit_code": returncode if returncode >= 0 else None,
        "signal": -returncode if returncode < 0 else 0,
        "oom_killed": None,
        "oom_kills": None,
        "peak_memory_bytes": None,
        "cpu_user_seconds": None,
        "cpu_system_seconds": None,
        "cpu_throttled_seconds": None,
        "wall_seconds": None,
        "processes": None,
        "leftover_processes_killed": None,
    }
    if usage is not None:
        summary.update(usage)
    summary["timed_out"] = timed_out
    summary["interrupted_by"] = _signal_name(interrupted_by) if interrupted_by else None
    summary["error"] = error
    return summary


def write_summary(target: str, summary: dict[str, Any]) -> None:
    text = json.dumps(summary, sort_keys=False) + "\n"
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with open(target, "w", encoding="utf-8") as f:
        f.write(text)


def _run_status(returncode: int, timed_out: bool, interrupted_by: int | None) -> int:
    if interrupted_by is not None:
        # Deterministic whichever won the race: the terminal's SIGINT to the command
        # or our SIGKILL of the whole tool call.
        return 128 + interrupted_by
    if timed_out:
        return EXIT_TIMEOUT
    return exit_status_of(returncode)


def cmd_run(args: argparse.Namespace) -> int:
    from agentd.sdk.errors import AgentdError

    command: list[str] = args.command
    # Until the command is being started, Ctrl-C is a plain KeyboardInterrupt (main
    # returns 130): nothing runs yet, and a hung daemon must not make it unkillable.
    with _daemon_errors(args.socket, EXIT_RUN_FAILED):
        client = connect(args.socket)
    with client:
        with _daemon_errors(args.socket, EXIT_RUN_FAILED):
            session = _session_for_run(client, args.session)
        with _SignalGuard() as guard:
            try:
                process = session.start(
                    command,
                    memory=args.memory,
                    memory_high=args.memory_high,
                    cpu=args.cpu,
                    pids=args.pids,
                    priority=args.priority,
                    expected_duration=args.timeout,
                )
            except AgentdError as e:
                if guard.received is not None:
                    # Interrupted while starting (the terminal's SIGINT may well have
                    # killed the waiting launcher): nothing ran.
                    return 128 + guard.received
                raise CliError(daemon_error_message(e, args.socket), EXIT_RUN_FAILED) from None
            except OSError as e:
                status = exec_failure_status(e, command[0])
                if status == EXIT_NOT_FOUND:
                    raise CliError(f"{command[0]}: command not found", status) from None
                reason = e.strerror or str(e)
                raise CliError(f"{command[0]}: cannot execute: {reason}", status) from None
            return _wait_and_report(args, guard, session, process)


def _wait_and_report(
    args: argparse.Namespace, guard: _SignalGuard, session: Session, process: ToolCallProcess
) -> int:
    from agentd.sdk.errors import AgentdError

    timed_out = False
    interrupted_by: int | None = None
    try:
        timed_out = not guard.wait(process, args.timeout)
    except _Interrupted as e:
        interrupted_by = e.signum
    if timed_out or interrupted_by is not None:
        # Kill every process of the tool call, not only the command: whatever it
        # forked would otherwise keep running until EndToolCall.
        process.kill()
        if timed_out:
            print(
                f"agentctl: tool call {process.tool_call_id} timed out after "
                f"{args.timeout:g}s; killed",
                file=sys.stderr,
            )
    returncode = process.popen.wait()
    status = _run_status(returncode, timed_out, interrupted_by)
    usage: dict[str, Any] | None = None
    error: str | None = None
    try:
        usage = process.finish(None, None).usage.as_dict()
    except AgentdError as e:
        # The command has run: its status stands, only the report is missing.
        error = daemon_error_message(e, args.socket)
        print(f"agentctl: could not collect the tool call's usage: {error}", file=sys.stderr)
    if args.summary_json is not None:
        summary = run_summary(
            usage,
            tool_call_id=process.tool_call_id,
            session_id=session.id,
            args=process.args,
            returncode=returncode,
            timed_out=timed_out,
            interrupted_by=interrupted_by,
            error=error,
        )
        try:
            write_summary(args.summary_json, summary)
        except OSError as e:
            print(f"agentctl: cannot write {args.summary_json}: {e}", file=sys.stderr)
    return status


# ---- entry point --------------------------------------------------------------------


def _version() -> str:
    from agentd import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    """Run agentctl with `argv` (default: sys.argv[1:]) and return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except _ParserExit as e:
        return e.status
    except CliError as e:
        print(f"agentctl: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        # Ctrl-C outside `run` (e.g. while the daemon is slow to answer).
        return 128 + signal.SIGINT
    except BrokenPipeError:
        # `agentctl tool-calls | head`: the reader left; exit quietly like other tools.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
