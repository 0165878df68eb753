"""Throttle, freeze, resume and evict running work: the one place that does it.

Both the scheduler-facing API (NodeService) and the pressure policy act through
`Control`, so there is one writer of these knobs and one anti-flapping rule: a knob
(cpu max, memory high, the freezer) of a group is not rewritten more often than
once per `min_interval_seconds`; a change asked sooner is refused with TooSoonError
(FAILED_PRECONDITION with RetryInfo), never queued.

What to restore on resume is not remembered here: it is the session's budget or
the tool call's limits, which the manager keeps (and recovers after a restart), so
a throttle or freeze survives a daemon restart and is still lifted correctly by
Resume. Only the "who throttled it" flags are in memory; after a restart a frozen
group is found from cgroupfs (`is_frozen`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

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
class ControlResult:
    target: Target
    action: str  # "throttle", "freeze", "resume", "evict"
    changed: bool  # False when the target already was in that state
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
        self.min_interval_seconds = min_interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._last_write: dict[tuple[str, str], float] = {}  # (rel, knob) -> clock
        self._throttled: dict[str, Resources] = {}  # rel -> what this module set

    # ---- queries ----------------------------------------------------------------

    def is_throttled(self, target: Target) -> bool:
        return self._rel(target) in self._throttled

    def is_frozen(self, target: Target) -> bool:
        try:
            return self.backend.is_frozen(self._rel(target))
        except CgroupError:
            return False

    # ---- actions ----------------------------------------------------------------

    def throttle(
        self,
        caller: Caller,
        target: Target,
        cpu_max: float | None = None,
        memory_high: int | None = None,
        by: str = "api",
    ) -> ControlResult:
        """Lower the group's CPU max (cores) and/or memory high (bytes); None leaves a
        knob as it is. Never raises a limit above the group's normal one."""
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
            current = self._throttled.get(found.rel, Resources())
            wanted = Resources(
                cpu=cpu_max if cpu_max is not None else current.cpu,
                memory_high=memory_high if memory_high is not None else current.memory_high,
            )
            if wanted == current:
                return ControlResult(target, "throttle", False, found.tool_calls)
            knobs = [k for k, v in (("cpu", cpu_max), ("memory_high", memory_high)) if v]
            self._check_interval(found.rel, knobs, target)
            self._write(found.rel, GroupLimits(cpu_max_cores=cpu_max, memory_high=memory_high))
            self._stamp(found.rel, knobs)
            self._throttled[found.rel] = wanted
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
            if self.backend.is_frozen(found.rel):
                return ControlResult(target, "freeze", False, found.tool_calls)
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
        self._publish(target, found, "frozen", {"by": by})
        return ControlResult(target, "freeze", True, found.tool_calls)

    def resume(self, caller: Caller, target: Target, by: str = "api") -> ControlResult:
        """Thaw the group and put back its normal cpu max and memory high.

        The normal limits are written even when no throttle is remembered: after a
        daemon restart this module has forgotten what it throttled, and rewriting a
        limit to the value it already has changes nothing.
        """
        with self._lock:
            found = self._resolve(caller, target)
            frozen = self.backend.is_frozen(found.rel)
            throttled = found.rel in self._throttled
            knobs = (["freeze"] if frozen else []) + (["cpu", "memory_high"] if throttled else [])
            self._check_interval(found.rel, knobs, target)
            normal = found.normal
            self._write(
                found.rel,
                GroupLimits(
                    cpu_max_cores=normal.cpu if normal.cpu is not None else UNLIMITED,
                    memory_high=normal.memory_high if normal.memory_high is not None else UNLIMITED,
                ),
            )
            self._throttled.pop(found.rel, None)
            if frozen:
                try:
                    self.backend.thaw(found.rel)
                except CgroupError as e:
                    raise UnavailableError(f"could not thaw {target.describe()}: {e}") from e
            self._stamp(found.rel, knobs)
        if not knobs:
            return ControlResult(target, "resume", False, found.tool_calls)
        self._publish(target, found, "resumed", {"by": by})
        return ControlResult(target, "resume", True, found.tool_calls)

    def evict(
        self, caller: Caller, target: Target, reason: str = "", by: str = "api"
    ) -> ControlResult:
        """Kill a tool call's processes (its SDK reports the SIGKILL as its result), or
        close a session: every tool call killed, its groups removed."""
        with self._lock:
            found = self._resolve(caller, target)
            self._throttled.pop(found.rel, None)
        if target.tool_call_id:
            self.manager.kill_tool_call(caller, target.tool_call_id, 9)
        else:
            self.manager.close_session(caller, target.session_id)
        self._publish(target, found, "evicted", {"by": by, "reason": reason})
        return ControlResult(target, "evict", True, found.tool_calls)

    def forget(self, target: Target) -> None:
        """Drop what is remembered about a group that is gone."""
        with self._lock:
            rel = self._rel(target)
            self._throttled.pop(rel, None)
            for key in [k for k in self._last_write if k[0] == rel]:
                del self._last_write[key]

    # ---- helpers ----------------------------------------------------------------

    @staticmethod
    def _rel(target: Target) -> str:
        if target.tool_call_id:
            return f"sessions/{target.session_id}/{target.tool_call_id}"
        return f"sessions/{target.session_id}"

    def _resolve(self, caller: Caller, target: Target) -> _Resolved:
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
