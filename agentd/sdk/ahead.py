"""Launchers placed ahead of time: a tool call whose RPCs are off the critical path.

Per session the SDK keeps one `agentd-exec --ahead` launcher that the daemon has
already placed in its tool-call group (BeginToolCall with `ahead`), waiting on a
socket. Running a command then costs what a bare spawn costs: the argv, env, cwd and
the three stdio fds go to the launcher over the socket and it executes at once. The
daemon learns of the start and of the end afterwards, from `Reporter` (a background
thread); the result's usage is read from the group's own (world-readable) usage
files. See docs/placement.md, "Launchers placed ahead".
"""

from __future__ import annotations

import array
import collections
import contextlib
import errno
import logging
import os
import queue
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from agentd.cgroups.base import GroupUsage
from agentd.cgroups.usage import FinalUsage
from agentd.sdk.errors import AgentdError, DaemonUnavailable, NotFound
from agentd.sdk.launcher import launcher_path
from agentd.sdk.spawn import spawn_with_stdio_devnull
from agentd.v1 import agent_pb2 as pb

# Through the stdlib logger "agentd.sdk", not structlog's default: the SDK runs in the
# agent's harness, whose stdout may be its protocol, and an unconfigured structlog
# prints every level there. As a library should, it leaves the output to the
# application: warnings reach stderr (logging's last resort), the rest only when the
# application configures logging (agentd's own processes do, in agentd.log).
log = structlog.wrap_logger(
    logging.getLogger("agentd.sdk"),
    wrapper_class=structlog.stdlib.BoundLogger,
    processors=[
        structlog.stdlib.filter_by_level,
        structlog.processors.KeyValueRenderer(key_order=["event"]),
    ],
)

#: The launcher's socket inside it (agentd_exec.c reads its number from argv).
LAUNCHER_SOCKET_FD = 3
#: How long a run waits for a launcher of its intent still being placed before it
#: starts the ordinary way. Waiting is never slower than that way (which does the same
#: spawn and BeginToolCall), unless the placement fails: then this bounds the loss.
TAKE_WAIT_SECONDS = 1.0
#: A start is reported only if the command still runs this much later: a short tool
#: call's start then travels folded into its end (one RPC instead of two), and the
#: report does not compete with the agent's own thread for the GIL right after the
#: command started.
START_REPORT_DELAY_SECONDS = 0.05
#: Launchers a session keeps placed ahead: back to back, runs find one ready while
#: those just used are replaced, all that are missing in one BeginToolCall (with 3,
#: 63-74% of back-to-back runs found one placed against 53-58% with 2; the daemon
#: allows 4 waiting).
AHEAD_DEPTH = 3
#: How long the reporter retries a report while the daemon is unreachable (restart).
REPORT_RETRY_SECONDS = 60.0
#: How long an end report waits to be folded into the placement of the next launcher
#: (BeginToolCallRequest.ends: one RPC instead of two, and the daemon's handler, the
#: store commit and gRPC's per-call work once). A run's end is always followed by the
#: placement that replaces its launcher, which takes it within a millisecond or two;
#: this only bounds the wait when none comes. flush() sends at once.
END_FOLD_SECONDS = 0.05

_HEADER = struct.Struct("=III")  # length of the strings, argc, envc (agentd_exec.c)


class LauncherGone(Exception):
    """The waiting launcher cannot take the command (it died); start the ordinary way."""


def intent_key(intent: pb.Intent) -> bytes:
    """What a launcher placed ahead was placed for: the limits, not the label."""
    return pb.Intent(resources=intent.resources, priority=intent.priority).SerializeToString(
        deterministic=True
    )


