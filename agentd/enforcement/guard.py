"""The guard service: per tool call limits into the kernel, the kernel's records out,
the policy's decisions carried out (docs/enforcement.md).

Threads: `on_record` runs on the eBPF source's thread and only queues; one worker
thread handles records and re-decides for stopped tool calls every TICK_SECONDS. With
no tool call running (none guarded, or only launchers placed ahead, which allocate
nothing) there is nothing to re-decide and the kernel cannot take the node's turn: the
worker then sleeps until a record, a begin or a waiting launcher's command starting
wakes it (IDLE_WAKE_SECONDS at most), instead of waking ten times a second. The
manager calls group_limits/begin/end under its own lock; the guard never calls back
into the manager, so there is no lock order to get wrong.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import structlog

from agentd.cgroups.base import CgroupBackend, CgroupError, GroupLimits
from agentd.enforcement import feedback
from agentd.enforcement.guard_policy import (
    MemoryCrossing,
    PolicySettings,
    Verdict,
    deadlocked,
    decide_memory,
    suggested_memory,
)
from agentd.enforcement.maps import (
    G_FORK_MASK,
    G_FORK_RATE,
    G_MEMORY,
    G_NODE,
    G_PIDS_MAX,
    G_SESSION,
    GF_CLASS_MASK,
    GF_CLASS_SHIFT,
    GF_KILL_FORK,
    GF_STOP_FORK,
    GF_STOP_MEMORY,
    GuardLimit,
    GuardMaps,
    GuardState,
)
from agentd.enforcement.metrics import GUARD_ACTIONS, OOM_KILLS_ATTRIBUTED
from agentd.events import Event, EventBus
from agentd.manager import LAUNCHER_NAME
from agentd.model import Enforcement, Priority, Session, ToolCall
from agentd.tracking.events import GuardRecord
from agentd.tracking.tracker import Tracker

log = structlog.get_logger("agentd.guard")

TICK_SECONDS = 0.1
#: With no tool call running, the worker's longest sleep: a safety net only (every way
#: a tool call starts running wakes it at once).
IDLE_WAKE_SECONDS = 5.0
#: Enforcement `limit` names of the memory guard, and the kernel's reason bit for each.
MEMORY_LIMITS = {"memory": G_MEMORY, "session_memory": G_SESSION, "node_memory": G_NODE}
#: How long EndToolCall waits for the kernel's OOM record when memory.oom_control /
#: memory.events counted a kill the guard has not attributed yet.
OOM_RECORD_WAIT_SECONDS = 0.5


@dataclass(frozen=True)
class GuardSettings:
    memory_action: str = "stop"  # "stop": SIGSTOP in the kernel; "report": record only
    memory_headroom: float = 0.25  # the cgroup's limit sits this far above the guard's
    fork_rate: int = 1000  # forks per second per tool call (0 = unbounded)
    fork_burst: int = 500
    max_processes: int = 2048  # live processes per tool call (0 = unbounded)
    fork_refusals: int = 256  # forks refused at pids.max before it trips (0 = never)
    fork_action: str = "stop"  # "stop" or "kill" the processes that fork once tripped
    #: The node's guarded sum over which tool calls of the normal and batch classes are
    #: stopped until there is room again (interactive ones never); 0 = no node bound.
    node_budget: int = 0
    node_limit: int = 0  # the sessions group's memory limit (the node allocatable)
    #: Above this fraction of node_budget one normal or batch tool call grows at a time
    #: (first come, first served; the others stop holding what they hold); 0 = off.
    node_turn: float = 0.0
    policy: PolicySettings = field(default_factory=PolicySettings)


@dataclass
class _Guarded:
    tool_call: ToolCall
    key: int
    session_key: int
    session_budget: int
    limit: GuardLimit
    # While stopped and waiting for a decision: since when (monotonic), what crossed.
    stopped_since: float | None = None
    crossing: GuardRecord | None = None
    ooms: int = 0
    intent: int = 0  # the intent's memory_max (limit may have been raised since)
    session_limit: int = 0  # the session group's memory limit, above session_budget
    node_capped: bool = False  # continued past the node bound, within the node's limit
    class_flags: int = 0  # its priority class in guard_limit.flags (GF_CLASS_MASK bits)


class Guard:
    def __init__(
        self,
        settings: GuardSettings,
        maps: GuardMaps,
        tracker: Tracker,
        backend: CgroupBackend,
        bus: EventBus,
        persist: Callable[[ToolCall], None] | None = None,
    ) -> None:
        """`persist`: saves a tool call whose limits or enforcement records changed (the
        state store), so that a restarted daemon knows its grants and records."""
        self.settings = settings
        self.persist = persist
        self.maps = maps
        self.tracker = tracker
        self.backend = backend
        self.bus = bus
        self._lock = threading.Condition()
        self._by_key: dict[int, _Guarded] = {}
        self._by_id: dict[str, _Guarded] = {}
        self._sessions: dict[str, list[int]] = {}  # session id -> [key, guarded tool calls]
        self._widened: dict[str, int] = {}  # session id -> its guard budget, widened
        self._session_keys = iter(range(1, 2**63))
        # Records, and None: a wake-up (a tool call may run now, or stop()).
        self._records: queue.SimpleQueue[GuardRecord | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # A launcher placed ahead starts its command without a call into the guard; the
        # manager publishes tool_call_begun then. The filter wakes the worker and takes
        # nothing into a queue of its own (no second queue to drain).
        self._begun = bus.subscribe(self._wake_on_begun, maxsize=1)
        self.ticks = 0  # worker ticks, for tests and benches: idle means none

    # ---- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        for priority in Priority:
            exempt = priority is Priority.INTERACTIVE or self.settings.memory_action != "stop"
            self.maps.set_node_budget(int(priority), 0 if exempt else self.settings.node_budget)
        self.maps.set_node_turn_threshold(self._turn_threshold())
        self.maps.release_node_turn()
        self._thread = threading.Thread(target=self._run, name="agentd-guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._records.put(None)
        self._begun.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def on_record(self, record: GuardRecord) -> None:
        """From the eBPF source's thread: hand over, never block."""
        self._records.put(record)

    # ---- called by the manager ----------------------------------------------------

    def group_limits(self, limits: GroupLimits) -> GroupLimits:
        """The cgroup limit is the backstop above the guard: the kernel charges page
        cache and kernel memory the guard does not sum, and must not OOM-kill before the
        guard has stopped the process and the daemon decided."""
        if self.settings.memory_action != "stop" or not limits.memory_max:
            return limits
        return replace(limits, memory_max=self._backstop(limits.memory_max))

    def begin(self, tool_call: ToolCall, session: Session, pids: list[int]) -> None:
        key = self.tracker.key_of(tool_call.id)
        if key is None:
            return
        s = self.settings
        flags = GF_STOP_MEMORY if s.memory_action == "stop" else 0
        flags |= GF_KILL_FORK if s.fork_action == "kill" else GF_STOP_FORK
        flags |= int(tool_call.intent.priority or session.priority) << GF_CLASS_SHIFT
        budget = session_limit = session.budget.memory_max or 0
        if s.memory_action == "stop":
            # The session's cgroup limit is its budget and charges page cache and kernel
            # memory too: the guard stops its tool calls while there is still that much
            # headroom, so that it acts before the session's OOM killer.
            budget = math.floor(budget / (1 + s.memory_headroom))
        with self._lock:
            budget = max(budget, self._widened.get(session.id, 0))
            entry = self._sessions.get(session.id)
            if entry is None:
                entry = self._sessions[session.id] = [next(self._session_keys), 0]
                self.maps.add_session(entry[0], budget)
            entry[1] += 1
            limit = GuardLimit(
                memory=tool_call.limits.memory_max or 0,
                session=entry[0],
                fork_rate=s.fork_rate,
                fork_burst=s.fork_burst,
                max_processes=s.max_processes,
                fork_refusals=s.fork_refusals,
                flags=flags,
            )
            # limits.memory_max is the last grant (persisted), the intent what was asked.
            intent = tool_call.intent.resources.memory_max or limit.memory
            guarded = _Guarded(
                tool_call, key, entry[0], budget, limit, intent=intent, session_limit=session_limit,
                class_flags=flags & GF_CLASS_MASK,
            )  # fmt: skip
            self._by_key[key] = guarded
            self._by_id[tool_call.id] = guarded
            self.maps.add_tool_call(key, limit, max(len(pids), 1))
            self._resume_deciding(guarded)
        self._records.put(None)  # the worker may be asleep: a tool call may run now

    def _resume_deciding(self, guarded: _Guarded) -> None:
        """A tool call the guard had stopped when the daemon went down (its last record
        says "stopped"): its processes are still stopped and nobody would continue
        them. Decide again, as if it had just crossed (grant, wait or kill)."""
        records = guarded.tool_call.enforcements
        last = records[-1] if records else None
        if last is None or last.action != "stopped" or last.limit not in MEMORY_LIMITS:
            return
        guarded.crossing = GuardRecord(
            kind="guard", key=guarded.key, pid=last.pid, time_ns=0, comm=last.comm,
            value=last.value, limit=last.limit_value, session_value=0, session_limit=0,
            processes=0, reason=MEMORY_LIMITS[last.limit], action=signal.SIGSTOP,
        )  # fmt: skip
        guarded.stopped_since = time.monotonic()
        log.info("guard.stopped_before_restart", tool_call=guarded.tool_call.id, pid=last.pid)

    def end(self, tool_call: ToolCall, oom_kills: int = 0) -> None:
        """The tool call ended (its processes are gone): forget it in the kernel. If the
        cgroup counted OOM kills the kernel's records have not yet explained, wait a
        little for them, so that the result names the victim."""
        deadline = time.monotonic() + OOM_RECORD_WAIT_SECONDS
        with self._lock:
            guarded = self._by_id.get(tool_call.id)
            if guarded is None:
                return
            while guarded.ooms < oom_kills and time.monotonic() < deadline:
                self._lock.wait(0.02)
            del self._by_id[tool_call.id]
            self._by_key.pop(guarded.key, None)
            self.maps.remove_tool_call(guarded.key)
            if self._turn_threshold() and self.maps.node_turn() == guarded.key:
                self.maps.release_node_turn()
            entry = self._sessions.get(tool_call.session_id)
            if entry is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    self.maps.remove_session(entry[0])
                    del self._sessions[tool_call.session_id]
                    self._widened.pop(tool_call.session_id, None)

    def state(self, tool_call_id: str) -> dict[str, int] | None:
        """The kernel's figures for a guarded tool call (tests, agentctl)."""
        with self._lock:
            guarded = self._by_id.get(tool_call_id)
        if guarded is None:
            return None
        st = self.maps.state(guarded.key)
        if st is None:
            return None
        return {
            "memory": st.memory,
            "peak": st.peak,
            "processes": st.processes,
            "forks": st.forks,
            "signals": st.signals,
            "limit": guarded.limit.memory,
            "session_used": self.maps.session_used(guarded.session_key),
        }

    # ---- the worker ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            timeout = TICK_SECONDS if self._running() else IDLE_WAKE_SECONDS
            try:
                record = self._records.get(timeout=timeout)
            except queue.Empty:
                record = None
            if self._stop.is_set():
                break
            try:
                if record is not None:
                    self._handle(record)
                self._tick()
                self.ticks += 1
            except Exception:
                log.exception("guard.failed")

    def _running(self) -> bool:
        """Whether some guarded tool call runs its command (not a launcher placed ahead
        still waiting for one): only then can a tool call be stopped, capped, or take
        the node's turn in the kernel (it allocates), so only then is a tick needed."""
        with self._lock:
            return any(not g.tool_call.waiting for g in self._by_key.values())

    def _wake_on_begun(self, event: Event) -> bool:
        """Bus filter: a tool call began (a launcher placed ahead got its command): wake
        the worker. Accepts nothing (the subscription's queue stays empty)."""
        if event.kind == "tool_call_begun":
            self._records.put(None)
        return False

    def _handle(self, record: GuardRecord) -> None:
        with self._lock:
            guarded = self._by_key.get(record.key)
        if guarded is None:
            return  # ended meanwhile
        if record.kind == "oom":
            self._on_oom(guarded, record)
        elif record.reason & G_FORK_MASK:
            self._on_fork(guarded, record)
        else:
            self._on_memory(guarded, record)

    def _tick(self) -> None:
        with self._lock:
            waiting = [g for g in self._by_key.values() if g.stopped_since is not None]
            sessions = {
                g.tool_call.session_id: self._sessions.get(g.tool_call.session_id) for g in waiting
            }
        for session_id, entry in sessions.items():
            # Waits for the node's sake are not the session's: another session may end.
            mine = {
                g.tool_call.id: g
                for g in waiting
                if g.tool_call.session_id == session_id
                and not (g.crossing is not None and _node_only(g.crossing))
            }
            since = {i: g.stopped_since or 0.0 for i, g in mine.items()}
            victim = deadlocked(since, (entry[1] if entry else 0) - self._idle(session_id))
            if victim is not None:
                log.info("guard.deadlock", session=session_id, given_up=victim, waiting=len(mine))
                self._decide_memory(mine[victim], give_up=True)
        self._end_turn()
        for guarded in waiting:
            self._decide_memory(guarded)
        self._node_deadlock(waiting)
        self._uncap()

    def _turn_threshold(self) -> int:
        s = self.settings
        if s.memory_action != "stop" or not s.node_budget:
            return 0
        return math.floor(s.node_budget * s.node_turn)

    def _end_turn(self) -> None:
        """The tool call whose turn it was to grow past the threshold gives it back once
        the node's sum is under the threshold again (its burst is over; with a margin,
        min_grant of it), or when it is gone. The kernel gives it to the next grower."""
        threshold = self._turn_threshold()
        owner = self.maps.node_turn() if threshold else 0
        if not owner:
            return
        with self._lock:
            guarded = self._by_key.get(owner)
        below = self.maps.node_used() <= threshold * (1 - self.settings.policy.min_grant)
        if guarded is None or (below and guarded.stopped_since is None):
            self.maps.release_node_turn()
            log.info("guard.node_turn_ended", key=owner, ended=guarded is None)

    def _may_take_turn(self, guarded: _Guarded) -> bool:
        """A tool call stopped for the node may go on only if no other's turn is on
        (or the node is back under the threshold) and no tool call was stopped for the
        node before it: first come, first served. Continued above the threshold, it is
        handed the turn, or the kernel would stop it again at its next page."""
        threshold = self._turn_threshold()
        owner = self.maps.node_turn() if threshold else 0
        if not threshold or owner == guarded.key:
            return True  # its turn: stopped at the node bound itself, it goes on first
        with self._lock:
            earlier = any(
                g is not guarded
                and g.stopped_since is not None
                and g.crossing is not None
                and _node_only(g.crossing)
                and g.stopped_since < (guarded.stopped_since or 0.0)
                for g in self._by_key.values()
            )
        if earlier or owner:
            return False
        if self.maps.node_used() > threshold:
            self.maps.release_node_turn(guarded.key)
        return True

    def _uncap(self) -> None:
        """Tool calls continued past the node bound go back under it (their class and
        own limit again) as soon as the node has room: the deadlock is over, and their
        cap, computed then, would be stale."""
        with self._lock:
            capped = [g for g in self._by_key.values() if g.node_capped and not g.stopped_since]
        if not capped or not self._node_room():
            return
        for guarded in capped:
            guarded.node_capped = False
            guarded.limit = replace(
                guarded.limit,
                memory=guarded.tool_call.limits.memory_max or 0,
                flags=guarded.limit.flags | guarded.class_flags,
            )
            self.maps.set_limit(guarded.key, guarded.limit)
            log.info("guard.node_uncapped", tool_call=guarded.tool_call.id)

    def _node_deadlock(self, waiting: list[_Guarded]) -> None:
        """Every guarded tool call stopped, some for the node's sake: none of them can
        make room for the others. The one stopped first for the node is continued
        (FIFO), capped at what the node's hard limit (the sessions group's) still holds,
        so that it cannot bring on the node's OOM killer. When nothing is left under that
        limit, the stopped tool call that holds least is killed, with the reason."""
        stopped = [g for g in waiting if g.stopped_since is not None and g.crossing is not None]
        if not any(g.crossing.reason & G_NODE or g.node_capped for g in stopped):  # type: ignore[union-attr]
            return
        with self._lock:
            guarded_count = len(self._by_key)
            sessions = {g.tool_call.session_id for g in self._by_key.values()}
        idle = sum(self._idle(s) for s in sessions)
        if guarded_count - len(stopped) - idle > 0:
            return  # something still runs: it may end or shrink
        room = self._node_hard_room()
        node_waiting = [g for g in stopped if _node_only(g.crossing)]  # type: ignore[arg-type]
        if node_waiting and room > 0:
            # The turn's owner first: it holds the burst under way, the others only
            # what they held when they stopped.
            owner = self.maps.node_turn()
            first = min(node_waiting, key=lambda g: (g.key != owner, g.stopped_since or 0.0))
            log.info("guard.node_deadlock", continued=first.tool_call.id, room=room)
            self._decide_node(first, first.crossing, give_up=True, cap=room)  # type: ignore[arg-type]
            return
        held = {g.key: (self.maps.state(g.key) or _NO_STATE).memory for g in stopped}
        victim = min(stopped, key=lambda g: held[g.key])
        log.info("guard.node_deadlock", killed=victim.tool_call.id, room=room)
        record = victim.crossing
        assert record is not None
        comm, argv = self._process(victim, record.pid, record.comm)
        victim.stopped_since = None
        GUARD_ACTIONS.labels(kind="memory_kill").inc()
        self._record(
            victim,
            feedback.node_killed(
                self.maps.node_used(), self.settings.node_limit, held[victim.key], record.pid,
                comm, argv,
            ),
        )  # fmt: skip
        self._kill(victim.tool_call)

    def _node_hard_room(self) -> int:
        """What the sessions group's limit still holds, less a margin (min_grant of it)."""
        limit = self.settings.node_limit
        if not limit:
            return 0
        try:
            charged = self.backend.usage("sessions").memory_current
        except CgroupError:
            return 0
        return limit - charged - math.ceil(limit * self.settings.policy.min_grant)

    def _idle(self, session_id: str) -> int:
        """Guarded launchers of the session placed ahead that still wait for a command
        (docs/placement.md): they hold no memory and will never free any."""
        with self._lock:
            ahead = [
                g.tool_call.launcher_pid
                for g in self._by_key.values()
                if g.tool_call.session_id == session_id and g.tool_call.waiting
            ]
        return sum(1 for pid in ahead if _still_launcher(pid))

    # ---- memory ----------------------------------------------------------------------

    def _on_memory(self, guarded: _Guarded, record: GuardRecord) -> None:
        comm, argv = self._process(guarded, record.pid, record.comm)
        limit = guarded.limit.memory
        if not record.action:
            GUARD_ACTIONS.labels(kind="memory_report").inc()
            self._record(
                guarded, feedback.memory_reported(record.value, limit, record.pid, comm, argv)
            )
            return
        GUARD_ACTIONS.labels(kind="memory_stop").inc()
        log.info(
            "guard.memory_stopped", tool_call=guarded.tool_call.id, pid=record.pid,
            value=record.value, limit=limit, session_used=record.session_value,
            reason=record.reason,
        )  # fmt: skip
        if _node_only(record):
            enforcement = feedback.node_paused(
                self.maps.node_used(), self.settings.node_budget, record.pid, comm, argv
            )
        else:
            enforcement = feedback.memory_stopped(
                record.value, limit, record.pid, comm, argv, guarded.intent
            )
        self._record(guarded, enforcement)
        guarded.crossing = record
        guarded.stopped_since = time.monotonic()
        self._decide_memory(guarded)

    def _node_room(self) -> bool:
        """Room under the node bound again, with a margin (min_grant of it) so that a
        continued tool call does not trip again at its next page."""
        budget = self.settings.node_budget
        return self.maps.node_used() <= budget * (1 - self.settings.policy.min_grant)

    def _decide_node(
        self, guarded: _Guarded, record: GuardRecord, give_up: bool, cap: int = 0
    ) -> None:
        """Stopped for the node's sake only: continue it (its own limit unchanged) once
        the node has room; wait otherwise, without a deadline: pausing low-priority work
        instead of killing it is the point. Given up (nothing else runs that could make
        room): continued all the same, into the cgroup's headroom."""
        if not (give_up or (self._node_room() and self._may_take_turn(guarded))):
            return
        guarded.stopped_since = None
        comm, argv = self._process(guarded, record.pid, record.comm)
        if give_up:
            # Out of the node bound until it ends (class bits 0: no node budget), or it
            # would stop again at its next page while the node is still over; its own
            # bound capped at what the node's hard limit still holds.
            st = self.maps.state(guarded.key)
            memory = guarded.limit.memory
            if cap and st is not None:
                memory = min(memory or st.memory + cap, st.memory + cap)
                guarded.node_capped = True
            guarded.limit = replace(
                guarded.limit, memory=memory, flags=guarded.limit.flags & ~GF_CLASS_MASK
            )
        self.maps.set_limit(guarded.key, guarded.limit)  # clears the trip
        self._signal_group(guarded.tool_call, signal.SIGCONT)
        GUARD_ACTIONS.labels(kind="node_resume").inc()
        log.info("guard.node_resumed", tool_call=guarded.tool_call.id, given_up=give_up)
        self._record(
            guarded,
            feedback.node_resumed(
                self.maps.node_used(), self.settings.node_budget, record.pid, comm, argv
            ),
        )

    def _decide_memory(self, guarded: _Guarded, give_up: bool = False) -> None:
        record = guarded.crossing
        st = self.maps.state(guarded.key)
        if record is None or guarded.stopped_since is None or st is None:
            return
        if _node_only(record):
            self._decide_node(guarded, record, give_up)
            return
        settings = self.settings.policy
        crossing = MemoryCrossing(
            # A crossing recovered after a restart (time_ns 0): the new program's sums
            # start from zero and a stopped process reports nothing; its figure stands.
            value=st.memory if record.time_ns else max(st.memory, record.value),
            limit=guarded.limit.memory,
            session_used=self.maps.session_used(guarded.session_key),
            session_budget=guarded.session_budget,
            waited_seconds=math.inf if give_up else time.monotonic() - guarded.stopped_since,
        )
        decision = decide_memory(crossing, settings)
        if (
            decision.verdict is not Verdict.GRANT
            and record.reason & G_SESSION
            and self._widen_session(guarded)
        ):
            crossing = replace(crossing, session_budget=guarded.session_budget)
            decision = decide_memory(crossing, settings)
        if decision.verdict is Verdict.WAIT:
            return
        node_full = record.reason & G_NODE and not give_up and not self._node_room()
        if decision.verdict is Verdict.GRANT and node_full:
            return  # its own bound may grow, but the node has no room: wait
        if decision.verdict is Verdict.GRANT and guarded.node_capped:
            # Continued past the node bound: grants only within the node's hard limit.
            room = self._node_hard_room()
            if room < crossing.value * settings.min_grant:
                return  # the node deadlock rule decides
            decision = replace(decision, new_limit=min(decision.new_limit, crossing.value + room))
        comm, argv = self._process(guarded, record.pid, record.comm)
        tool_call = guarded.tool_call
        guarded.stopped_since = None
        if decision.verdict is Verdict.GRANT:
            old = guarded.limit.memory
            self._grant(guarded, decision.new_limit)
            GUARD_ACTIONS.labels(kind="memory_grant").inc()
            log.info(
                "guard.memory_granted", tool_call=tool_call.id, old=old, new=decision.new_limit
            )
            self._record(
                guarded,
                feedback.memory_resumed(
                    crossing.value, old, decision.new_limit, record.pid, comm, argv, guarded.intent
                ),
            )
            return
        session_only = record.reason & G_SESSION and not record.reason & G_MEMORY
        enforcement = feedback.memory_killed(
            "session_memory" if session_only else "memory",
            crossing.value,
            crossing.limit,
            suggested_memory(max(crossing.value, st.peak), settings),
            crossing.session_used,
            crossing.session_budget,
            record.pid,
            comm,
            argv,
            guarded.intent,
        )
        GUARD_ACTIONS.labels(kind="memory_kill").inc()
        log.info("guard.memory_killed", tool_call=tool_call.id, value=crossing.value)
        self._record(guarded, enforcement)
        self._kill(tool_call)

    def _widen_session(self, guarded: _Guarded) -> bool:
        """The guard's session budget is the session's limit / (1 + memory_headroom): a
        guess of what page cache and kernel memory, which the guard does not sum, will
        need. Before a tool call waits or dies for the session's sake, the guess is
        replaced by the measure: the session group's charge beyond the guarded sum,
        plus a margin (min_grant of the limit). Widened if that leaves more room."""
        limit = guarded.session_limit
        session_id = guarded.tool_call.session_id
        if not limit:
            return False
        try:
            charged = self.backend.usage(f"sessions/{session_id}").memory_current
        except CgroupError:
            return False
        unguarded = max(charged - self.maps.session_used(guarded.session_key), 0)
        widened = limit - unguarded - math.ceil(limit * self.settings.policy.min_grant)
        if widened <= guarded.session_budget:
            return False
        with self._lock:
            self._widened[session_id] = widened
            for g in self._by_key.values():
                if g.session_key == guarded.session_key:
                    g.session_budget = widened
        self.maps.set_session_budget(guarded.session_key, widened)
        log.info("guard.session_widened", session=session_id, budget=widened, unguarded=unguarded)
        return True

    def _grant(self, guarded: _Guarded, new_limit: int) -> None:
        """New limit into the kernel (clears the trip), the cgroup's backstop raised,
        then the stopped processes continued."""
        tool_call = guarded.tool_call
        guarded.limit = replace(guarded.limit, memory=new_limit)
        try:
            self.backend.set_limits(
                tool_call.cgroup_rel, GroupLimits(memory_max=self._backstop(new_limit))
            )
        except CgroupError as e:
            log.warning("guard.cgroup_limit_failed", tool_call=tool_call.id, error=str(e))
        self.maps.set_limit(guarded.key, guarded.limit)
        tool_call.limits = replace(tool_call.limits, memory_max=new_limit)
        self._persist(tool_call)
        self._signal_group(tool_call, signal.SIGCONT)

    def _backstop(self, limit: int) -> int:
        return math.ceil(limit * (1 + self.settings.memory_headroom))

    # ---- forks -------------------------------------------------------------------------

    def _on_fork(self, guarded: _Guarded, record: GuardRecord) -> None:
        comm, argv = self._process(guarded, record.pid, record.comm)
        s = self.settings
        GUARD_ACTIONS.labels(
            kind="fork_kill" if record.action == signal.SIGKILL else "fork_stop"
        ).inc()
        if record.reason & G_FORK_RATE:
            seconds = self._age_seconds(guarded, record.time_ns)
            value = round(record.value / seconds) if seconds > 0 else record.value
            enforcement = feedback.fork_killed(
                "fork_rate", value, s.fork_rate, record.pid, comm, argv
            )
        elif record.reason & G_PIDS_MAX:
            pids_max = guarded.tool_call.limits.pids_max or 0
            enforcement = feedback.fork_killed(
                "pids_max", record.value, pids_max, record.pid, comm, argv
            )
        else:
            enforcement = feedback.fork_killed(
                "processes", record.processes, s.max_processes, record.pid, comm, argv
            )
        log.info(
            "guard.fork_bomb", tool_call=guarded.tool_call.id, pid=record.pid,
            forks=record.value, processes=record.processes,
        )  # fmt: skip
        self._record(guarded, enforcement)
        self._kill(guarded.tool_call)

    def _age_seconds(self, guarded: _Guarded, time_ns: int) -> float:
        """From the tool call's first process to the record (both CLOCK_BOOTTIME)."""
        with self.tracker.locked():
            tree = self.tracker.tree(guarded.tool_call.id)
            start = tree.root.start_ns if tree is not None and tree.root is not None else 0
        if not start or time_ns <= start:
            return max(time.time() - guarded.tool_call.started_at, 1e-3)
        return (time_ns - start) / 1e9

    # ---- OOM ---------------------------------------------------------------------------

    def _on_oom(self, guarded: _Guarded, record: GuardRecord) -> None:
        comm, argv = self._process(guarded, record.pid, record.comm)
        limit = guarded.tool_call.limits.memory_max or 0
        # 6.1's mark_victim has no sizes: the tool call's sum is the next best figure.
        value = record.value or record.session_value
        enforcement = feedback.oom_killed(
            value,
            limit,
            suggested_memory(max(value, limit), self.settings.policy),
            record.pid,
            comm,
            argv,
        )
        OOM_KILLS_ATTRIBUTED.inc()
        GUARD_ACTIONS.labels(kind="oom_kill").inc()
        log.info("guard.oom_kill", tool_call=guarded.tool_call.id, pid=record.pid, comm=comm)
        self._record(guarded, enforcement, kind="oom_kill")
        with self._lock:
            guarded.ooms += 1
            self._lock.notify_all()

    # ---- helpers -------------------------------------------------------------------------

    def _process(self, guarded: _Guarded, pid: int, comm: str) -> tuple[str, tuple[str, ...]]:
        """comm and argv of `pid` from the tool call's process tree (the kernel's record
        has the comm only, and not on every kernel)."""
        with self.tracker.locked():
            tree = self.tracker.tree(guarded.tool_call.id)
            nodes = tree.find(pid) if tree is not None else []
            if nodes:
                node = nodes[-1]
                return comm or node.comm, tuple(node.argv or ())
        return comm, ()

    def _record(
        self, guarded: _Guarded, enforcement: Enforcement, kind: str = "guard_action"
    ) -> None:
        tool_call = guarded.tool_call
        tool_call.enforcements.append(enforcement)
        self._persist(tool_call)
        self.bus.publish(
            Event(
                session_id=tool_call.session_id,
                tool_call_id=tool_call.id,
                owner_uid=tool_call.owner_uid,
                kind=kind,
                payload=feedback.event_details(enforcement),
            )
        )

    def _persist(self, tool_call: ToolCall) -> None:
        if self.persist is None or tool_call.waiting:
            return  # a launcher placed ahead is recorded once its command starts
        try:
            self.persist(tool_call)
        except Exception as e:  # the state store is not worth losing the guard for
            log.warning("guard.persist_failed", tool_call=tool_call.id, error=str(e))

    def _kill(self, tool_call: ToolCall) -> None:
        """The whole group, at once (freezer or cgroup.kill): a fork bomb cannot outrun
        it, and stopped processes die too."""
        try:
            self.backend.kill(tool_call.cgroup_rel)
        except CgroupError as e:
            log.warning("guard.kill_failed", tool_call=tool_call.id, error=str(e))

    def _signal_group(self, tool_call: ToolCall, sig: int) -> None:
        try:
            pids = self.backend.procs(tool_call.cgroup_rel, recursive=True)
        except CgroupError:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


_NO_STATE = GuardState(memory=0, peak=0, processes=0, forks=0, signals=0)


def _node_only(record: GuardRecord) -> bool:
    """Stopped for the node's sum alone, under its own and its session's bounds."""
    return bool(record.reason & G_NODE) and not record.reason & (G_MEMORY | G_SESSION)


def _still_launcher(pid: int) -> bool:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")) == LAUNCHER_NAME
    except OSError:
        return False
