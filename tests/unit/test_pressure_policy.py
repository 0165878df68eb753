"""The pressure policy's decisions on synthetic pressure series (no I/O)."""

from __future__ import annotations

import itertools

import pytest

from agentd.enforcement.policy import (
    Candidate,
    Level,
    PressurePolicy,
    Sample,
    Status,
    Thresholds,
    classify,
)
from agentd.model import Priority

INTER, N, B = Priority.INTERACTIVE, Priority.NORMAL, Priority.BATCH
SESSIONS = [Candidate("ia", INTER), Candidate("no", N), Candidate("ba", B), Candidate("bb", B)]
TICK = 0.5


def run(policy: PressurePolicy, series: list[tuple[float, Level]], sessions=SESSIONS):
    """Feed (time, level) samples, apply every action at once; the actions in order."""
    log = []
    for now, level in series:
        for action in policy.step(now, level, sessions):
            policy.applied(now, action)
            log.append((now, action.kind, action.session_id))
    return log


def constant(level: Level, start: float, seconds: float) -> list[tuple[float, Level]]:
    return [(start + i * TICK, level) for i in range(int(seconds / TICK))]


# ---- classify ----------------------------------------------------------------------


def test_classify_enter_exit_and_band() -> None:
    t = Thresholds(memory_psi_enter=20, memory_psi_exit=5, usage_enter=0.9, usage_exit=0.75)
    assert classify(Sample(0, memory_psi=25.0, usage_fraction=0.1), t)[0] == Level.HIGH
    assert classify(Sample(0, memory_psi=1.0, usage_fraction=0.95), t)[0] == Level.HIGH
    assert classify(Sample(0, memory_psi=10.0, usage_fraction=0.1), t)[0] == Level.HOLD
    assert classify(Sample(0, memory_psi=1.0, usage_fraction=0.8), t)[0] == Level.HOLD
    assert classify(Sample(0, memory_psi=1.0, usage_fraction=0.5), t)[0] == Level.LOW
    _, reasons = classify(Sample(0, memory_psi=30.0, usage_fraction=0.95), t)
    assert reasons == ["memory_psi=30>=20", "usage_fraction=0.95>=0.9"]


def test_classify_disabled_and_missing_signals_are_ignored() -> None:
    t = Thresholds(cpu_psi_enter=0, cpu_psi_exit=0)
    assert classify(Sample(0, cpu_psi=99.0), t)[0] == Level.LOW  # cpu disabled
    assert classify(Sample(0), t)[0] == Level.LOW  # nothing known: nothing to react to
    t = Thresholds(cpu_psi_enter=80, cpu_psi_exit=40)
    assert classify(Sample(0, cpu_psi=90.0), t)[0] == Level.HIGH
    # per-group PSI uses the memory thresholds
    assert classify(Sample(0, group_memory_psi=25.0), t)[0] == Level.HIGH


def test_classify_limit_events_and_guard_actions_are_pressure() -> None:
    t = Thresholds()
    assert classify(Sample(0, usage_fraction=0.1, limit_events=3), t) == (
        Level.HIGH,
        ["memory_limit_events=3"],
    )
    assert classify(Sample(0, guard_actions=1), t)[0] == Level.HIGH


# ---- the ladder --------------------------------------------------------------------


def test_escalates_lowest_class_first_and_never_touches_interactive() -> None:
    policy = PressurePolicy(dwell_seconds=2, min_rewrite_interval_seconds=2)
    log = run(policy, constant(Level.HIGH, 0, 30))
    assert log == [
        (0.0, "throttle", "ba"),
        (0.0, "throttle", "bb"),
        (2.0, "freeze", "ba"),
        (2.0, "freeze", "bb"),
        (4.0, "throttle", "no"),
        (6.0, "freeze", "no"),
    ]
    assert policy.state == "freezing"
    assert policy.status_of("ia") == Status.NONE


def test_state_names_follow_the_top_step() -> None:
    policy = PressurePolicy(dwell_seconds=2, min_rewrite_interval_seconds=2)
    assert policy.state == "normal"
    run(policy, [(0, Level.HIGH)])
    assert policy.state == "throttling"
    run(policy, [(2, Level.HIGH)])
    assert policy.state == "freezing"


def test_resumes_highest_class_first_after_low_for_a_dwell() -> None:
    policy = PressurePolicy(dwell_seconds=2, min_rewrite_interval_seconds=2)
    run(policy, constant(Level.HIGH, 0, 8))  # everything but interactive frozen
    log = run(policy, constant(Level.LOW, 8, 10))
    assert log == [(10.0, "resume", "no"), (12.0, "resume", "ba"), (12.0, "resume", "bb")]
    assert policy.state == "normal"