@dataclass
class WaitingLauncher:
    """A placed launcher: its pid, the SDK's end of its socket, its tool call."""

    pid: int
    sock: socket.socket
    tool_call: pb.ToolCall
    key: bytes
    reaped: bool = False
    usage_files: FinalUsage | None = None  # opened once placed, read when it ended

    def final_usage(self) -> GroupUsage | None:
        """The group's usage read directly, or None when the daemon must end it
        (something outlived the command and must be killed, or nothing is readable)."""
        files, self.usage_files = self.usage_files, None
        if files is None:
            return None
        try:
            return files.read()
        except (OSError, ValueError):
            return None
        finally:
            files.close()

    def alive(self) -> bool:
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid = self.pid
        if pid:
            self.reaped = True
            self.sock.close()
        return not pid

    def execute(
        self, program: bytes, args: Sequence[str], env: bytes, cwd: bytes, stdio: list[int]
    ) -> int:
        """Hand over the command; 0 once it executes, else the errno of chdir/execve."""
        argv = b"".join(os.fsencode(a) + b"\0" for a in args)
        strings = program + b"\0" + cwd + b"\0" + argv + env
        envc = env.count(b"\0")
        header = _HEADER.pack(len(strings), len(args), envc)
        try:
            self.sock.sendmsg(
                [header], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", stdio))]
            )
            self.sock.sendall(strings)
        except OSError as e:
            raise LauncherGone(f"launcher {self.pid}: {e}") from e
        reply = b""
        while len(reply) < 4:
            chunk = self.sock.recv(4 - len(reply))
            if not chunk:
                break
            reply += chunk
        self.sock.close()
        return int.from_bytes(reply, "little", signed=True) if len(reply) == 4 else 0

    def abort(self) -> None:
        """Never run anything: the launcher reads EOF and exits 127. Reaped in the
        background: it may not exit for a while (its session frozen by agentd, which
        kills it when the session closes), and the caller must not wait for that."""
        if self.usage_files is not None:
            self.usage_files.close()
            self.usage_files = None
        self.sock.close()
        if not self.reaped:
            _reaper.reap(self.pid)
            self.reaped = True


class _Reaper:
    """One thread that waits for aborted launchers, so none stays a zombie."""

    def __init__(self) -> None:
        self._pids: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def reap(self, pid: int) -> None:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        self._pids.put(pid)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="agentd-sdk-reaper", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            pid = self._pids.get()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


_reaper = _Reaper()


