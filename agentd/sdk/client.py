"""The agent-side SDK: sessions and tool calls that feel like `subprocess`.

    from agentd.sdk import Client
    with Client() as client, client.session("fix-bug-42", memory="2G") as session:
        result = session.run(["pytest", "-x"], memory="1G", capture_output=True, text=True)
        print(result.returncode, result.usage.peak_memory_bytes)

How a command gets into its cgroup before it runs: the SDK starts a tiny launcher
(`agentd-exec`) that blocks on a pipe, asks the daemon to create the tool call's
group and move the launcher into it, then releases the launcher, which executes
the command. Everything the command forks is therefore born inside the group,
and the caller needs no write access to cgroupfs (the daemon checks that the pid
is the caller's own child). See docs/placement.md.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import grpc

from agentd.cgroups.base import GroupUsage
from agentd.credproto import TOKEN_METADATA_KEY, fetch_token
from agentd.sdk import launcher
from agentd.sdk.ahead import (
    TAKE_WAIT_SECONDS,
    AheadPopen,
    LauncherGone,
    LauncherPool,
    Reporter,
    WaitingLauncher,
    intent_key,
    resolve_program,
)
from agentd.sdk.errors import (
    AgentdError,
    DaemonUnavailable,
    ToolCallFailed,
    ToolCallTimeout,
    from_rpc_error,
)
from agentd.units import parse_size
from agentd.v1 import agent_pb2 as pb
from agentd.v1 import agent_pb2_grpc as pb_grpc

DEFAULT_SOCKET = "/run/agentd/agentd.sock"


def default_socket() -> str:
    """$AGENTD_SOCKET, read when a client is made, else /run/agentd/agentd.sock."""
    return os.environ.get("AGENTD_SOCKET") or DEFAULT_SOCKET


PRIORITIES = {
    None: pb.PRIORITY_CLASS_UNSPECIFIED,
    "interactive": pb.PRIORITY_CLASS_INTERACTIVE,
    "normal": pb.PRIORITY_CLASS_NORMAL,
    "batch": pb.PRIORITY_CLASS_BATCH,
}

T = TypeVar("T")

#: Calls that do not wait for the background reports (they are those reports, or a
#: placement, which the reports never affect).
_REPORTS = frozenset({"BeginToolCall", "StartToolCall", "EndToolCall"})


def _amount(value: str | int | float | None) -> str:
    return "" if value is None else str(value)


def resources(
    memory: str | int | None = None,
    memory_high: str | int | None = None,
    memory_low: str | int | None = None,
    cpu: str | float | None = None,
    pids: int | None = None,
) -> pb.Resources:
    return pb.Resources(
        memory_max=_amount(memory),
        memory_high=_amount(memory_high),
        memory_low=_amount(memory_low),
        cpu=_amount(cpu),
        pids_max=pids or 0,
    )


def _priority(name: str | None) -> int:
    if name not in PRIORITIES:
        raise ValueError(f"priority must be one of interactive, normal, batch; not {name!r}")
    return PRIORITIES[name]


@dataclass(frozen=True)
class Enforcement:
    """What agentd did because the tool call crossed a bound: `action` ("stopped",
    "resumed", "killed", "oom_killed", "reported") on `limit` ("memory",
    "session_memory", "fork_rate", "processes", "oom"), how far (`value` against
    `limit_value`, in `unit`), which process, and a `suggestion` to act on."""

    action: str
    limit: str
    limit_value: int
    value: int
    unit: str
    pid: int
    comm: str
    argv: tuple[str, ...]
    suggestion: str
    time: float  # seconds since the epoch

    @classmethod
    def from_pb(cls, e: pb.Enforcement) -> Enforcement:
        return cls(
            action=e.action,
            limit=e.limit,
            limit_value=e.limit_value,
            value=e.value,
            unit=e.unit,
            pid=e.pid,
            comm=e.comm,
            argv=tuple(e.argv),
            suggestion=e.suggestion,
            time=e.time.ToNanoseconds() / 1e9,
        )


@dataclass(frozen=True)
class Usage:
    """What a tool call used; `as_dict()` is the JSON summary agentctl writes."""

    tool_call_id: str
    exit_code: int | None
    signal: int
    oom_killed: bool
    oom_kills: int
    peak_memory_bytes: int
    cpu_user_seconds: float
    cpu_system_seconds: float
    cpu_throttled_seconds: float
    wall_seconds: float
    processes: int
    leftover_processes_killed: int
    enforcements: tuple[Enforcement, ...] = ()

    @classmethod
    def from_pb(cls, t: pb.ToolCall) -> Usage:
        return cls(
            tool_call_id=t.id,
            exit_code=(t.exit.exit_code if not t.exit.signal else None) if t.exit.known else None,
            signal=t.exit.signal,
            oom_killed=t.oom_killed,
            oom_kills=t.usage.oom_kills,
            peak_memory_bytes=t.usage.peak_memory_bytes,
            cpu_user_seconds=t.usage.cpu_user_seconds,
            cpu_system_seconds=t.usage.cpu_system_seconds,
            cpu_throttled_seconds=t.usage.cpu_throttled_seconds,
            wall_seconds=t.usage.wall_seconds,
            processes=t.usage.processes,
            leftover_processes_killed=t.leftover_processes_killed,
            enforcements=tuple(Enforcement.from_pb(e) for e in t.enforcements),
        )

    @classmethod
    def from_group(cls, tool_call_id: str, returncode: int, raw: Any, wall_seconds: float) -> Usage:
        """From the group's counters read by the SDK itself (agentd.cgroups.usage)."""
        return cls(
            tool_call_id=tool_call_id,
            exit_code=returncode if returncode >= 0 else None,
            signal=max(-returncode, 0),
            oom_killed=raw.oom_kills > 0,
            oom_kills=raw.oom_kills,
            peak_memory_bytes=raw.memory_peak,
            cpu_user_seconds=raw.cpu_user_usec / 1e6,
            cpu_system_seconds=raw.cpu_system_usec / 1e6,
            cpu_throttled_seconds=raw.cpu_throttled_usec / 1e6,
            wall_seconds=wall_seconds,
            processes=raw.pids_peak,
            leftover_processes_killed=0,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _UsageWithLateProcesses(Usage):
    """Usage read by the SDK itself (launchers placed ahead), except what only the daemon
    knows: `processes` (every process the tool call started, counted by its tracker) and
    `enforcements` (a node or session stop of a command that stayed within its intent
    and exited 0 leaves no trace in the group's files). Reading either asks the daemon
    once, for both (GetToolCall): a result nobody asks about costs no call. If the
    daemon cannot answer: the group's pids.peak, and no records."""

    def __getattribute__(self, name: str) -> Any:
        if name in _LATE_FIELDS:
            resolve = object.__getattribute__(self, "__dict__").pop("_resolve", None)
            if resolve is not None:
                with contextlib.suppress(AgentdError):
                    tool_call = resolve()
                    object.__setattr__(self, "processes", int(tool_call.usage.processes))
                    object.__setattr__(
                        self,
                        "enforcements",
                        tuple(Enforcement.from_pb(e) for e in tool_call.enforcements),
                    )
        return object.__getattribute__(self, name)


_LATE_FIELDS = frozenset({"processes", "enforcements"})


@dataclass
class ToolCallResult:
    """Like subprocess.CompletedProcess, plus the tool call's id and usage."""

    args: Sequence[str]
    returncode: int  # negative -N when killed by signal N, as in subprocess
    stdout: Any
    stderr: Any
    tool_call_id: str
    usage: Usage

    @property
    def enforcements(self) -> tuple[Enforcement, ...]:
        """What agentd did to this tool call (stopped, resumed, killed, ...), with
        suggestions; empty when it ran within its bounds."""
        return self.usage.enforcements

    def check_returncode(self) -> None:
        if self.returncode:
            raise ToolCallFailed(self)


class Client:
    """A connection to the local agentd. Thread-safe; reuse one per process.

    `ahead` (default on): every session keeps a launcher placed ahead of time, so a
    tool call starts without waiting for the daemon (docs/placement.md).
    """

    def __init__(
        self, socket_path: str | None = None, timeout: float = 30.0, ahead: bool = True
    ) -> None:
        self.socket_path = socket_path or default_socket()
        self.timeout = timeout
        self.ahead = ahead
        self.reporter = Reporter(self.call)
        self._pools: weakref.WeakSet[LauncherPool] = weakref.WeakSet()
        if not Path(self.socket_path).exists():
            raise DaemonUnavailable(f"no agentd socket at {self.socket_path} (is agentd running?)")
        self._channel = grpc.insecure_channel(f"unix:{self.socket_path}")
        self._stub = pb_grpc.AgentServiceStub(self._channel)
        self._token = self._fetch_token()

    def _fetch_token(self) -> str:
        try:
            return fetch_token(self.socket_path)
        except OSError as e:
            raise DaemonUnavailable(
                f"cannot identify to agentd at {self.socket_path}.cred: {e}"
            ) from e

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """Invoke an AgentService method; a daemon restart (stale token) is retried once."""
        rpc: Callable[..., Any] = getattr(self._stub, method)
        if method not in _REPORTS:
            # Read your own writes: what this client reported in the background (the
            # starts and ends of tool calls run on launchers placed ahead) lands first.
            self.reporter.flush()
        for attempt in (0, 1):
            try:
                return rpc(
                    request,
                    timeout=timeout or self.timeout,
                    metadata=((TOKEN_METADATA_KEY, self._token),),
                )
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAUTHENTICATED and attempt == 0:  # type: ignore[attr-defined]
                    self._token = self._fetch_token()
                    continue
                raise from_rpc_error(e) from None
        raise AssertionError("unreachable")

    def session(
        self,
        name: str = "",
        *,
        memory: str | int | None = None,
        memory_high: str | int | None = None,
        cpu: str | float | None = None,
        pids: int | None = None,
        priority: str | None = None,
        exist_ok: bool = False,
    ) -> Session:
        """Open a session with a budget; use it as a context manager to close it."""
        msg = self.call(
            "CreateSession",
            pb.CreateSessionRequest(
                name=name,
                budget=resources(memory, memory_high, None, cpu, pids),
                priority=_priority(priority),
                exist_ok=exist_ok,
            ),
        )
        return Session(self, msg)

    def attach(self, session_id: str) -> Session:
        """A handle on an existing open session of this caller's."""
        return Session(self, self.call("GetSession", pb.GetSessionRequest(session_id=session_id)))

    def sessions(self) -> list[pb.Session]:
        return list(self.call("ListSessions", pb.ListSessionsRequest()).sessions)

    def status(self) -> pb.NodeStatus:
        return self.call("GetNodeStatus", pb.GetNodeStatusRequest())

    def register_executor(
        self,
        session_id: str,
        pid: int,
        *,
        memory: str | int | None = None,
        cpu: str | float | None = None,
        pids: int | None = None,
    ) -> pb.Executor:
        """Without the SDK on the hot path: every child `pid` forks from now on becomes
        a tool call of the session with these limits."""
        intent = pb.Intent(resources=resources(memory, None, None, cpu, pids))
        request = pb.RegisterExecutorRequest(session_id=session_id, pid=pid, intent=intent)
        return self.call("RegisterExecutor", request)

    def process_tree(self, tool_call_id: str) -> pb.ProcessTree:
        """Every process the tool call started, as the daemon's tracker saw them."""
        return self.call("GetProcessTree", pb.GetProcessTreeRequest(tool_call_id=tool_call_id))

    def watch(self, session_id: str = "") -> Iterator[pb.WatchEvent]:
        """Process and tool-call events as they happen (blocks; cancel with close())."""
        stream = self._stub.Watch(
            pb.WatchRequest(session_id=session_id),
            metadata=((TOKEN_METADATA_KEY, self._token),),
        )
        try:
            yield from stream
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                return
            raise from_rpc_error(e) from None
        finally:
            stream.cancel()

    def close(self) -> None:
        for pool in list(self._pools):
            pool.close()
        self.reporter.flush()
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Session:
    def __init__(self, client: Client, info: pb.Session) -> None:
        self.client = client
        self.info = info
        self.id: str = info.id
        self._pool: LauncherPool | None = None
        if client.ahead:
            self._pool = LauncherPool(self._begin_ahead, client.reporter.discarded)
            client._pools.add(self._pool)
            self._pool.prepare(pb.Intent())  # the session's default limits

    def _begin_ahead(self, intent: pb.Intent, pid: int, more: Sequence[int] = ()) -> pb.ToolCall:
        """Place a launcher ahead (and the launchers `more`, listed in the reply's
        `more_placed`), with the client's pending end reports folded in (one RPC for
        all; those the daemon did not apply go back to the reporter)."""
        request = pb.BeginToolCallRequest(
            session_id=self.id, intent=intent, pid=pid, ahead=True, more_pids=more
        )
        reporter = self.client.reporter
        ends = reporter.take_ends()
        request.ends.extend(reporter.end_request(r) for r in ends)
        handled = 0
        try:
            tool_call = self.client.call("BeginToolCall", request)
            handled = min(tool_call.ends_handled, len(ends))
            if ends and not handled:
                reporter.fold = False  # a daemon without `ends`: it ignored them
            return tool_call
        finally:
            reporter.give_back(ends, handled)

    def placed_ahead(self) -> str | None:
        """The tool-call id the next run() will get if its limits are those of the
        launchers waiting for it (see settle()); None if none is waiting."""
        ids = self.placed_ahead_ids()
        return ids[0] if ids else None

    def placed_ahead_ids(self) -> list[str]:
        """The tool-call ids of every launcher waiting, in the order runs take them."""
        return self._pool.ready_ids() if self._pool is not None else []

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until the background work of finished tool calls is done (the next
        launchers placed, the daemon told of every start and end)."""
        if self._pool is not None:
            self._pool.wait_prepared(timeout)
        self.client.reporter.flush(timeout)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> pb.CloseSessionResponse:
        if self._pool is not None:
            self._pool.close()
        # Ends reported late would find their tool calls already ended by the close.
        self.client.reporter.flush()
        return self.client.call("CloseSession", pb.CloseSessionRequest(session_id=self.id))

    def tool_calls(self, include_ended: bool = False) -> list[pb.ToolCall]:
        request = pb.ListToolCallsRequest(session_id=self.id, include_ended=include_ended)
        return list(self.client.call("ListToolCalls", request).tool_calls)

    def start(
        self,
        args: Sequence[str],
        *,
        memory: str | int | None = None,
        memory_high: str | int | None = None,
        cpu: str | float | None = None,
        pids: int | None = None,
        priority: str | None = None,
        label: str | None = None,
        expected_duration: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        text: bool = False,
    ) -> ToolCallProcess:
        """Start `args` as a tool call and return at once (like subprocess.Popen)."""
        if isinstance(args, str | bytes):
            raise TypeError("args must be a sequence of strings; agentd never runs a shell")
        args = [os.fspath(a) for a in args]
        if not args:
            raise ValueError("args is empty")
        intent = pb.Intent(
            resources=resources(memory, memory_high, None, cpu, pids),
            priority=_priority(priority),
            label=label if label is not None else " ".join(args)[:4096],
        )
        if expected_duration is not None:
            intent.expected_duration.FromNanoseconds(int(expected_duration * 1e9))
        if self._pool is not None:
            started = self._start_ahead(
                args, intent, env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr, text=text
            )
            if started is not None:
                return started
        pending = launcher.spawn(
            args, env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr, text=text
        )
        try:
            tool_call = self.client.call(
                "BeginToolCall",
                pb.BeginToolCallRequest(session_id=self.id, intent=intent, pid=pending.pid),
            )
        except BaseException:
            pending.abort()
            raise
        try:
            pending.release()
        except OSError as e:
            # The command could not be executed: report the tool call as ended with the
            # code a shell would give (127 not found, 126 not executable) and raise
            # what subprocess would raise, even if that report fails.
            code = 127 if e.errno == errno.ENOENT else 126
            with contextlib.suppress(AgentdError):
                self.client.call(
                    "EndToolCall",
                    pb.EndToolCallRequest(
                        tool_call_id=tool_call.id, exit=pb.ExitStatus(known=True, exit_code=code)
                    ),
                )
            raise
        self._prepare_next(intent)
        return ToolCallProcess(self.client, tool_call.id, args, pending.process)

    def _prepare_next(self, intent: pb.Intent) -> None:
        """Place a launcher for the next tool call, expecting the same limits."""
        if self._pool is not None:
            self._pool.prepare(pb.Intent(resources=intent.resources, priority=intent.priority))

    def _start_ahead(
        self,
        args: list[str],
        intent: pb.Intent,
        env: Mapping[str, str] | None,
        cwd: str | os.PathLike[str] | None,
        wait: float = TAKE_WAIT_SECONDS,
        **stdio: Any,
    ) -> ToolCallProcess | None:
        """Run on a launcher placed ahead for this intent (waiting at most `wait` for one
        being placed); None if there is none."""
        assert self._pool is not None
        if cwd is not None and not os.path.isdir(cwd):
            raise FileNotFoundError(errno.ENOENT, "No such directory", os.fspath(cwd))
        program = resolve_program(args[0], env)
        waiting = self._pool.take(intent_key(intent), wait)
        if waiting is None:
            return None  # the ordinary way places one for next time
        started_at, started = time.time(), time.monotonic()
        try:
            popen = AheadPopen(waiting, program, args, env=env, cwd=cwd, **stdio)
        except LauncherGone:
            waiting.abort()
            return None
        except OSError as e:
            code = 127 if e.errno == errno.ENOENT else 126
            exit_status = pb.ExitStatus(known=True, exit_code=code)
            self.client.reporter.ended(waiting.tool_call.id, intent.label, started_at, exit_status)
            self._prepare_next(intent)
            raise
        self.client.reporter.started(waiting.tool_call.id, intent.label, started_at)
        return ToolCallProcess(
            self.client,
            waiting.tool_call.id,
            args,
            popen,
            ahead=_Ahead(waiting, intent, started_at, started, self._prepare_next),
        )

    def run(
        self,
        args: Sequence[str],
        *,
        input: str | bytes | None = None,
        capture_output: bool = False,
        timeout: float | None = None,
        check: bool = False,
        **kwargs: Any,
    ) -> ToolCallResult:
        """Run `args` as a tool call and wait for it (like subprocess.run).

        Extra keyword arguments are those of start(): memory, memory_high, cpu, pids,
        priority, label, expected_duration, env, cwd, stdin, stdout, stderr, text.
        On timeout every process of the tool call is killed and ToolCallTimeout raised.
        """
        if capture_output:
            kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
        if input is not None:
            kwargs["stdin"] = subprocess.PIPE
        return self.complete(self.start(args, **kwargs), input, timeout, check)

    def complete(
        self,
        process: ToolCallProcess,
        input: str | bytes | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> ToolCallResult:
        """Wait for a started tool call as run() does: its output, its end, its usage."""
        try:
            stdout, stderr = process.popen.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.popen.communicate()
            raise ToolCallTimeout(process.finish(stdout, stderr), timeout or 0.0) from None
        except BaseException:
            # Interrupted (KeyboardInterrupt, ...): end the whole tool call, and let the
            # original exception through even if the daemon cannot be told.
            with contextlib.suppress(Exception):
                process.kill()
                process.popen.wait()
                process.finish(None, None)
            raise
        result = process.finish(stdout, stderr)
        if check:
            result.check_returncode()
        return result


@dataclass
class _Ahead:
    """What finishing a tool call started on a launcher placed ahead needs."""

    launcher: WaitingLauncher
    intent: pb.Intent
    started_at: float  # epoch, for the daemon
    started: float  # monotonic, for the wall time
    prepare_next: Callable[[pb.Intent], None]


class ToolCallProcess:
    """A running tool call: the Popen of its command, plus kill() for the whole tree."""

    def __init__(
        self,
        client: Client,
        tool_call_id: str,
        args: Sequence[str],
        popen: subprocess.Popen,
        ahead: _Ahead | None = None,
    ) -> None:
        self.client = client
        self.tool_call_id = tool_call_id
        self.args = args
        self.popen = popen
        self.pid = popen.pid
        self._ahead = ahead

    def kill(self, sig: int = 0) -> None:
        """Signal every process of the tool call (SIGKILL by default), not just the command."""
        request = pb.KillToolCallRequest(tool_call_id=self.tool_call_id, signal=sig)
        try:
            self.client.call("KillToolCall", request)
        except AgentdError:
            self.popen.kill()

    def wait(self, timeout: float | None = None) -> ToolCallResult:
        self.popen.wait(timeout)
        return self.finish(None, None)

    def _daemon_tool_call(self) -> pb.ToolCall:
        request = pb.GetToolCallRequest(tool_call_id=self.tool_call_id)
        try:
            return self.client.call("GetToolCall", request)
        except ValueError:  # grpc: the client was closed before the result was read
            with Client(self.client.socket_path, self.client.timeout, ahead=False) as client:
                return client.call("GetToolCall", request)

    def finish(self, stdout: Any, stderr: Any) -> ToolCallResult:
        """Report the exit status, collect the final usage; the group is removed."""
        rc = self.popen.wait()
        exit_status = pb.ExitStatus(known=True, exit_code=max(rc, 0), signal=max(-rc, 0))
        request = pb.EndToolCallRequest(tool_call_id=self.tool_call_id, exit=exit_status)
        ahead = self._ahead
        if ahead is not None:
            wall = time.monotonic() - ahead.started
            raw = ahead.launcher.final_usage()
            label = ahead.intent.label
            try:
                if raw is not None and not _daemon_acted(rc, raw, ahead.intent):
                    # The group is empty: nothing is left to kill, the counters are
                    # final, and the daemon can be told afterwards.
                    reporter = self.client.reporter
                    reporter.ended(self.tool_call_id, label, ahead.started_at, exit_status)
                    usage = _UsageWithLateProcesses(
                        **asdict(Usage.from_group(self.tool_call_id, rc, raw, wall))
                    )
                    object.__setattr__(usage, "_resolve", self._daemon_tool_call)
                    return ToolCallResult(self.args, rc, stdout, stderr, self.tool_call_id, usage)
                # Something outlived the command, or the daemon may have acted on it
                # (its records and suggestions come with the end): it ends it now.
                self.client.reporter.take_start(self.tool_call_id)
                request.label = label
                request.started_at.FromNanoseconds(int(ahead.started_at * 1e9))
            finally:
                ahead.prepare_next(ahead.intent)
        ended = self.client.call("EndToolCall", request)
        return ToolCallResult(
            args=self.args,
            returncode=rc,
            stdout=stdout,
            stderr=stderr,
            tool_call_id=self.tool_call_id,
            usage=Usage.from_pb(ended),
        )


def _daemon_acted(rc: int, raw: GroupUsage, intent: pb.Intent) -> bool:
    """Whether agentd may have acted on the command's own bounds: killed it (a signal),
    OOM-killed a process, or let it grow beyond its intent (the guard's bound). Then the
    daemon ends it (EndToolCall, with the records and its leftovers). Node or session
    stops and throttles of a command within its intent leave no such trace: their
    records are read lazily (_UsageWithLateProcesses)."""
    if rc < 0 or raw.oom_kills:
        return True
    memory = intent.resources.memory_max
    return bool(memory) and raw.memory_peak > parse_size(memory)


def wait_for_socket(socket_path: str, timeout: float = 10.0) -> None:
    """Block until the daemon answers on `socket_path` (for scripts and tests)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with Client(socket_path, timeout=1.0) as client:
                client.status()
                return
        except (AgentdError, OSError) as e:
            last = e
            time.sleep(0.05)
    raise DaemonUnavailable(f"agentd did not answer on {socket_path} within {timeout}s: {last}")
