"""The pressure loop: sample the signals, let the policy decide, act through Control.

The only module of the pressure policy with side effects. Every knob is written by
`agentd.control.Control` (the one writer of throttle / freeze / resume, shared with
the scheduler API, with its own anti-flap interval); the policy (policy.py) only
decides. An action Control refuses (too soon, the session just closed) is not
recorded as applied, so the policy asks for it again on a later tick.

Idle (docs/pressure.md): while the policy is quiet, every signal is LOW and the kernel
notifies each signal's change (agentd/enforcement/wakeups.py), the loop sleeps until a
notification (QUIET_WAKE_SECONDS at most) instead of sampling every interval.
"""

from __future__ import annotations

import threading
import time

import structlog
from prometheus_client import Counter, Gauge

from agentd.config import PressureConfig
from agentd.control import Control, Target
from agentd.enforcement.policy import (
    Action,
    Candidate,
    Level,
    PressurePolicy,
    Sample,
    Status,
    Thresholds,
    classify,
)
from agentd.enforcement.pressure import SESSIONS, PressureMonitor
from agentd.enforcement.priorities import PriorityTable
from agentd.enforcement.wakeups import Wakeups
from agentd.errors import AgentdError, NotFoundError
from agentd.events import Event
from agentd.manager import Caller, Manager
from agentd.model import Resources

log = structlog.get_logger("agentd.pressure")

ROOT = Caller(uid=0, gid=0, pid=0)
#: The longest sleep while idle (quiet, LOW, every signal notified): a safety net.
QUIET_WAKE_SECONDS = 5.0
#: The PSI triggers' share of stall is at most this (the loop's early wake-up before
#: the idle sleep existed: 100 ms of a 1 s window), else the exit threshold's.
EARLY_WAKE_SHARE = 0.1
#: The actor name of the policy's holds in Control.
BY = "pressure"

PRESSURE_LEVEL = Gauge(
    "agentd_pressure_ladder_steps",
    "Escalation steps of the pressure policy in force (0: normal)",
)
PRESSURE_SIGNAL = Gauge(
    "agentd_pressure_signal_ratio",
    "Last sample of each pressure signal (PSI avg10 in %, usage as a fraction)",
    ["signal"],
)
PRESSURE_ACTIONS = Counter(
    "agentd_pressure_actions_total",
    "Throttle, freeze and resume actions of the pressure policy, by outcome",
    ["action", "outcome"],
)


