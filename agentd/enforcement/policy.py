"""The pressure policy's decisions, free of I/O: samples in, actions out.

`classify` turns one sample of the node's signals into a level (HIGH, HOLD, LOW) with
separate enter and exit thresholds; `PressurePolicy.step` walks an escalation ladder
(throttle the lowest class, freeze it, then the next class) one step at a time:

- up one step when the level has been HIGH for `dwell_seconds` (the first step as soon
  as it is HIGH: reacting late to memory pressure means OOM kills);
- down one class (resume: thaw and lift the throttle together) when the level has been
  LOW for `dwell_seconds`;
- never two level changes within `dwell_seconds`, and never a session's knobs changed
  twice within `min_rewrite_interval_seconds` (a change due sooner waits);
- interactive sessions are never on the ladder.

A flapping input (HIGH, LOW, HIGH, ...) never stays in one level for the dwell time, so
after the first reaction the output holds still until the input settles.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from agentd.model import Priority


class Level(enum.Enum):
    LOW = "low"  # every signal below its exit threshold: resume allowed
    HOLD = "hold"  # between the thresholds: keep what is in force
    HIGH = "high"  # some signal at or above its enter threshold: escalate


@dataclass(frozen=True)
class Sample:
    """One observation of the signals; None means not available on this node."""

    time: float  # monotonic seconds
    memory_psi: float | None = None  # /proc/pressure/memory some avg10 (%)
    cpu_psi: float | None = None  # /proc/pressure/cpu some avg10 (%)
    group_memory_psi: float | None = None  # agentd's sessions group memory.pressure (v2)
    usage_fraction: float | None = None  # sessions' memory / node allocatable
    limit_events: int = 0  # new memory.events max + oom_kill of the sessions group
    guard_actions: int = 0  # guard_action events within the guard window

    def as_details(self) -> dict[str, str]:
        out = {}
        for name in ("memory_psi", "cpu_psi", "group_memory_psi", "usage_fraction"):
            value = getattr(self, name)
            if value is not None:
                out[name] = f"{value:.3f}"
        out["limit_events"] = str(self.limit_events)
        out["guard_actions"] = str(self.guard_actions)
        return out


@dataclass(frozen=True)
class Thresholds:
    """Enter / exit thresholds; an enter threshold of 0 disables that signal."""

    memory_psi_enter: float = 20.0
    memory_psi_exit: float = 5.0
    cpu_psi_enter: float = 0.0
    cpu_psi_exit: float = 0.0
    usage_enter: float = 0.9
    usage_exit: float = 0.75


def classify(sample: Sample, t: Thresholds) -> tuple[Level, list[str]]:
    """The level of one sample and the reasons (signals at or above their enter)."""
    checks = [
        ("memory_psi", sample.memory_psi, t.memory_psi_enter, t.memory_psi_exit),
        ("group_memory_psi", sample.group_memory_psi, t.memory_psi_enter, t.memory_psi_exit),
        ("cpu_psi", sample.cpu_psi, t.cpu_psi_enter, t.cpu_psi_exit),
        ("usage_fraction", sample.usage_fraction, t.usage_enter, t.usage_exit),
    ]
    high: list[str] = []
    settled = True
    for name, value, enter, exit_ in checks:
        if not enter or value is None:
            continue
        if value >= enter:
            high.append(f"{name}={value:.3g}>={enter:g}")
        if value >= exit_:
            settled = False
    if sample.limit_events:
        high.append(f"memory_limit_events={sample.limit_events}")
    if sample.guard_actions:
        high.append(f"guard_actions={sample.guard_actions}")
    if high:
        return Level.HIGH, high
    return (Level.LOW if settled else Level.HOLD), []


class Status(enum.IntEnum):
    NONE = 0
    THROTTLED = 1
    FROZEN = 2


@dataclass(frozen=True)
class Candidate:
    session_id: str
    priority: Priority


@dataclass(frozen=True)
class Action:
    kind: str  # "throttle", "freeze" or "resume"
    session_id: str
    priority: Priority


@dataclass(frozen=True)
class _Step:
    priority: Priority
    status: Status


class PressurePolicy:
    def __init__(
        self,
        dwell_seconds: float = 5.0,
        min_rewrite_interval_seconds: float = 5.0,
        classes: tuple[Priority, ...] = (Priority.BATCH, Priority.NORMAL),
    ) -> None:
        """`classes`: the classes the policy may act on, lowest priority first."""
        if Priority.INTERACTIVE in classes:
            raise ValueError("interactive sessions are never throttled by the pressure policy")
        self.dwell_seconds = dwell_seconds
        self.min_rewrite_interval_seconds = min_rewrite_interval_seconds
        self.classes = classes
        self._ladder = [_Step(p, s) for p in classes for s in (Status.THROTTLED, Status.FROZEN)]
        self.level = 0  # how many ladder steps are in force
        self._last_change: float | None = None
        self._high_since: float | None = None
        self._low_since: float | None = None
        self._status: dict[str, Status] = {}
        self._last_write: dict[str, float] = {}
        self._busy: Collection[Priority] | None = None

    @property
    def state(self) -> str:
        """normal, throttling or freezing: the top step in force."""
        if self.level == 0:
            return "normal"
        return "freezing" if self._ladder[self.level - 1].status == Status.FROZEN else "throttling"

    @property
    def quiet(self) -> bool:
        """No step in force and no session held: a step at a level other than HIGH would
        change nothing and ask for nothing (the controller skips it, and the sessions'
        listing it needs)."""
        return self.level == 0 and not self._status

    def observe(self, now: float, level: Level) -> None:
        """What `step` does while quiet and not HIGH: only follow the level's streaks
        (a later step measures its dwell from them)."""
        self._track_streaks(now, level)

    def status_of(self, session_id: str) -> Status:
        return self._status.get(session_id, Status.NONE)

    def step(
        self,
        now: float,
        level: Level,
        candidates: Iterable[Candidate],
        busy: Collection[Priority] | None = None,
    ) -> list[Action]:
        """Advance the state machine by one sample; the actions to carry out now.

        `busy`: the classes with running tool calls (None: unknown, taken as all).
        Freezing a class frees no memory; it only protects the work of higher classes.
        So a class is frozen only while a higher class is busy, and resumed (after a
        dwell) when none is, even if the pressure stays: with nothing to protect,
        pausing would only stall it (its frozen memory would keep the pressure high).

        The caller reports each action's outcome with `applied` (so a refused or failed
        one is tried again on a later step).
        """
        sessions = [c for c in candidates if c.priority in self.classes]
        present = {c.priority for c in sessions}
        self._busy = busy
        self._track_streaks(now, level)
        top = self._ladder[self.level - 1] if self.level else None
        if top and top.status == Status.FROZEN and not self._protects(top.priority):
            if now - (self._last_change or 0.0) >= self.dwell_seconds:
                self._deescalate(now)
        elif level == Level.HIGH and self._due(now, self._high_since):
            self._escalate(now, present)
        elif level == Level.LOW and self._due(now, self._low_since):
            self._deescalate(now)
        return self._actions(now, sessions)

    def applied(self, now: float, action: Action) -> None:
        """`action` took effect: remember the status and the time of the write."""
        self._last_write[action.session_id] = now
        if action.kind == "throttle":
            self._status[action.session_id] = Status.THROTTLED
        elif action.kind == "freeze":
            self._status[action.session_id] = Status.FROZEN
        else:
            self._status.pop(action.session_id, None)

    def adopt(self, now: float, session_id: str, priority: Priority, status: Status) -> None:
        """A session found in `status` at start (a daemon restart while the policy held
        it): remember it, and put the ladder at least as high as that status implies, so
        that it is resumed by the usual rule (LOW for a dwell), not left as it is."""
        if priority not in self.classes or status == Status.NONE:
            return
        self._status[session_id] = status
        step = self._ladder.index(_Step(priority, status)) + 1
        if step > self.level:
            self.level = step
        self._last_change = now

    def forget(self, session_id: str) -> None:
        self._status.pop(session_id, None)
        self._last_write.pop(session_id, None)

    # ---- internals --------------------------------------------------------------

    def _track_streaks(self, now: float, level: Level) -> None:
        if level == Level.HIGH:
            self._high_since = self._high_since if self._high_since is not None else now
        else:
            self._high_since = None
        if level == Level.LOW:
            self._low_since = self._low_since if self._low_since is not None else now
        else:
            self._low_since = None

    def _due(self, now: float, since: float | None) -> bool:
        """Whether the current streak may change the level now."""
        if since is None:
            return False
        if self._last_change is None:
            return True  # the first reaction: at once (late means OOM kills)
        if now - self._last_change < self.dwell_seconds:
            return False
        # Later changes need the level held for a whole dwell, or a signal oscillating
        # around a threshold would throttle-resume-throttle.
        return now - since >= self.dwell_seconds

    def _protects(self, priority: Priority) -> bool:
        """Whether a class above `priority` has work running (unknown: yes)."""
        return self._busy is None or any(p < priority for p in self._busy)

    def _escalate(self, now: float, present: set[Priority]) -> None:
        """Up one step; steps of classes with no session are passed over, and a freeze
        is not a step to take while no higher class is busy."""
        target = self.level + 1
        while target <= len(self._ladder):
            step = self._ladder[target - 1]
            if step.priority in present:
                if step.status == Status.FROZEN and not self._protects(step.priority):
                    return
                self._move(now, target)
                return
            target += 1

    def _deescalate(self, now: float) -> None:
        """Down one class: its sessions resume (thaw and unthrottle together)."""
        if self.level == 0:
            return
        top = self._ladder[self.level - 1].priority
        target = self.level
        while target > 0 and self._ladder[target - 1].priority == top:
            target -= 1
        self._move(now, target)

    def _move(self, now: float, target: int) -> None:
        self.level = target
        self._last_change = now

    def _wanted(self, priority: Priority) -> Status:
        wanted = Status.NONE
        for step in self._ladder[: self.level]:
            if step.priority == priority:
                wanted = max(wanted, step.status)
        return wanted

    def _actions(self, now: float, sessions: list[Candidate]) -> list[Action]:
        live = {c.session_id for c in sessions}
        for gone in [s for s in self._status if s not in live]:
            self.forget(gone)
        actions = []
        for c in sessions:
            have, want = self.status_of(c.session_id), self._wanted(c.priority)
            if have == want:
                continue
            last = self._last_write.get(c.session_id)
            if last is not None and now - last < self.min_rewrite_interval_seconds:
                continue  # anti-flap: this session's knobs were changed too recently
            if want == Status.NONE:
                actions.append(Action("resume", c.session_id, c.priority))
            elif want == Status.THROTTLED and have == Status.NONE:
                actions.append(Action("throttle", c.session_id, c.priority))
            elif want == Status.FROZEN:
                if have == Status.NONE:
                    actions.append(Action("throttle", c.session_id, c.priority))
                actions.append(Action("freeze", c.session_id, c.priority))
            # FROZEN -> THROTTLED does not happen: resuming is per class, all the way.
        return actions
