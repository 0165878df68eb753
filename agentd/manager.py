"""Sessions and tool calls: validation, ownership, cgroup lifecycle, usage, recovery.

This is the only module that decides what happens to a session's or a tool call's
group; the cgroup backend only carries it out. All state changes take `_lock`
(cgroupfs operations are sub-millisecond, so one lock keeps the code obvious and
is not a bottleneck at tool-call rates), and every change is written to the
store before the call returns, so a daemon killed at any point can recover.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import secrets
import signal
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import structlog

from agentd.cgroups.base import CgroupBackend, CgroupError, GroupBusyError, GroupLimits
from agentd.enforcement.cpu_idle import BatchIdle
from agentd.enforcement.priorities import PriorityTable
from agentd.errors import (
    AgentdError,
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
)
from agentd.events import Event, EventBus
from agentd.model import (
    ExitStatus,
    Intent,
    Priority,
    Resources,
    Session,
    ToolCall,
    Usage,
)
from agentd.store import Store
from agentd.tracking import Tracker

if TYPE_CHECKING:
    from agentd.cgroups.warmer import MigrationWarmer
    from agentd.enforcement.guard import Guard

log = structlog.get_logger("agentd.manager")

_SESSION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TOOL_CALL_ID = re.compile(r"^tc-[0-9a-f]{12}$")
LAUNCHER_NAME = "agentd-exec"
RECENT_TOOL_CALLS = 1024
#: Finished process trees kept in the store (the tracker keeps the newest in memory).
STORED_TREES = 2000
#: Trees are saved at most this often, the due ones in one batch.
TREE_SAVE_BATCH_SECONDS = 0.1
#: Trees saved between two prunings of the stored ones down to STORED_TREES (pruning
#: walks the table: once per tree it cost more than saving the tree).
TREES_PRUNE_EVERY = 100
#: Wait this long after a tool call ends before saving its tree: the exits of the
#: processes killed with it are still on their way from the kernel.
TREE_SAVE_DELAY_SECONDS = 1.0
#: Launchers a session may have placed ahead and waiting (docs/placement.md): each
#: holds a process and a group, so an agent cannot hoard them.
MAX_WAITING_PER_SESSION = 4


@dataclass(frozen=True)
class Caller:
    """Who is calling, as the kernel told us (peer credentials)."""

    uid: int
    gid: int
    pid: int

    @property
    def is_root(self) -> bool:
        return self.uid == 0


@dataclass(frozen=True)
class NodeLimits:
    """What the node offers to sessions and what a session gets by default."""

    allocatable_memory: int
    cpus: float
    default_session: Resources
    tool_call_grace_seconds: float = 30.0


def _new_tool_call_id() -> str:
    return f"tc-{secrets.token_hex(6)}"


def _proc_status(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except (FileNotFoundError, ProcessLookupError):
        return {}


def _runs_launcher(pid: int) -> bool:
    """Whether `pid` is an agentd-exec that has not executed its command yet."""
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")) == LAUNCHER_NAME
    except OSError:
        return False


class Manager:
    def __init__(
        self,
        backend: CgroupBackend,
        store: Store,
        node: NodeLimits,
        spares_per_session: int = 2,
        tracker: Tracker | None = None,
        bus: EventBus | None = None,
        priorities: PriorityTable | None = None,
    ) -> None:
        self.backend = backend
        # Priority class -> CPU weight, memory protection, throttle settings ([priorities]).
        self.priorities = priorities or PriorityTable.default()
        self.batch_idle = BatchIdle(backend, self.priorities.batch_cpu_idle)
        self.store = store
        self.node = node
        self.tracker = tracker
        self.bus = bus if bus is not None else EventBus()
        self._lock = threading.RLock()
        self._sessions: dict[str, Session] = {}
        self._tool_calls: dict[str, ToolCall] = {}  # running ones only
        # Tool calls noticed running before the SDK's report: labelled from /proc until
        # the report brings the agent's own label.
        self._label_from_proc: set[str] = set()
        self._empty_since: dict[str, float] = {}
        # Empty tool-call groups made ahead of time, per session: creating a group costs
        # a mkdir in every hierarchy (5 on v1), which would otherwise sit on the
        # BeginToolCall path. A spare is keyed by the session's creation time so that a
        # spare of a closed session never serves a new session of the same name.
        self.spares_per_session = spares_per_session
        self._spares: dict[tuple[str, float], list[str]] = {}
        # Taken while a spare is made and while a session's group is removed; never
        # while waiting for `_lock` (close_session takes it inside `_lock`).
        self._spare_lock = threading.Lock()
        self.spares_wanted = threading.Event()
        # Ended tool calls whose processes may still report events (they outlive the
        # command until killed); bounded.
        self._recent: OrderedDict[str, ToolCall] = OrderedDict()
        # Groups of ended tool calls, removed off the request path (see _finish).
        self._removals: queue.SimpleQueue[str] = queue.SimpleQueue()
        # Trees of ended tool calls, saved to the store once their last events are in.
        self._tree_saves: deque[tuple[float, ToolCall]] = deque()
        self._trees_unpruned = TREES_PRUNE_EVERY  # the first batch prunes
        self._next_tree_batch = 0.0
        #: time.monotonic() of the last move of a process into a tool call's group.
        self.last_placement = 0.0
        # The migration warmer (set by the daemon): told of every placement (they warm
        # the kernel's semaphore too) and of sessions opening and closing.
        self.warmer: MigrationWarmer | None = None
        # The in-kernel guards (agentd/enforcement), set by the daemon when enabled.
        self.guard: Guard | None = None

    # ---- sessions ---------------------------------------------------------------

    def create_session(
        self,
        caller: Caller,
        name: str,
        budget: Resources,
        priority: Priority | None,
        exist_ok: bool = False,
    ) -> Session:
        if name and not _SESSION_NAME.match(name):
            raise InvalidArgumentError("name", f"{name!r} must match [A-Za-z0-9_.-]{{1,64}}")
        budget = self._complete_budget(budget)
        with self._lock:
            if name and name in self._sessions:
                existing = self._sessions[name]
                if exist_ok and (existing.owner_uid == caller.uid):
                    return existing
                if existing.owner_uid != caller.uid and not caller.is_root:
                    raise PermissionDeniedError(
                        f"session {name!r} exists and belongs to another user"
                    )
                raise AlreadyExistsError(f"session {name!r} is already open")
            session_id = name or f"s-{secrets.token_hex(4)}"
            session = Session(
                id=session_id,
                owner_uid=caller.uid,
                budget=budget,
                priority=priority or Priority.NORMAL,
                created_at=time.time(),
            )
            try:
                # A leftover group of a closed session with this name is empty by
                # construction (closing kills and removes); clear it if a crash left one.
                if self.backend.exists(session.cgroup_rel):
                    self.backend.remove(session.cgroup_rel)
                self.backend.create(session.cgroup_rel, self._session_limits(session))
            except CgroupError as e:
                with contextlib.suppress(CgroupError):
                    self.backend.remove(session.cgroup_rel)
                raise UnavailableError(f"could not create the session's cgroup: {e}") from e
            self.store.save_session(session)
            self._sessions[session.id] = session
            self._sessions_changed()
        self.spares_wanted.set()
        log.info("session.created", session=session.id, uid=caller.uid, budget=budget.as_dict())
        details = {k: str(v) for k, v in budget.as_dict().items() if v is not None}
        self.bus.publish(Event(session.id, "", session.owner_uid, "session_opened", details))
        return session

    def get_session(self, caller: Caller, session_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise NotFoundError("session", session_id)
            self._check_owner(caller, session.owner_uid, f"session {session_id!r}")
            return session

    def list_sessions(self, caller: Caller, include_closed: bool = False) -> list[Session]:
        with self._lock:
            sessions = [s for s in self._sessions.values() if self._visible(caller, s.owner_uid)]
        if include_closed:
            sessions += [
                s for s in self.store.closed_sessions() if self._visible(caller, s.owner_uid)
            ]
        return sessions

    def close_session(self, caller: Caller, session_id: str) -> tuple[Session, list[ToolCall]]:
        with self._lock:
            session = self.get_session(caller, session_id)
            # A session frozen by the pressure policy or the scheduler: on v1 its tasks
            # cannot die until thawed (killing a tool call thaws only its own group).
            with contextlib.suppress(CgroupError):
                self.backend.thaw(session.cgroup_rel)
            self._notice_starts(session_id)  # begun ahead, started, not reported yet
            ended = [
                self._finish(t, ExitStatus(), kill=True)
                for t in list(self._tool_calls.values())
                if t.session_id == session_id
            ]
            ended = [t for t in ended if not t.waiting]  # unused launchers were no tool calls
            with self._spare_lock:  # no spare is being made in it (make_spares)
                self._spares.pop((session.id, session.created_at), None)
                try:
                    self.backend.remove(session.cgroup_rel)
                except CgroupError as e:
                    raise UnavailableError(f"could not remove the session's cgroup: {e}") from e
            session.closed_at = time.time()
            self.store.save_session(session)
            del self._sessions[session_id]
            self._sessions_changed()
        log.info("session.closed", session=session_id, tool_calls_ended=len(ended))
        self.bus.publish(
            Event(
                session_id,
                "",
                session.owner_uid,
                "session_closed",
                {"tool_calls_ended": str(len(ended))},
            )
        )
        return session, ended

    def has_open_sessions(self) -> bool:
        return bool(self._sessions)

    def _sessions_changed(self) -> None:
        """The one path after a session opened or closed (or the set was recovered),
        with `_lock` held: batch sessions' cpu.idle follows the interactive ones, and the
        migration warmer runs while any session is open (a pipe write, only when that
        changed)."""
        self.batch_idle.sync(self._sessions.values())
        if self.warmer is not None:
            self.warmer.refresh()

    def running_count(self, session_id: str) -> int:
        with self._lock:
            self._notice_starts(session_id)
            return sum(
                1 for t in self._tool_calls.values() if t.session_id == session_id and not t.waiting
            )

    # ---- tool calls -------------------------------------------------------------

    def begin_tool_call(
        self, caller: Caller, session_id: str, intent: Intent, pid: int, ahead: bool = False
    ) -> ToolCall:
        """Place the launcher `pid`; `ahead`: it waits for a command the SDK sends later,
        and the tool call is WAITING until start_tool_call()."""
        with self._lock:
            session = self.get_session(caller, session_id)
            limits = self._tool_call_limits(session, intent)
            exe = self._check_launcher(caller, pid)
            if ahead:
                self._check_waiting_cap(session)
            tool_call = self._place(session, caller.uid, intent, limits, pid, waiting=ahead)
            # Still before the launcher's go: the tracker sees every fork of the command.
            self._track_begin(tool_call, [pid], exe=exe)
        if not ahead:  # one placed ahead is announced when its command starts
            self._publish(tool_call, "tool_call_begun")
        log.debug("tool_call.begun", tool_call=tool_call.id, session=session.id, pid=pid)
        return tool_call

    def _check_waiting_cap(self, session: Session) -> None:
        waiting = [t for t in self._tool_calls.values() if t.session_id == session.id and t.waiting]
        if len(waiting) >= MAX_WAITING_PER_SESSION:
            # Only launchers still idle hold a place: back to back, the SDK keeps 2
            # placed while the reports of the last tool calls (their launchers ran a
            # command, maybe exited already) are still on their way.
            waiting = [t for t in waiting if _runs_launcher(t.launcher_pid)]
        if len(waiting) >= MAX_WAITING_PER_SESSION:
            raise ResourceExhaustedError(
                f"session {session.id!r} already has {len(waiting)} launchers placed ahead "
                f"(the limit is {MAX_WAITING_PER_SESSION})"
            )

    def start_tool_call(
        self, caller: Caller, tool_call_id: str, label: str, started_at: float | None
    ) -> ToolCall:
        """A tool call begun ahead got its command (reported by the SDK afterwards)."""
        with self._lock:
            tool_call = self._find_tool_call(caller, tool_call_id)
            if not tool_call.running:
                raise FailedPreconditionError(f"tool call {tool_call_id!r} has ended")
            started = self._mark_started(tool_call, label, started_at)
            if not started and tool_call.id in self._label_from_proc:
                # Noticed first (the report came late): the agent's label wins over the
                # command line read from /proc, which may be a shell or an interpreter.
                self._label_from_proc.discard(tool_call.id)
                if len(label) > 4096:
                    raise InvalidArgumentError("label", "is longer than 4096 characters")
                tool_call.intent = replace(tool_call.intent, label=label)
                # and its start: the notice kept the launcher's placement time, and
                # the wall time (the predictor's dataset) counted the idle launcher
                if started_at is not None:
                    tool_call.started_at = min(max(started_at, tool_call.started_at), time.time())
                self.store.save_tool_call(tool_call)
            elif started:
                self.store.save_tool_call(tool_call)
        if started:
            self._publish(tool_call, "tool_call_begun")
        return tool_call

    def _notice_starts(self, session_id: str) -> None:
        """Launchers of the session placed ahead whose command started before the SDK's
        report arrived (it comes ~50 ms late, or never if the SDK died) count as running
        tool calls: closing, evicting or counting must not take them for unused ones."""
        for tool_call in list(self._tool_calls.values()):
            if tool_call.waiting and tool_call.session_id == session_id:
                self._notice_start(tool_call, [tool_call.launcher_pid])

    def _notice_start(self, tool_call: ToolCall, pids: list[int]) -> None:
        """A launcher placed ahead that runs something else now received its command,
        whether or not the SDK's report arrived (it may be lost with a daemon restart):
        the tool call is running, labelled with the command line the kernel shows."""
        pid = tool_call.launcher_pid
        if pid not in pids:
            return  # gone: the reaper ends it
        # The reaper and the counts ask this of every waiting launcher every second:
        # the command line is read only once the launcher has executed something.
        if _runs_launcher(pid):
            return  # still waiting (or gone: the reaper ends it)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().rstrip(b"\0").split(b"\0")
        except OSError:
            return
        if not argv or argv == [b""]:
            return  # exited meanwhile (a zombie has no command line)
        label = b" ".join(argv).decode(errors="replace")[:4096]
        if self._mark_started(tool_call, label, None):
            self._label_from_proc.add(tool_call.id)
            self.store.save_tool_call(tool_call)
            log.info("tool_call.start_noticed", tool_call=tool_call.id, label=label)
            self._publish(tool_call, "tool_call_begun")

    def _mark_started(self, tool_call: ToolCall, label: str, started_at: float | None) -> bool:
        """False if it was not waiting (begun the ordinary way, or already reported:
        the first report stands)."""
        if len(label) > 4096:
            raise InvalidArgumentError("label", "is longer than 4096 characters")
        if not tool_call.waiting:
            return False
        tool_call.waiting = False
        session = self._sessions.get(tool_call.session_id)
        if session is not None:
            session.tool_calls_total += 1
        tool_call.intent = replace(tool_call.intent, label=label)
        if started_at is not None:
            # The SDK's clock; kept between placement and now so the wall time is sane.
            tool_call.started_at = min(max(started_at, tool_call.started_at), time.time())
        return True

    def validate_intent(self, caller: Caller, session_id: str, intent: Intent) -> None:
        with self._lock:
            self._tool_call_limits(self.get_session(caller, session_id), intent)

    def adopt_child(
        self, session_id: str, owner_uid: int, intent: Intent, pid: int, fork_ns: int
    ) -> ToolCall | None:
        """An executor's child becomes a tool call (no SDK): placed as soon as its fork
        is seen. None if the session is gone or the child already exited."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            limits = self._tool_call_limits(session, intent)
            try:
                tool_call = self._place(session, owner_uid, intent, limits, pid)
            except (FailedPreconditionError, UnavailableError) as e:
                log.info("executor.child_not_placed", pid=pid, error=e.message)
                return None
            if self.tracker is not None:
                try:
                    self.tracker.adopt(tool_call.id, pid, fork_ns)
                except Exception as e:
                    log.warning("tracking.adopt_failed", tool_call=tool_call.id, error=str(e))
            self._guard_begin(tool_call, [pid])
        self._publish(tool_call, "tool_call_begun")
        return tool_call

    def adopt_escaped(self, root_pid: int, pid: int) -> bool:
        """A process the adopted child `root_pid` forked before it was placed: move it
        into the child's tool call too."""
        with self._lock:
            tool_call = next(
                (t for t in self._tool_calls.values() if t.launcher_pid == root_pid), None
            )
            if tool_call is None:
                return False
            tool_call_id = tool_call.id
            try:
                self.backend.move(tool_call.cgroup_rel, pid)
            except CgroupError:
                return False  # already gone
            if self.tracker is not None:
                self.tracker.adopt_escaped(tool_call_id, pid)
        return True

    def end_adopted(self, tool_call_id: str, exit_code: int | None, signal: int | None) -> None:
        """The root of an adopted tool call exited: nobody else will report its end."""
        with self._lock:
            tool_call = self._tool_calls.get(tool_call_id)
            if tool_call is None:
                return
            known = exit_code is not None or signal is not None
            status = ExitStatus(known=known, exit_code=exit_code or 0, signal=signal or 0)
            self._finish(tool_call, status, kill=True)

    def _place(
        self,
        session: Session,
        owner_uid: int,
        intent: Intent,
        limits: Resources,
        pid: int,
        waiting: bool = False,
    ) -> ToolCall:
        """Create (or take a spare) group with the limits and move `pid` into it."""
        spare = self._take_spare(session)
        tool_call = ToolCall(
            id=spare or _new_tool_call_id(),
            session_id=session.id,
            owner_uid=owner_uid,
            intent=intent,
            limits=limits,
            started_at=time.time(),
            launcher_pid=pid,
            waiting=waiting,
        )
        rel = tool_call.cgroup_rel
        group_limits = self._group_limits(limits, intent.priority or session.priority)
        if self.guard is not None:
            group_limits = self.guard.group_limits(group_limits)
        try:
            if spare:
                self.backend.set_limits(rel, group_limits)
            else:
                self.backend.create(rel, group_limits)
            self.backend.move(rel, pid)
            self.last_placement = time.monotonic()
            if self.warmer is not None:
                self.warmer.placed()
        except CgroupError as e:
            with contextlib.suppress(CgroupError):
                self.backend.remove(rel)
            if not os.path.exists(f"/proc/{pid}"):
                raise FailedPreconditionError(f"pid {pid} exited before it was placed") from e
            raise UnavailableError(f"could not place pid {pid} in its cgroup: {e}") from e
        # The count is not persisted per tool call (a write on the hot path); the
        # store recounts it from the tool_calls table when the session is loaded.
        if not waiting:  # one placed ahead counts once its command starts
            session.tool_calls_total += 1
        self.store.save_tool_call(tool_call)
        self._tool_calls[tool_call.id] = tool_call
        return tool_call

    def end_tool_call(
        self,
        caller: Caller,
        tool_call_id: str,
        exit_status: ExitStatus,
        label: str = "",
        started_at: float | None = None,
    ) -> ToolCall:
        """`label`/`started_at`: the start of a tool call begun ahead, folded into its end."""
        with self._lock:
            tool_call = self._find_tool_call(caller, tool_call_id)
            if not tool_call.running:
                return tool_call  # ending twice is harmless: the first report stands
            if (label or started_at is not None) and self._mark_started(
                tool_call, label, started_at
            ):
                self._publish(tool_call, "tool_call_begun")
            return self._finish(tool_call, exit_status, kill=True)

    def end_tool_calls(
        self, caller: Caller, ends: list[tuple[str, ExitStatus, str, float | None]]
    ) -> list[ToolCall]:
        """Ends reported together, folded into the next placement (tool call id, exit
        status, label, started_at each, as end_tool_call takes them): all checked for
        form first (InvalidArgumentError naming the entry, nothing applied), then applied
        in order. One refused (unknown, another user's) is logged and skipped: the
        SDK's reporter, which sent them one by one before, dropped those errors too."""
        for i, (tool_call_id, _, label, _) in enumerate(ends):
            if not _TOOL_CALL_ID.match(tool_call_id):
                raise InvalidArgumentError(
                    f"ends[{i}].tool_call_id", f"{tool_call_id!r} is not a tool call id"
                )
            if len(label) > 4096:
                raise InvalidArgumentError(f"ends[{i}].label", "is longer than 4096 characters")
        ended = []
        for tool_call_id, exit_status, label, started_at in ends:
            try:
                ended.append(
                    self.end_tool_call(caller, tool_call_id, exit_status, label, started_at)
                )
            except AgentdError as e:
                log.info("tool_call.folded_end_refused", tool_call=tool_call_id, error=str(e))
        return ended

    def kill_tool_call(self, caller: Caller, tool_call_id: str, sig: int) -> ToolCall:
        with self._lock:
            tool_call = self._find_tool_call(caller, tool_call_id)
            if not tool_call.running:
                raise FailedPreconditionError(f"tool call {tool_call_id!r} has ended")
            try:
                self.backend.kill(tool_call.cgroup_rel, sig)
            except CgroupError as e:
                raise UnavailableError(str(e)) from e
            return self._with_live_usage(tool_call)

    def get_tool_call(self, caller: Caller, tool_call_id: str) -> ToolCall:
        with self._lock:
            tool_call = self._find_tool_call(caller, tool_call_id)
            return self._with_live_usage(tool_call) if tool_call.running else tool_call

    def list_tool_calls(
        self, caller: Caller, session_id: str | None, include_ended: bool
    ) -> list[ToolCall]:
        with self._lock:
            if session_id:
                self.get_session(caller, session_id)
            running = [
                self._with_live_usage(t)
                for t in self._tool_calls.values()
                if (not session_id or t.session_id == session_id)
                and self._visible(caller, t.owner_uid)
                and not t.waiting  # a launcher placed ahead is not a tool call yet
            ]
        ended: list[ToolCall] = []
        if include_ended:
            ended = [
                t
                for t in self.store.ended_tool_calls(session_id or None)
                if self._visible(caller, t.owner_uid)
            ]
        return running + ended

    def tool_calls_running(self) -> int:
        """Running tool calls; launchers placed ahead count once their command started."""
        with self._lock:
            for session_id in {t.session_id for t in self._tool_calls.values() if t.waiting}:
                self._notice_starts(session_id)
            return sum(1 for t in self._tool_calls.values() if not t.waiting)

    # ---- recovery and housekeeping ----------------------------------------------

    def recover(self) -> dict[str, int]:
        """Rebuild the in-memory state from the store and the cgroup tree after a start.

        Tool calls whose group still exists stay running (their processes were
        never touched); those whose group vanished are ended with an unknown exit
        status; groups nobody knows of are removed when empty and reported otherwise.
        """
        counts = {"sessions": 0, "tool_calls_running": 0, "tool_calls_lost": 0, "groups_removed": 0}
        with self._lock:
            for session in self.store.open_sessions():
                if not self.backend.exists(session.cgroup_rel):
                    self.backend.create(session.cgroup_rel, self._session_limits(session))
                self._sessions[session.id] = session
                counts["sessions"] += 1
            self._sessions_changed()  # a batch one may be left idle
            for tool_call in self.store.running_tool_calls():
                if tool_call.session_id in self._sessions and self.backend.exists(
                    tool_call.cgroup_rel
                ):
                    self._tool_calls[tool_call.id] = tool_call
                    counts["tool_calls_running"] += 1
                    pids = self.backend.procs(tool_call.cgroup_rel, recursive=True)
                    self._track_begin(tool_call, pids, seed=True)
                    if tool_call.waiting:
                        self._notice_start(tool_call, pids)
                else:
                    tool_call.ended_at = time.time()
                    self.store.save_tool_call(tool_call)
                    counts["tool_calls_lost"] += 1
            counts["groups_removed"] = self._remove_unknown_groups()
        log.info("state.recovered", **counts)
        return counts

    def _remove_unknown_groups(self) -> int:
        removed = 0
        for session_name in self.backend.children("sessions"):
            session_rel = f"sessions/{session_name}"
            known_session = session_name in self._sessions
            for child in self.backend.children(session_rel):
                if f"{child}" in self._tool_calls:
                    continue
                removed += self._remove_if_empty(f"{session_rel}/{child}")
            if not known_session:
                removed += self._remove_if_empty(session_rel)
        return removed

    def _remove_if_empty(self, rel: str) -> int:
        if self.backend.procs(rel, recursive=True):
            log.warning("cgroup.unknown_busy", group=self.backend.path_of(rel))
            return 0
        try:
            self.backend.remove(rel)
        except CgroupError as e:
            log.warning("cgroup.remove_failed", group=rel, error=str(e))
            return 0
        return 1

    def reap(self, now: float | None = None) -> list[ToolCall]:
        """End tool calls whose group has been empty for longer than the grace period:
        their caller died or forgot to report (the exit status is then unknown)."""
        now = time.time() if now is None else now
        reaped: list[ToolCall] = []
        with self._lock:
            for tool_call in list(self._tool_calls.values()):
                try:
                    procs = self.backend.procs(tool_call.cgroup_rel)
                except CgroupError:
                    procs = []
                empty = not procs
                if not empty:
                    self._empty_since.pop(tool_call.id, None)
                    if tool_call.waiting:
                        self._notice_start(tool_call, procs)
                    continue
                since = self._empty_since.setdefault(tool_call.id, now)
                if now - since >= self.node.tool_call_grace_seconds:
                    reaped.append(self._finish(tool_call, ExitStatus(), kill=False))
        for tool_call in reaped:
            log.info("tool_call.reaped", tool_call=tool_call.id, session=tool_call.session_id)
        return reaped

    def _take_spare(self, session: Session) -> str | None:
        spares = self._spares.get((session.id, session.created_at))
        self.spares_wanted.set()
        return spares.pop() if spares else None

    def make_spares(self) -> int:
        """Top up every open session's spare groups (called by a background thread).

        Each mkdir runs under `_spare_lock`, after checking that its session is still
        the same open one: a spare made while close_session removes the session's
        group would make that rmdir fail with EBUSY, so close_session removes it under
        the same lock. Not under `_lock`: requests do not wait for the mkdirs (~0.3 ms
        a spare, more when the CPU is busy), and a spare joins the session's list only
        once it is complete.
        """
        made = 0
        with self._lock:
            wanted = [
                (s.id, s.created_at, self.spares_per_session - len(self._spares.get(k, [])))
                for s in self._sessions.values()
                for k in [(s.id, s.created_at)]
            ]
        for session_id, created_at, missing in wanted:
            for _ in range(max(missing, 0)):
                with self._spare_lock:
                    session = self._sessions.get(session_id)
                    if session is None or session.created_at != created_at:
                        break  # closed meanwhile
                    tool_call_id = _new_tool_call_id()
                    try:
                        self.backend.create(f"{session.cgroup_rel}/{tool_call_id}", GroupLimits())
                    except CgroupError:
                        break  # cgroupfs refuses: the next call makes its group itself
                    self._spares.setdefault((session_id, created_at), []).append(tool_call_id)
                    made += 1
        return made

    def remove_pending(self) -> int:
        """Remove the groups of ended tool calls (called by a background thread)."""
        removed = 0
        while True:
            try:
                rel = self._removals.get_nowait()
            except queue.Empty:
                return removed
            try:
                self.backend.remove(rel)
                removed += 1
            except GroupBusyError:
                # Something got in after the end (only root can place processes
                # there): end it too rather than leak the group.
                with contextlib.suppress(CgroupError):
                    self.backend.kill(rel)
                    self.backend.remove(rel)
            except CgroupError as e:
                log.warning("tool_call.remove_failed", group=rel, error=str(e))

    def save_trees(self, now: float | None = None) -> int:
        """Store the trees of tool calls that ended more than the delay ago (called by a
        background thread, so the request path never serializes a tree)."""
        now = time.monotonic() if now is None else now
        if self.tracker is None or not self._tree_saves or now < self._next_tree_batch:
            return 0
        if self._tree_saves[0][0] > now:
            return 0
        self._next_tree_batch = now + TREE_SAVE_BATCH_SECONDS
        # All that are due in one batch: one read of the loss counters and one
        # transaction for all of them (per tree, these cost more than the tree itself).
        loss = self.tracker.loss()
        trees = []
        while self._tree_saves and self._tree_saves[0][0] <= now:
            _, tool_call = self._tree_saves.popleft()
            snapshot = self.tracker.snapshot(tool_call.id, loss)
            if snapshot is not None:
                ended_at = tool_call.ended_at or time.time()
                trees.append((tool_call.id, tool_call.session_id, ended_at, snapshot))
        if trees:
            self._trees_unpruned += len(trees)
            prune = self._trees_unpruned >= TREES_PRUNE_EVERY
            self.store.save_process_trees(trees, keep=STORED_TREES, prune=prune)
            if prune:
                self._trees_unpruned = 0
        return len(trees)

    def spare_ids(self) -> set[str]:
        with self._lock:
            return {i for ids in self._spares.values() for i in ids}

    # ---- internals --------------------------------------------------------------

    def _finish(self, tool_call: ToolCall, exit_status: ExitStatus, kill: bool) -> ToolCall:
        rel = tool_call.cgroup_rel
        leftovers = 0
        try:
            if kill and self.backend.procs(rel, recursive=True):
                # Whatever outlived the command (a daemonized child, a stuck pipe
                # reader) ends with its tool call, like a systemd scope.
                leftovers = self.backend.kill(rel)
            usage = self._usage(tool_call, time.time())
            if self.guard is not None:
                self.guard.end(tool_call, usage.oom_kills)
            # The group is empty now; rmdir in every hierarchy costs ~0.2 ms that the
            # caller need not wait for (remove_pending() does it within milliseconds).
            self._removals.put(rel)
            self.spares_wanted.set()
        except CgroupError as e:
            log.warning("tool_call.cgroup_error", tool_call=tool_call.id, error=str(e))
            usage = tool_call.usage
        tool_call.ended_at = time.time()
        tool_call.exit = exit_status
        processes = self._track_end(tool_call, exit_status)
        if processes is not None and not tool_call.waiting:  # see below: never recorded
            self._tree_saves.append((time.monotonic() + TREE_SAVE_DELAY_SECONDS, tool_call))
        tool_call.usage = replace(
            usage,
            wall_seconds=tool_call.ended_at - tool_call.started_at,
            processes=processes if processes is not None else usage.processes,
        )
        tool_call.leftover_processes_killed = leftovers
        self._tool_calls.pop(tool_call.id, None)
        self._label_from_proc.discard(tool_call.id)
        self._empty_since.pop(tool_call.id, None)
        if tool_call.waiting:
            # A launcher placed ahead that never got a command (its session closed, its
            # SDK went away): no tool call happened, so none is recorded.
            self.store.forget_tool_call(tool_call.id)
            return tool_call
        self.store.save_tool_call(tool_call)
        log.debug("tool_call.ended", tool_call=tool_call.id, exit=exit_status.shell_code)
        self._publish(tool_call, "tool_call_ended")
        return tool_call

    # ---- process tracking and events ----------------------------------------------

    def _track_begin(
        self, tool_call: ToolCall, pids: list[int], seed: bool = False, exe: str | None = None
    ) -> None:
        if self.tracker is None:
            return
        procs_file = f"{self.backend.path_of(tool_call.cgroup_rel)}/cgroup.procs"
        try:
            if seed:
                self.tracker.seed(tool_call.id, pids, procs_file)
            else:
                self.tracker.begin(tool_call.id, pids[0], procs_file, exe=exe)
        except Exception as e:
            log.warning("tracking.begin_failed", tool_call=tool_call.id, error=str(e))
        self._guard_begin(tool_call, pids)

    def _guard_begin(self, tool_call: ToolCall, pids: list[int]) -> None:
        session = self._sessions.get(tool_call.session_id)
        if self.guard is None or session is None:
            return
        try:
            self.guard.begin(tool_call, session, pids)
        except Exception as e:
            log.warning("guard.begin_failed", tool_call=tool_call.id, error=str(e))

    def _track_end(self, tool_call: ToolCall, exit_status: ExitStatus) -> int | None:
        """Tell the tracker the command ended; the number of processes it saw."""
        if self.tracker is None:
            return None
        known = exit_status.known
        tree = self.tracker.end(
            tool_call.id,
            exit_code=exit_status.exit_code if known and not exit_status.signal else None,
            signal=exit_status.signal or None,
        )
        if tree is None:
            return None
        with self.tracker.locked():
            return len(tree.nodes) + tree.dropped

    def process_tree(self, caller: Caller, tool_call_id: str) -> dict[str, object]:
        with self._lock:
            tool_call = self._find_tool_call(caller, tool_call_id)
        if self.tracker is None:
            raise FailedPreconditionError("process tracking is off on this node")
        snapshot = self.tracker.snapshot(tool_call.id) or self.store.process_tree(tool_call.id)
        if snapshot is None:
            raise FailedPreconditionError(
                f"the process tree of {tool_call_id!r} is no longer kept (only the most "
                "recent tool calls' trees are)"
            )
        return snapshot

    def session_of(self, tool_call_id: str) -> tuple[str, int] | None:
        """(session id, owner uid) of a running or recently ended tool call."""
        tool_call = self._tool_calls.get(tool_call_id) or self._recent.get(tool_call_id)
        return (tool_call.session_id, tool_call.owner_uid) if tool_call else None

    def _publish(self, tool_call: ToolCall, kind: str) -> None:
        with self._lock:
            self._recent[tool_call.id] = tool_call
            while len(self._recent) > RECENT_TOOL_CALLS:
                self._recent.popitem(last=False)
        self.bus.publish(
            Event(
                session_id=tool_call.session_id,
                tool_call_id=tool_call.id,
                owner_uid=tool_call.owner_uid,
                kind=kind,
                payload=replace(tool_call),  # a copy: the tool call changes when it ends
            )
        )

    def _usage(self, tool_call: ToolCall, now: float) -> Usage:
        return self._group_usage(tool_call.cgroup_rel, now - tool_call.started_at)

    def session_usage(self, session: Session) -> Usage:
        """Live usage of a session's group (all its tool calls); CgroupError if gone."""
        return self._group_usage(session.cgroup_rel, time.time() - session.created_at)

    def _group_usage(self, rel: str, wall_seconds: float) -> Usage:
        raw = self.backend.usage(rel)
        return Usage(
            wall_seconds=wall_seconds,
            cpu_user_seconds=raw.cpu_user_usec / 1e6,
            cpu_system_seconds=raw.cpu_system_usec / 1e6,
            peak_memory_bytes=raw.memory_peak,
            memory_bytes=raw.memory_current,
            oom_kills=raw.oom_kills,
            cpu_throttled_seconds=raw.cpu_throttled_usec / 1e6,
            cpu_throttled_periods=raw.cpu_nr_throttled,
            processes=raw.pids_peak,
            processes_running=raw.pids_current,
        )

    def _with_live_usage(self, tool_call: ToolCall) -> ToolCall:
        try:
            return replace(tool_call, usage=self._usage(tool_call, time.time()))
        except CgroupError:
            return tool_call

    def _find_tool_call(self, caller: Caller, tool_call_id: str) -> ToolCall:
        if not _TOOL_CALL_ID.match(tool_call_id):
            raise InvalidArgumentError("tool_call_id", f"{tool_call_id!r} is not a tool call id")
        tool_call = self._tool_calls.get(tool_call_id) or self.store.tool_call(tool_call_id)
        if tool_call is None:
            raise NotFoundError("tool call", tool_call_id)
        self._check_owner(caller, tool_call.owner_uid, f"tool call {tool_call_id!r}")
        return tool_call

    @staticmethod
    def _visible(caller: Caller, owner_uid: int) -> bool:
        return caller.is_root or caller.uid == owner_uid

    def _check_owner(self, caller: Caller, owner_uid: int, what: str) -> None:
        if not self._visible(caller, owner_uid):
            raise PermissionDeniedError(f"{what} belongs to another user")

    def _check_launcher(self, caller: Caller, pid: int) -> str:
        """Only a process of the caller's own, not yet placed, may be moved: otherwise an
        agent could pull another user's process (or the daemon) under its limits.
        Returns the launcher's executable (the tracker records it: one readlink)."""
        if pid <= 1:
            raise InvalidArgumentError("pid", f"{pid} is not a launcher process id")
        if pid == os.getpid():
            raise InvalidArgumentError("pid", "the daemon cannot be placed in a tool call")
        # Root may place any process: its /proc status (~50 lines to parse) is read
        # only to check another caller's ownership.
        status = {} if caller.is_root else _proc_status(pid)
        if not (status or (caller.is_root and os.path.exists(f"/proc/{pid}/stat"))):
            raise InvalidArgumentError("pid", f"no process {pid}")
        if not caller.is_root:
            real_uid = int(status.get("Uid", "-1").split()[0])
            ppid = int(status.get("PPid", "-1"))
            if real_uid != caller.uid or ppid != caller.pid:
                raise PermissionDeniedError(
                    f"pid {pid} is not a child of the calling process {caller.pid} owned by "
                    f"uid {caller.uid}"
                )
        if any(t.launcher_pid == pid for t in self._tool_calls.values()):
            raise FailedPreconditionError(f"pid {pid} is already a running tool call")
        # Only a launcher still waiting for its go may be placed: a process that already
        # runs a command could have forked children that would stay outside the group.
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            exe = ""
        if os.path.basename(exe) != LAUNCHER_NAME:
            raise FailedPreconditionError(
                f"pid {pid} is not an agentd-exec launcher waiting to run its command "
                f"(it runs {exe or 'something unreadable'})"
            )
        return exe

    def _complete_budget(self, budget: Resources) -> Resources:
        default = self.node.default_session
        completed = Resources(
            memory_max=budget.memory_max or default.memory_max,
            memory_high=budget.memory_high,
            memory_low=budget.memory_low,
            cpu=budget.cpu or default.cpu,
            pids_max=budget.pids_max or default.pids_max,
        )
        if completed.memory_max and completed.memory_max > self.node.allocatable_memory:
            raise InvalidArgumentError(
                "budget.memory_max",
                f"{completed.memory_max} bytes is more than this node's allocatable "
                f"{self.node.allocatable_memory} bytes",
            )
        if completed.cpu and completed.cpu > self.node.cpus:
            raise InvalidArgumentError(
                "budget.cpu", f"{completed.cpu} cores is more than this node's {self.node.cpus}"
            )
        self._check_order(completed, "budget")
        return completed

    @staticmethod
    def _check_order(r: Resources, prefix: str) -> None:
        if r.memory_high and r.memory_max and r.memory_high > r.memory_max:
            raise InvalidArgumentError(f"{prefix}.memory_high", "is above memory_max")
        if r.memory_low and r.memory_max and r.memory_low > r.memory_max:
            raise InvalidArgumentError(f"{prefix}.memory_low", "is above memory_max")

    def _tool_call_limits(self, session: Session, intent: Intent) -> Resources:
        asked = intent.resources
        budget = session.budget
        for name in ("memory_max", "memory_high", "memory_low", "cpu", "pids_max"):
            value = getattr(asked, name)
            bound = getattr(budget, name) if name != "memory_high" else budget.memory_max
            if name == "memory_low":
                bound = budget.memory_max
            if value is not None and bound is not None and value > bound:
                raise InvalidArgumentError(
                    f"intent.resources.{name}",
                    f"{value} is over the session's budget of {bound}",
                )
        self._check_order(asked, "intent.resources")
        return asked

    def _session_limits(self, session: Session) -> GroupLimits:
        return self.priorities.session_limits(session.budget, session.priority, self.backend.name)

    def _group_limits(self, r: Resources, priority: Priority) -> GroupLimits:
        return GroupLimits(
            memory_max=r.memory_max,
            memory_high=r.memory_high,
            memory_low=r.memory_low,
            cpu_max_cores=r.cpu,
            cpu_weight=self.priorities.cpu_weight(priority),
            pids_max=r.pids_max,
        )


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)