class PressureController:
    def __init__(
        self,
        manager: Manager,
        control: Control,
        monitor: PressureMonitor,
        policy: PressurePolicy,
        thresholds: Thresholds,
        priorities: PriorityTable,
        interval_seconds: float = 0.5,
    ) -> None:
        self.manager = manager
        self.control = control
        self.monitor = monitor
        self.policy = policy
        self.thresholds = thresholds
        self.priorities = priorities
        self.interval_seconds = interval_seconds
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.wakeups: Wakeups | None = None
        self.idle = False  # the last tick found nothing that needs the next interval
        self.ticks = 0
        self.last_level: Level | None = None

    def tick(self, now: float | None = None) -> list[Action]:
        """One sample, one decision; returns the actions that took effect."""
        now = time.monotonic() if now is None else now
        sample = self.monitor.sample(now)
        level, reasons = classify(sample, self.thresholds)
        for name, value in sample.as_details().items():
            PRESSURE_SIGNAL.labels(name).set(float(value))
        self.ticks += 1
        self.last_level = level
        self.idle = level is Level.LOW and self.policy.quiet and self._notified(sample)
        if level is not Level.HIGH and self.policy.quiet:
            # Nothing in force, nothing to escalate: the common idle tick ends here.
            self.policy.observe(now, level)
            PRESSURE_LEVEL.set(0)
            return []
        sessions = {s.id: s for s in self.manager.list_sessions(ROOT)}
        before = self.policy.state
        busy = {s.priority for s in sessions.values() if self.manager.running_count(s.id)}
        actions = self.policy.step(
            now, level, [Candidate(s.id, s.priority) for s in sessions.values()], busy
        )
        PRESSURE_LEVEL.set(self.policy.level)
        if self.policy.state != before:
            self._publish_state(before, level, reasons, sample.as_details())
        done = []
        failed: set[str] = set()
        for action in actions:
            session = sessions.get(action.session_id)
            # A freeze follows its session's throttle only if the throttle took.
            if session is None or action.session_id in failed:
                continue
            if self._apply(action, session.budget):
                self.policy.applied(now, action)
                done.append(action)
            else:
                failed.add(action.session_id)
        return done

    def _notified(self, sample: Sample) -> bool:
        """Whether the kernel wakes the loop for every signal that could leave LOW."""
        wakeups, t = self.wakeups, self.thresholds
        if wakeups is None:
            return False
        memory_psi, cpu_psi = self.monitor.psi_paths
        covered = [
            (sample.memory_psi, t.memory_psi_enter, memory_psi in wakeups.psi),
            (sample.cpu_psi, t.cpu_psi_enter, cpu_psi in wakeups.psi),
            # v2's group PSI, memory.events and memory use: no notification wired yet.
            (sample.group_memory_psi, t.memory_psi_enter, False),
            (sample.usage_fraction, t.usage_enter, wakeups.usage_threshold),
        ]
        if any(value is not None and enter and not ok for value, enter, ok in covered):
            return False
        # Limit events: on v1 only the sessions group's own OOM kills count, and they
        # come at its limit (the allocatable), past the usage threshold: notified.
        return self.manager.backend.name == "v1" and (
            wakeups.usage_threshold or not self.monitor.allocatable_memory
        )

    def _build_wakeups(self) -> Wakeups:
        t, wakeups = self.thresholds, Wakeups()
        memory_psi, cpu_psi = self.monitor.psi_paths
        for path, enter, exit_ in (
            (memory_psi, t.memory_psi_enter or 10.0, t.memory_psi_exit or 10.0),
            (cpu_psi, t.cpu_psi_enter, t.cpu_psi_exit),
        ):
            if enter and exit_:
                wakeups.add_psi(path, min(exit_ / 100, EARLY_WAKE_SHARE))
        backend, allocatable = self.manager.backend, self.monitor.allocatable_memory
        if backend.name == "v1" and t.usage_enter and allocatable:
            # At usage_exit: idle ends; at usage_enter too, so that the crossing is seen
            # at once rather than at the next interval (~ half of it later).
            memory = backend.path_in("memory", SESSIONS)  # type: ignore[attr-defined]
            for fraction in sorted({t.usage_exit, t.usage_enter}):
                wakeups.add_memory_threshold_v1(memory, int(allocatable * fraction))
        return wakeups

    def _apply(self, action: Action, budget: Resources) -> bool:
        target = Target(action.session_id)
        try:
            if action.kind == "throttle":
                limits = self.priorities.throttle_limits(budget, action.priority)
                if limits is None:
                    return False
                self.control.throttle(
                    ROOT,
                    target,
                    cpu_max=limits.cpu_max_cores,
                    memory_high=limits.memory_high,
                    by=BY,
                )
            elif action.kind == "freeze":
                self.control.freeze(ROOT, target, by=BY)
            else:
                self.control.resume(ROOT, target, by=BY)
        except NotFoundError:
            self.policy.forget(action.session_id)
            PRESSURE_ACTIONS.labels(action.kind, "gone").inc()
            return False
        except AgentdError as e:
            # TooSoonError (anti-flap) or a cgroupfs failure: asked again next tick.
            log.info("pressure.action_deferred", action=action.kind, session=action.session_id,
                     reason=e.message)  # fmt: skip
            PRESSURE_ACTIONS.labels(action.kind, "deferred").inc()
            return False
        PRESSURE_ACTIONS.labels(action.kind, "applied").inc()
        return True

    def _publish_state(
        self, before: str, level: Level, reasons: list[str], signals: dict[str, str]
    ) -> None:
        details = {
            "state": self.policy.state,
            "previous": before,
            "level": level.value,
            "steps": str(self.policy.level),
            "reasons": "; ".join(reasons),
            **signals,
        }
        log.info("pressure.state", **details)
        self.manager.bus.publish(
            Event(session_id="", tool_call_id="", owner_uid=0, kind="pressure", payload=details)
        )

    # ---- the loop ---------------------------------------------------------------

    def adopt_frozen(self, now: float | None = None) -> int:
        """After a restart: sessions the policy held (Control's persisted holds by
        "pressure": throttled or frozen) are taken back into its state, so that they are
        resumed when the pressure is gone. A session found frozen that nobody is known to
        hold (a state from before holds were kept) is adopted as the policy's freeze."""
        now = time.monotonic() if now is None else now
        adopted = 0
        for session in self.manager.list_sessions(ROOT):
            if not self.priorities.throttleable(session.priority):
                continue
            target = Target(session.id)
            holds = self.control.holds(target)
            mine = holds.get(BY)
            if mine is not None and (mine.frozen or mine.throttles):
                status = Status.FROZEN if mine.frozen else Status.THROTTLED
            elif not holds and self.control.is_frozen(target):
                status = Status.FROZEN
            else:
                continue
            self.policy.adopt(now, session.id, session.priority, status)
            adopted += 1
        if adopted:
            log.info("pressure.adopted", sessions=adopted, state=self.policy.state)
        return adopted

    def start(self) -> None:
        self.adopt_frozen()
        self.wakeups = wakeups = self._build_wakeups()
        self.monitor.on_guard_action = wakeups.wake
        log.info(
            "pressure.started", psi_triggers=sorted(wakeups.psi),
            usage_threshold=wakeups.usage_threshold, interval=self.interval_seconds,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._run, name="agentd-pressure", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.wakeups is not None:
            self.wakeups.wake()
        if self._thread is not None:
            self._thread.join(5.0)
        self.monitor.close()
        if self.wakeups is not None:
            self.monitor.on_guard_action = None
            self.wakeups.close()

    def _run(self) -> None:
        assert self.wakeups is not None
        woken = False
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                self.idle = False
                log.exception("pressure.tick_failed")
            # Woken early by a stall, a crossing or a guard action; otherwise one
            # sample per interval, or none until woken while idle. After a wake-up one
            # more interval in any case: a guard action wakes the loop from inside its
            # publication, possibly before the event is in the monitor's queue.
            idle = self.idle and not woken
            woken = self.wakeups.wait(QUIET_WAKE_SECONDS if idle else self.interval_seconds)


def start_pressure(
    cfg: PressureConfig | None,
    manager: Manager,
    control: Control,
    priorities: PriorityTable,
    allocatable_memory: int,
) -> PressureController | None:
    """Build and start the pressure loop from [pressure]; None when it is disabled."""
    if cfg is None or not cfg.enabled:
        log.info("pressure.disabled")
        return None
    controller = PressureController(
        manager,
        control,
        PressureMonitor(manager.backend, allocatable_memory, manager.bus, cfg.guard_window_seconds),
        PressurePolicy(cfg.dwell_seconds, cfg.min_rewrite_interval_seconds),
        Thresholds(
            memory_psi_enter=cfg.memory_psi_enter,
            memory_psi_exit=cfg.memory_psi_exit,
            cpu_psi_enter=cfg.cpu_psi_enter,
            cpu_psi_exit=cfg.cpu_psi_exit,
            usage_enter=cfg.usage_enter,
            usage_exit=cfg.usage_exit,
        ),
        priorities,
        cfg.interval_seconds,
    )
    controller.start()
    return controller