def test_hold_band_keeps_what_is_in_force() -> None:
    policy = PressurePolicy(dwell_seconds=2, min_rewrite_interval_seconds=2)
    run(policy, constant(Level.HIGH, 0, 2.5))  # batch frozen at t=2
    assert run(policy, constant(Level.HOLD, 2.5, 60)) == []
    assert policy.status_of("ba") == Status.FROZEN


def test_flapping_input_does_not_flap_the_output() -> None:
    policy = PressurePolicy(dwell_seconds=3, min_rewrite_interval_seconds=3)
    # The signal crosses both thresholds every sample for two minutes.
    series = [(i * TICK, Level.HIGH if i % 2 == 0 else Level.LOW) for i in range(240)]
    log = run(policy, series)
    # One reaction (throttle batch at once), then nothing: no level held for a dwell.
    assert log == [(0.0, "throttle", "ba"), (0.0, "throttle", "bb")]
    # Slower flapping, each level held 2 s (< dwell 3 s): the same.
    policy = PressurePolicy(dwell_seconds=3, min_rewrite_interval_seconds=3)
    series = [(i * TICK, Level.HIGH if (i // 4) % 2 == 0 else Level.LOW) for i in range(240)]
    assert len(run(policy, series)) == 2


def test_no_session_rewritten_within_the_min_interval() -> None:
    policy = PressurePolicy(dwell_seconds=1, min_rewrite_interval_seconds=5)
    log = run(policy, constant(Level.HIGH, 0, 2) + constant(Level.LOW, 2, 20))
    times: dict[str, list[float]] = {}
    for now, _, sid in log:
        times.setdefault(sid, []).append(now)
    for sid, ts in times.items():
        distinct = sorted(set(ts))  # throttle+freeze of one session in one tick is one change
        gaps = [b - a for a, b in itertools.pairwise(distinct)]
        assert all(g >= 5 for g in gaps), (sid, ts)
    # and the resume still happens, once the interval allows it (the freeze due at 1
    # was held back by the interval too, then no longer wanted)
    resumes = [now for now, kind, sid in log if kind == "resume" and sid == "ba"]
    assert resumes == [5.0]
    assert [k for _, k, s in log if s == "ba"] == ["throttle", "resume"]


def test_reentry_after_resume_needs_high_for_a_dwell() -> None:
    policy = PressurePolicy(dwell_seconds=2, min_rewrite_interval_seconds=2)
    run(policy, constant(Level.HIGH, 0, 1) + constant(Level.LOW, 1, 4))
    assert policy.state == "normal"
    log = run(policy, constant(Level.HIGH, 5, 1.5))
    assert log == []  # 1.5 s of HIGH < dwell
    log = run(policy, constant(Level.HIGH, 6.5, 2))
    assert [k for _, k, _ in log] == ["throttle", "throttle"]


def test_refused_action_is_asked_again() -> None:
    policy = PressurePolicy(dwell_seconds=2, min_rewrite_interval_seconds=2)
    sessions = [Candidate("ba", B)]
    first = policy.step(0, Level.HIGH, sessions)
    assert [a.kind for a in first] == ["throttle"]  # not applied (e.g. Control said too soon)
    again = policy.step(0.5, Level.HIGH, sessions)
    assert [a.kind for a in again] == ["throttle"]
    policy.applied(0.5, again[0])
    assert policy.step(1.0, Level.HIGH, sessions) == []


def test_new_session_joins_its_class_state_and_closed_ones_are_forgotten() -> None:
    policy = PressurePolicy(dwell_seconds=2, min_rewrite_interval_seconds=2)
    run(policy, constant(Level.HIGH, 0, 2.5), sessions=[Candidate("ba", B)])
    assert policy.status_of("ba") == Status.FROZEN
    log = run(policy, [(3.0, Level.HOLD)], sessions=[Candidate("bn", B)])
    assert log == [(3.0, "throttle", "bn"), (3.0, "freeze", "bn")]
    assert policy.status_of("ba") == Status.NONE  # gone from the candidates: forgotten


def test_no_candidates_no_escalation_into_empty_classes() -> None:
    policy = PressurePolicy(dwell_seconds=1, min_rewrite_interval_seconds=1)
    assert run(policy, constant(Level.HIGH, 0, 10), sessions=[Candidate("ia", INTER)]) == []
    assert policy.level == 0
    # Only normal sessions: batch steps are passed over.
    log = run(policy, constant(Level.HIGH, 10, 1), sessions=[Candidate("no", N)])
    assert log == [(10.0, "throttle", "no")]


def test_interactive_cannot_be_put_on_the_ladder() -> None:
    with pytest.raises(ValueError, match="interactive"):
        PressurePolicy(classes=(B, INTER))


def test_adopted_frozen_session_is_resumed_by_the_usual_rule() -> None:
    policy = PressurePolicy(dwell_seconds=2, min_rewrite_interval_seconds=2)
    policy.adopt(0.0, "ba", B, Status.FROZEN)
    assert policy.state == "freezing" and policy.level == 2
    sessions = [Candidate("ba", B), Candidate("ia", INTER)]
    assert run(policy, constant(Level.HOLD, 0, 10), sessions) == []  # not resumed blindly
    assert run(policy, constant(Level.LOW, 10, 3), sessions) == [(12.0, "resume", "ba")]
    policy.adopt(20.0, "ia", INTER, Status.FROZEN)  # never interactive
    assert policy.status_of("ia") == Status.NONE


def test_freezes_only_while_a_higher_class_is_busy() -> None:
    policy = PressurePolicy(dwell_seconds=2, min_rewrite_interval_seconds=2)
    sessions = [Candidate("ia", INTER), Candidate("ba", B)]
    log = []
    for now, level in constant(Level.HIGH, 0, 10):
        # interactive busy for 5 s, then its tool calls end; the pressure stays HIGH
        busy = {INTER, B} if now < 5 else {B}
        for action in policy.step(now, level, sessions, busy):
            policy.applied(now, action)
            log.append((now, action.kind, action.session_id))
    # throttled at once, frozen after a dwell; resumed a dwell after the freeze once
    # nothing above batch runs; throttled again after HIGH held a dwell; never refrozen
    assert log == [
        (0.0, "throttle", "ba"),
        (2.0, "freeze", "ba"),
        (5.0, "resume", "ba"),
        (7.0, "throttle", "ba"),
    ]
    assert policy.state == "throttling"


def test_batch_alone_under_pressure_is_throttled_not_frozen() -> None:
    policy = PressurePolicy(dwell_seconds=1, min_rewrite_interval_seconds=1)
    sessions = [Candidate("ba", B), Candidate("bb", B)]
    log = []
    for now, level in constant(Level.HIGH, 0, 10):
        for action in policy.step(now, level, sessions, busy={B}):
            policy.applied(now, action)
            log.append(action.kind)
    assert log == ["throttle", "throttle"]


# ---- the controller's quiet shortcut -------------------------------------------------


def run_with_shortcut(policy: PressurePolicy, series: list[tuple[float, Level]], sessions):
    """run(), but as the controller ticks: while the policy is quiet and the level is not
    HIGH, only observe() (no step, no sessions listed)."""
    log = []
    for now, level in series:
        if level is not Level.HIGH and policy.quiet:
            policy.observe(now, level)
            continue
        for action in policy.step(now, level, sessions):
            policy.applied(now, action)
            log.append((now, action.kind, action.session_id))
    return log


@pytest.mark.parametrize("seed", range(40))
def test_quiet_shortcut_decides_exactly_as_stepping_every_tick(seed: int) -> None:
    """Random level series (runs of HIGH, HOLD and LOW of random lengths), with and
    without sessions of the ladder's classes: the same actions at the same times, and
    the same state after every prefix."""
    import random

    rng = random.Random(seed)
    series, now = [], 0.0
    while len(series) < 200:
        level = rng.choice(list(Level))
        for _ in range(rng.randint(1, 25)):
            series.append((now, level))
            now += TICK
    sessions = SESSIONS if seed % 4 else [Candidate("ia", INTER)]  # nothing to act on
    full, short = PressurePolicy(), PressurePolicy()
    assert run(full, series, sessions) == run_with_shortcut(short, series, sessions)
    assert (full.level, full.state) == (short.level, short.state)


def test_quiet_means_nothing_in_force() -> None:
    policy = PressurePolicy()
    assert policy.quiet
    run(policy, constant(Level.HIGH, 0.0, 1.0))
    assert not policy.quiet and policy.level > 0
    run(policy, constant(Level.LOW, 1.0, 60.0))
    assert policy.level == 0 and policy.quiet