def spawn_waiting() -> tuple[int, socket.socket]:
    """Start `agentd-exec --ahead 3` with /dev/null stdio; returns its pid and our end.

    posix_spawn (vfork underneath, without the GIL: spawn.py) instead of subprocess:
    cheaper, and no Popen object whose finalizer could reap the pid the command's
    Popen will own.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        child_fd = theirs.fileno()
        if child_fd < LAUNCHER_SOCKET_FD:  # stdio closed in this process: keep it clear of 0-2
            child_fd = os.dup(child_fd)  # non-inheritable, numbered above 2
        path = launcher_path()
        pid = spawn_with_stdio_devnull(
            path, [path, "--ahead", str(LAUNCHER_SOCKET_FD)], child_fd, LAUNCHER_SOCKET_FD
        )
        if child_fd != theirs.fileno():
            os.close(child_fd)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return pid, ours


def resolve_program(program: str, env: Mapping[str, str] | None) -> bytes:
    """The path execve gets: PATH (the tool call's env's, as subprocess) resolved here."""
    if os.sep in program:
        return os.fsencode(program)
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    found = shutil.which(program, path=path)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", program)
    return os.fsencode(found)


#: (a copy of os.environ's data, its encoding): encoding ~40 variables costs ~0.1 ms
#: on every run, comparing two dicts (in C) a microsecond.
_environ_cache: tuple[dict[bytes, bytes], bytes] = ({}, b"")


def encode_env(env: Mapping[str, str] | None) -> bytes:
    """`env` (None: this process's environment, as subprocess) as NUL-ended entries."""
    global _environ_cache
    if env is not None:
        return b"".join(os.fsencode(k) + b"=" + os.fsencode(v) + b"\0" for k, v in env.items())
    data = os.environb._data  # type: ignore[attr-defined]  # the dict behind os.environ
    cached_data, encoded = _environ_cache
    if data != cached_data:
        encoded = b"".join(k + b"=" + v + b"\0" for k, v in data.items())
        _environ_cache = (dict(data), encoded)
    return encoded


class AheadPopen(subprocess.Popen):  # type: ignore[type-arg]
    """A Popen whose child is a launcher placed ahead instead of a fresh fork.

    subprocess.Popen does the stdio plumbing (pipes, text mode, communicate, wait);
    only `_execute_child` (the fork and exec) is replaced: the child-side fds are
    sent to the waiting launcher, which becomes this Popen's process.
    """

    def __init__(self, launcher: WaitingLauncher, program: bytes, *args: Any, **kwargs: Any):
        self._launcher = launcher
        self._program = program
        super().__init__(*args, **kwargs)

    def _execute_child(  # type: ignore[override]
        self,
        args: Sequence[str],
        executable: Any,
        preexec_fn: Any,
        close_fds: bool,
        pass_fds: Any,
        cwd: Any,
        env: Mapping[str, str] | None,
        startupinfo: Any,
        creationflags: int,
        shell: bool,
        p2cread: int,
        p2cwrite: int,
        c2pread: int,
        c2pwrite: int,
        errread: int,
        errwrite: int,
        *unused: Any,
    ) -> None:
        stdio = [p2cread, c2pwrite, errwrite]
        stdio = [fd if fd != -1 else i for i, fd in enumerate(stdio)]
        launcher = self._launcher
        try:
            code = launcher.execute(
                self._program,
                args,
                encode_env(env),
                os.fsencode(cwd) if cwd is not None else b"",
                stdio,
            )
        finally:
            # The child's ends, closed in the parent exactly as subprocess does.
            devnull = getattr(self, "_devnull", None)
            if p2cread != -1 and p2cwrite != -1 and p2cread != devnull:
                os.close(p2cread)
            if c2pwrite != -1 and c2pread != -1 and c2pwrite != devnull:
                os.close(c2pwrite)
            if errwrite != -1 and errread != -1 and errwrite != devnull:
                os.close(errwrite)
            if devnull is not None:
                os.close(devnull)
            self._closed_child_pipe_fds = True
        if code:
            launcher.abort()  # it exits 127 after reporting; reap it
            name = cwd if code == errno.ENOENT and cwd and not os.path.isdir(cwd) else args[0]
            raise OSError(code, os.strerror(code), name)
        self.pid = launcher.pid
        self._child_created = True


@dataclass
class _Report:
    tool_call_id: str
    label: str
    started_at: float
    exit: pb.ExitStatus | None = None
    due: float = 0.0  # time.monotonic() from which it is sent


class Reporter:
    """Tells the daemon, off the critical path, that tool calls begun ahead started and
    ended. A start still queued when its end arrives is folded into the end (one RPC).
    While the daemon is unreachable (a restart) a report is retried, so the daemon
    still learns the exit status; past REPORT_RETRY_SECONDS it is dropped, and the
    daemon's reaper ends the tool call with an unknown status."""

    def __init__(self, call: Callable[[str, Any], Any]) -> None:
        self._call = call
        self._queue: collections.deque[_Report] = collections.deque()
        self._cond = threading.Condition()
        self._busy = False
        self._flushing = 0  # flush() in progress: delayed starts are due at once
        self._lent = 0  # ends taken by take_ends() and not yet given back
        self._thread: threading.Thread | None = None
        #: False once the daemon turned out not to apply folded ends (an older one).
        self.fold = True

    def started(self, tool_call_id: str, label: str, started_at: float) -> None:
        due = time.monotonic() + START_REPORT_DELAY_SECONDS
        self._put(_Report(tool_call_id, label, started_at, due=due))

    def ended(self, tool_call_id: str, label: str, started_at: float, exit: pb.ExitStatus) -> None:
        due = time.monotonic() + END_FOLD_SECONDS if self.fold else 0.0
        self._put(_Report(tool_call_id, label, started_at, exit, due=due))

    def discarded(self, tool_call_id: str) -> None:
        """A launcher placed ahead was dropped unused: the daemon forgets its tool call
        now rather than when its reaper notices the empty group."""
        self._put(_Report(tool_call_id, "", 0.0, pb.ExitStatus()))

    def idle(self) -> bool:
        """Nothing queued or being sent (flush() would return at once)."""
        with self._cond:
            return not self._queue and not self._busy and not self._lent

    def take_ends(self) -> list[_Report]:
        """The queued ends, to be folded into a placement (BeginToolCallRequest.ends).
        Until give_back(), flush() waits for them as for reports being sent."""
        with self._cond:
            if not self.fold:
                return []
            ends = [r for r in self._queue if r.exit is not None]
            if ends:
                self._queue = collections.deque(r for r in self._queue if r.exit is None)
                self._lent += 1
            return ends

    def give_back(self, ends: list[_Report], handled: int) -> None:
        """After the placement: the daemon handled the first `handled` of `ends` (all,
        or none when the call failed or the daemon predates folding); the rest are
        sent one by one, with their retries."""
        if not ends:
            return
        with self._cond:
            self._lent -= 1
            for report in ends[handled:]:
                report.due = 0.0
                self._queue.append(report)
            self._ensure_thread()
            self._cond.notify_all()

    @staticmethod
    def end_request(report: _Report) -> pb.EndToolCallRequest:
        assert report.exit is not None
        started_at = _timestamp(report.started_at) if report.started_at else None
        return pb.EndToolCallRequest(
            tool_call_id=report.tool_call_id,
            exit=report.exit,
            label=report.label,
            started_at=started_at,
        )

    def take_start(self, tool_call_id: str) -> bool:
        """Withdraw a queued start (the caller reports the end itself, synchronously)."""
        with self._cond:
            for report in self._queue:
                if report.tool_call_id == tool_call_id and report.exit is None:
                    self._queue.remove(report)
                    return True
        return False

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued report is sent; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if not self._queue and not self._busy and not self._lent:
                return True  # the common case, without waking the thread
            self._flushing += 1
            self._cond.notify_all()
        try:
            return self._wait_empty(deadline)
        finally:
            with self._cond:
                self._flushing -= 1

    def _wait_empty(self, deadline: float) -> bool:
        with self._cond:
            while self._queue or self._busy or self._lent:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _put(self, report: _Report) -> None:
        with self._cond:
            if report.exit is not None:
                # Folded: the end carries the label and start time.
                self._queue = collections.deque(
                    r for r in self._queue if r.tool_call_id != report.tool_call_id
                )
            self._queue.append(report)
            self._ensure_thread()
            self._cond.notify_all()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="agentd-sdk-reporter", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                report = self._next_due()
                self._busy = True
            self._send(report)

    def _next_due(self) -> _Report:
        """The oldest report that is due (ends are at once); waits for one."""
        while True:
            now = time.monotonic()
            for report in self._queue:
                if report.due <= now or self._flushing:
                    self._queue.remove(report)
                    return report
            if not self._queue:
                self._cond.notify_all()  # flush() waits for this
            wait = min((r.due for r in self._queue), default=now + 3600) - now
            self._cond.wait(max(wait, 0.001))

    def _send(self, report: _Report) -> None:
        started_at = _timestamp(report.started_at) if report.started_at else None
        if report.exit is None:
            method, request = (
                "StartToolCall",
                pb.StartToolCallRequest(
                    tool_call_id=report.tool_call_id, label=report.label, started_at=started_at
                ),
            )
        else:
            method, request = "EndToolCall", self.end_request(report)
        deadline = time.monotonic() + REPORT_RETRY_SECONDS
        delay = 0.05
        while True:
            try:
                self._call(method, request)
                return
            except DaemonUnavailable as e:
                if time.monotonic() + delay > deadline:
                    log.warning("report.dropped", method=method, error=str(e))
                    return
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            except NotFound as e:
                # Closing the session ended it already (expected for a discarded launcher).
                log.debug("report.refused", method=method, error=str(e))
                return
            except AgentdError as e:
                log.info("report.refused", method=method, error=str(e))
                return
            except Exception as e:  # the reporter must survive anything
                log.warning("report.failed", method=method, error=str(e))
                return


def _timestamp(seconds: float) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


@dataclass(eq=False)  # identity: kept in a WeakSet
class LauncherPool:
    """One session's launchers placed ahead, for the intent of its latest tool call.

    `depth` of them (default 2): tool calls back to back find the next one placed
    while the placement that replaces the one just used is still under way.
    """

    #: (intent, pid) -> its tool call; (intent, pid, more_pids) -> the first one's, with
    #: the others in `more_placed`.
    begin: Callable[..., pb.ToolCall]
    discard: Callable[[str], None]  # tell the daemon an unused launcher is gone
    depth: int = AHEAD_DEPTH
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ready: collections.deque[WaitingLauncher] = field(default_factory=collections.deque)
    _preparing: bytes | None = None  # the key of the placement under way
    _wanted: tuple[pb.Intent, bytes] | None = None  # what to keep `depth` launchers for
    _worker: threading.Thread | None = None
    _closed: bool = False

    def __post_init__(self) -> None:
        # Signalled on every change (a launcher ready, a placement over, close).
        self._changed = threading.Condition(self._lock)

    def take(self, key: bytes, wait: float = TAKE_WAIT_SECONDS) -> WaitingLauncher | None:
        """A placed launcher for `key`, or None (then one is prepared for next time).
        Waits at most `wait` seconds for one being placed for `key`."""
        deadline = time.monotonic() + wait
        dead: list[WaitingLauncher] = []
        try:
            with self._lock:
                while True:
                    while self._ready and self._ready[0].key == key:
                        ready = self._ready.popleft()
                        if ready.alive():
                            return ready
                        dead.append(ready)
                    left = deadline - time.monotonic()
                    if self._preparing != key or left <= 0:
                        return None
                    self._changed.wait(left)
        finally:
            for launcher in dead:
                launcher.abort()

    def prepare(self, intent: pb.Intent) -> None:
        """Keep `depth` launchers placed for `intent` in the background, replacing those
        placed for another.

        Only signals the pool's worker thread: starting a thread here would cost the
        caller ~1 ms (Thread.start waits for it, then it takes the GIL).
        """
        key = intent_key(intent)
        with self._lock:
            if self._closed:
                return
            stale = [r for r in self._ready if r.key != key]
            self._ready = collections.deque(r for r in self._ready if r.key == key)
            self._wanted = (intent, key)
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._work, name="agentd-sdk-ahead", daemon=True
                )
                self._worker.start()
            self._changed.notify_all()
        for launcher in stale:
            launcher.abort()
            self.discard(launcher.tool_call.id)

    def _short(self) -> bool:
        return self._wanted is not None and len(self._ready) < self.depth

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._short() and not self._closed:
                    self._changed.wait()
                if self._closed:
                    self._worker = None
                    self._changed.notify_all()
                    return
                assert self._wanted is not None
                intent, key = self._wanted
                self._preparing = key
                # Back to back the runs take launchers faster than one placement
                # returns: all that are missing go in one RPC (docs/placement.md).
                count = self.depth - len(self._ready)
            if not self._prepare(intent, key, max(count, 1)):
                with self._lock:  # not again until the next prepare(): no retry loop
                    if self._wanted is not None and self._wanted[1] == key:
                        self._wanted = None

    def _prepare(self, intent: pb.Intent, key: bytes, count: int = 1) -> bool:
        """Place `count` launchers for `intent` (one RPC); False if none was placed."""
        launchers: list[WaitingLauncher] = []
        try:
            for _ in range(count):
                pid, sock = spawn_waiting()
                launchers.append(
                    WaitingLauncher(pid=pid, sock=sock, tool_call=pb.ToolCall(), key=key)
                )
            pids = [launcher.pid for launcher in launchers]
            if count == 1:
                placed = [self.begin(intent, pids[0])]
            else:
                first = self.begin(intent, pids[0], pids[1:])
                placed = [first, *first.more_placed]
            # A daemon that placed fewer (one refused, or one predating `more_pids`):
            # the rest never got a group and are aborted.
            for launcher in launchers[len(placed) :]:
                launcher.abort()
            launchers = launchers[: len(placed)]
            for launcher, tool_call in zip(launchers, placed, strict=True):
                launcher.tool_call = tool_call
                try:
                    launcher.usage_files = FinalUsage(tool_call.usage_paths)
                except (OSError, KeyError):  # not readable here: the daemon reports usage
                    launcher.usage_files = None
        except Exception as e:  # the ordinary path still works; it reports errors
            log.debug("ahead.prepare_failed", error=str(e))
            for launcher in launchers:
                launcher.abort()
            launchers = []
        placed_any = bool(launchers)
        with self._lock:
            self._preparing = None
            wanted = self._wanted is not None and self._wanted[1] == key
            if launchers and not self._closed and wanted:
                self._ready.extend(launchers)
                launchers = []
            self._changed.notify_all()
        for launcher in launchers:  # closed or replaced meanwhile
            launcher.abort()
            self.discard(launcher.tool_call.id)
        return placed_any

    def ready_ids(self) -> list[str]:
        """The tool calls of the launchers placed, the one the next run takes first."""
        with self._lock:
            return [r.tool_call.id for r in self._ready]

    def wait_prepared(self, timeout: float) -> None:
        """Until `depth` launchers are placed (or placing failed, or timeout)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while (self._short() or self._preparing is not None) and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._changed.wait(left)

    def close(self) -> None:
        """Abort the waiting launchers (the daemon ends their tool calls with the session)."""
        with self._lock:
            self._closed = True
            self._changed.notify_all()
            # One being placed now is aborted by the worker when the placement returns.
            ready, self._ready = list(self._ready), collections.deque()
        for launcher in ready:
            launcher.abort()
            self.discard(launcher.tool_call.id)
