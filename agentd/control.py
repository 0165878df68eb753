"""Throttle, freeze, resume and evict running work: the one place that does it.

Both the scheduler-facing API (NodeService) and the pressure policy act through
`Control`, so there is one writer of these knobs and one anti-flapping rule: a knob
(cpu max, memory high, the freezer) of a group is not rewritten more often than
once per `min_interval_seconds`; a change asked sooner is refused with TooSoonError
(FAILED_PRECONDITION with RetryInfo), never queued.

State is kept per group and per actor (the `by` of each call: "pressure" for the
pressure policy, the caller's name for NodeService): a *hold* says what that actor
asked for (a CPU max, a memory high, frozen). The group gets the strictest of its
holds: the lowest CPU max and memory high, frozen while any hold freezes it. A resume
lifts only the resuming actor's hold, so a scheduler's freeze survives the pressure
policy's resume and the other way round (docs/pressure.md). Holds are persisted in the
state store: after a daemon restart a throttle is known again (cgroupfs alone cannot
tell a throttle from a budget). What to restore when the last hold goes is not kept
here: it is the session's budget or the tool call's limits, which the manager keeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

import structlog

from agentd.cgroups.base import UNLIMITED, CgroupError, GroupLimits
from agentd.errors import InvalidArgumentError, NotFoundError, TooSoonError, UnavailableError
from agentd.events import Event
from agentd.manager import Caller, Manager
from agentd.model import Resources

log = structlog.get_logger("agentd.control")

#: Default minimum time between two writes of the same knob of the same group.
MIN_INTERVAL_SECONDS = 2.0


@dataclass(frozen=True)
class Target:
    """A session (tool_call_id empty) or one of its tool calls."""

    session_id: str
    tool_call_id: str = ""

    def describe(self) -> str:
        if self.tool_call_id:
            return f"tool call {self.tool_call_id!r} of session {self.session_id!r}"
        return f"session {self.session_id!r}"


@dataclass(frozen=True)
class Hold:
    """What one actor asked of one group."""

    cpu: float | None = None  # cores
    memory_high: int | None = None  # bytes
    frozen: bool = False

    @property
    def throttles(self) -> bool:
        return self.cpu is not None or self.memory_high is not None


def strictest(holds: Collection[Hold]) -> Hold:
    """The effective state of a group under several holds."""
    cpus = [h.cpu for h in holds if h.cpu is not None]
    highs = [h.memory_high for h in holds if h.memory_high is not None]
    return Hold(
        cpu=min(cpus) if cpus else None,
        memory_high=min(highs) if highs else None,
        frozen=any(h.frozen for h in holds),
    )


@dataclass(frozen=True)
class ControlResult:
    target: Target
    action: str  # "throttle", "freeze", "resume", "evict"
    changed: bool  # False when the caller's hold already was that (resume: had none)
    tool_calls_affected: int


@dataclass(frozen=True)
class _Resolved:
    rel: str  # cgroup path relative to the agentd root
    owner_uid: int
    normal: Resources  # what the group's limits are when not throttled
    tool_calls: int  # running tool calls inside


class Control:
    def __init__(
        self,
        manager: Manager,
        min_interval_seconds: float = MIN_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manager = manager
        self.backend = manager.backend
        self.store = manager.store
        self.min_interval_seconds = min_interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._last_write: dict[tuple[str, str], float] = {}  # (rel, knob) -> clock
        self._holds: dict[str, dict[str, Hold]] = {}  # rel -> actor -> hold
        self._load()

    def _load(self) -> None:
        """The holds of a previous run, for the groups that still exist."""
        for rel, actor, cpu, memory_high, frozen in self.store.holds():
            if self.backend.exists(rel):
                self._holds.setdefault(rel, {})[actor] = Hold(cpu, memory_high, frozen)
            else:
                self.store.forget_holds(rel)
        if self._holds:
            log.info("control.holds_recovered", groups=len(self._holds))

    # ---- queries ----------------------------------------------------------------

    def is_throttled(self, target: Target) -> bool:
        with self._lock:
            return any(h.throttles for h in self._holds.get(self._rel(target), {}).values())

    def is_frozen(self, target: Target) -> bool:
        try:
            return self.backend.is_frozen(self._rel(target))
        except CgroupError:
            return False

    def holds(self, target: Target) -> dict[str, Hold]:
        """Who holds the group, and what each asked for."""
        with self._lock:
            return dict(self._holds.get(self._rel(target), {}))

    # ---- actions ----------------------------------------------------------------

    def throttle(
        self,
        caller: Caller,
        target: Target,
        cpu_max: float | None = None,
        memory_high: int | None = None,
        by: str = "api",
    ) -> ControlResult:
        """Lower the group's CPU max (cores) and/or memory high (bytes) on behalf of
        `by`; None leaves that knob of its hold as it is. Never raises a limit above the
        group's normal one; another actor's stricter hold stays in force."""
        if cpu_max is None and memory_high is None:
            raise InvalidArgumentError("cpu_max", "give cpu_max, memory_high or both")
        if cpu_max is not None and not cpu_max > 0:
            raise InvalidArgumentError("cpu_max", f"{cpu_max} cores: must be positive")
        if memory_high is not None and memory_high <= 0:
            raise InvalidArgumentError("memory_high", f"{memory_high} bytes: must be positive")
        with self._lock:
            found = self._resolve(caller, target)
            if cpu_max is not None and found.normal.cpu is not None:
                cpu_max = min(cpu_max, found.normal.cpu)
            if memory_high is not None and found.normal.memory_max is not None:
                memory_high = min(memory_high, found.normal.memory_max)
            holds = self._holds.get(found.rel, {})
            current = holds.get(by, Hold())
            wanted = replace(
                current,
                cpu=cpu_max if cpu_max is not None else current.cpu,
                memory_high=memory_high if memory_high is not None else current.memory_high,
            )
            if wanted == current:
                return ControlResult(target, "throttle", False, found.tool_calls)
            before = strictest(holds.values())
            after = strictest([*(h for a, h in holds.items() if a != by), wanted])
            knobs = [k for k in ("cpu", "memory_high") if getattr(after, k) != getattr(before, k)]
            self._check_interval(found.rel, knobs, target)
            if knobs:
                self._write(
                    found.rel,
                    GroupLimits(
                        cpu_max_cores=after.cpu if "cpu" in knobs else None,
                        memory_high=after.memory_high if "memory_high" in knobs else None,
                    ),
                )
                self._stamp(found.rel, knobs)
            self._set_hold(found.rel, by, wanted)
        details = {"by": by}
        if cpu_max is not None:
            details["cpu_max"] = f"{cpu_max:g}"
        if memory_high is not None:
            details["memory_high"] = str(memory_high)
        self._publish(target, found, "throttled", details)
        return ControlResult(target, "throttle", True, found.tool_calls)

    def freeze(self, caller: Caller, target: Target, by: str = "api") -> ControlResult:
        with self._lock:
            found = self._resolve(caller, target)
            current = self._holds.get(found.rel, {}).get(by, Hold())
            frozen = self.backend.is_frozen(found.rel)
            if current.frozen and frozen:
                return ControlResult(target, "freeze", False, found.tool_calls)
            if not frozen:
                self._check_interval(found.rel, ["freeze"], target)
                try:
                    self.backend.freeze(found.rel)
                except CgroupError as e:
                    # A half-frozen group is worse than either state: thaw it again.
                    try:
                        self.backend.thaw(found.rel)
                    except CgroupError:
                        log.warning("control.thaw_after_failed_freeze_failed", rel=found.rel)
                    raise UnavailableError(f"could not freeze {target.describe()}: {e}") from e
                self._stamp(found.rel, ["freeze"])
            self._set_hold(found.rel, by, replace(current, frozen=True))
        self._publish(target, found, "frozen", {"by": by})
        return ControlResult(target, "freeze", True, found.tool_calls)

    def resume(self, caller: Caller, target: Target, by: str = "api") -> ControlResult:
        """Lift `by`'s hold: the group gets the strictest of the holds left, or its
        normal cpu max and memory high and thawed when none is left.

        A group nobody holds is resumed all the same (a freeze found in cgroupfs after
        a restart from an older state, or written by hand): its normal limits are
        written and it is thawed. Another actor's hold is never lifted.
        """
        with self._lock:
            found = self._resolve(caller, target)
            holds = self._holds.get(found.rel, {})
            mine = holds.get(by)
            others = {a: h for a, h in holds.items() if a != by}
            if mine is None and others:
                return ControlResult(target, "resume", False, found.tool_calls)
            frozen = self.backend.is_frozen(found.rel)
            before, after = strictest(holds.values()), strictest(others.values())
            knobs = [k for k in ("cpu", "memory_high") if getattr(after, k) != getattr(before, k)]
            thaw = frozen and not after.frozen
            self._check_interval(found.rel, knobs + (["freeze"] if thaw else []), target)
            normal = found.normal
            cpu = after.cpu if after.cpu is not None else normal.cpu
            high = after.memory_high if after.memory_high is not None else normal.memory_high
            # Nothing known (holds == {}): the normal limits are written anyway; rewriting
            # a limit to the value it has changes nothing.
            self._write(
                found.rel,
                GroupLimits(
                    cpu_max_cores=(cpu if cpu is not None else UNLIMITED)
                    if "cpu" in knobs or not holds
                    else None,
                    memory_high=(high if high is not None else UNLIMITED)
                    if "memory_high" in knobs or not holds
                    else None,
                ),
            )
            if thaw:
                try:
                    self.backend.thaw(found.rel)
                except CgroupError as e:
                    raise UnavailableError(f"could not thaw {target.describe()}: {e}") from e
            self._stamp(found.rel, knobs + (["freeze"] if thaw else []))
            if mine is not None:
                self._drop_hold(found.rel, by)
        if mine is None and not thaw:
            return ControlResult(target, "resume", False, found.tool_calls)
        details = {"by": by}
        if others:
            details["still_held_by"] = ",".join(sorted(others))
        self._publish(target, found, "resumed", details)
        return ControlResult(target, "resume", True, found.tool_calls)

    def evict(
        self, caller: Caller, target: Target, reason: str = "", by: str = "api"
    ) -> ControlResult:
        """Kill a tool call's processes (its SDK reports the SIGKILL as its result), or
        close a session: every tool call killed, its groups removed. Every hold on the
        target goes with it."""
        with self._lock:
            found = self._resolve(caller, target)
            self._drop_holds_under(found.rel)
        if target.tool_call_id:
            self.manager.kill_tool_call(caller, target.tool_call_id, 9)
        else:
            self.manager.close_session(caller, target.session_id)
        self._publish(target, found, "evicted", {"by": by, "reason": reason})
        return ControlResult(target, "evict", True, found.tool_calls)

    def forget(self, target: Target) -> None:
        """Drop what is remembered about a group that is gone (and its children)."""
        with self._lock:
            rel = self._rel(target)
            self._drop_holds_under(rel)
            for key in [k for k in self._last_write if k[0] == rel]:
                del self._last_write[key]

    # ---- holds ------------------------------------------------------------------

    def _set_hold(self, rel: str, actor: str, hold: Hold) -> None:
        self._holds.setdefault(rel, {})[actor] = hold
        self.store.save_hold(rel, actor, hold.cpu, hold.memory_high, hold.frozen)

    def _drop_hold(self, rel: str, actor: str) -> None:
        holds = self._holds.get(rel, {})
        holds.pop(actor, None)
        if not holds:
            self._holds.pop(rel, None)
        self.store.forget_holds(rel, actor)

    def _drop_holds_under(self, rel: str) -> None:
        for held in [r for r in self._holds if r == rel or r.startswith(rel + "/")]:
            del self._holds[held]
            self.store.forget_holds(held)

    # ---- helpers ----------------------------------------------------------------

    @staticmethod
    def _rel(target: Target) -> str:
        if target.tool_call_id:
            return f"sessions/{target.session_id}/{target.tool_call_id}"
        return f"sessions/{target.session_id}"

    def _resolve(self, caller: Caller, target: Target) -> _Resolved:
        try:
            return self._find(caller, target)
        except NotFoundError:
            if target.session_id and self._rel(target) in self._holds:
                self._drop_holds_under(self._rel(target))
            raise

    def _find(self, caller: Caller, target: Target) -> _Resolved:
        if not target.session_id:
            raise InvalidArgumentError("target.session_id", "is required")
        session = self.manager.get_session(caller, target.session_id)
        if not target.tool_call_id:
            running = self.manager.running_count(session.id)
            return _Resolved(self._rel(target), session.owner_uid, session.budget, running)
        tool_call = self.manager.get_tool_call(caller, target.tool_call_id)
        if tool_call.session_id != session.id:
            raise NotFoundError(f"tool call in session {session.id!r}", target.tool_call_id)
        if not tool_call.running:
            raise NotFoundError("running tool call", target.tool_call_id)
        return _Resolved(self._rel(target), tool_call.owner_uid, tool_call.limits, 1)

    def _check_interval(self, rel: str, knobs: list[str], target: Target) -> None:
        now = self._clock()
        for knob in knobs:
            last = self._last_write.get((rel, knob))
            if last is not None and now - last < self.min_interval_seconds:
                wait = self.min_interval_seconds - (now - last)
                raise TooSoonError(
                    f"{knob} of {target.describe()} was changed {now - last:.2f} s ago; "
                    f"changes are at least {self.min_interval_seconds:g} s apart",
                    retry_after_seconds=wait,
                )

    def _stamp(self, rel: str, knobs: list[str]) -> None:
        now = self._clock()
        for knob in knobs:
            self._last_write[(rel, knob)] = now

    def _write(self, rel: str, limits: GroupLimits) -> None:
        try:
            self.backend.set_limits(rel, limits)
        except CgroupError as e:
            raise UnavailableError(f"could not write limits of {rel}: {e}") from e

    def _publish(
        self, target: Target, found: _Resolved, kind: str, details: dict[str, str]
    ) -> None:
        log.info(f"control.{kind}", target=target.describe(), **details)
        self.manager.bus.publish(
            Event(
                session_id=target.session_id,
                tool_call_id=target.tool_call_id,
                owner_uid=found.owner_uid,
                kind=kind,
                payload=details,
            )
        )
