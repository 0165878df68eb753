"""The memory guard's decisions (agentd/enforcement/guard_policy.py), every branch."""

from __future__ import annotations

from agentd.enforcement.guard_policy import (
    MemoryCrossing,
    PolicySettings,
    Verdict,
    deadlocked,
    decide_memory,
    suggested_memory,
)

M = 1 << 20
SETTINGS = PolicySettings(grant_step=0.25, min_grant=0.05, wait_seconds=10)


def test_grants_the_step_when_the_session_has_room() -> None:
    d = decide_memory(MemoryCrossing(130 * M, 128 * M, 130 * M, 1024 * M), SETTINGS)
    assert d.verdict is Verdict.GRANT
    assert d.new_limit == 130 * M * 5 // 4
    assert d.room == 1024 * M - 130 * M


def test_grant_is_at_least_the_old_limit_plus_the_step() -> None:
    # A session-budget trip while under its own limit: never lowered, raised by the step.
    d = decide_memory(MemoryCrossing(100 * M, 512 * M, 300 * M, 1024 * M), SETTINGS)
    assert d.verdict is Verdict.GRANT and d.new_limit == 640 * M


def test_grant_is_capped_by_what_the_siblings_leave() -> None:
    # Others hold 700M of 1G: this one may hold 324M, the step would want 375M.
    d = decide_memory(MemoryCrossing(300 * M, 300 * M, 1000 * M, 1024 * M), SETTINGS)
    assert d.verdict is Verdict.GRANT and d.new_limit == 324 * M


def test_a_session_trip_under_its_own_limit_resumes_without_lowering_it() -> None:
    # Others hold 600M of 1G: room for 424M, less than its limit of 512M.
    d = decide_memory(MemoryCrossing(300 * M, 512 * M, 900 * M, 1024 * M), SETTINGS)
    assert d.verdict is Verdict.GRANT and d.new_limit == 512 * M


def test_waits_when_the_room_left_is_too_small_to_be_worth_it() -> None:
    # 6M of room for a 250M process: under min_grant (5% = 12.5M), it would trip at once.
    c = MemoryCrossing(250 * M, 250 * M, 250 * M, 256 * M, waited_seconds=1.0)
    d = decide_memory(c, SETTINGS)
    assert d.verdict is Verdict.WAIT and d.room == 6 * M


def test_waits_when_the_session_is_over_its_budget() -> None:
    c = MemoryCrossing(200 * M, 256 * M, 1100 * M, 1024 * M, waited_seconds=0.0)
    assert decide_memory(c, SETTINGS).verdict is Verdict.WAIT


def test_kills_once_the_wait_is_over() -> None:
    c = MemoryCrossing(250 * M, 250 * M, 250 * M, 256 * M, waited_seconds=10.0)
    d = decide_memory(c, SETTINGS)
    assert d.verdict is Verdict.KILL


def test_a_sibling_that_ends_turns_a_wait_into_a_grant() -> None:
    full = MemoryCrossing(100 * M, 100 * M, 1020 * M, 1024 * M, waited_seconds=3.0)
    assert decide_memory(full, SETTINGS).verdict is Verdict.WAIT
    freed = MemoryCrossing(100 * M, 100 * M, 100 * M, 1024 * M, waited_seconds=3.5)
    d = decide_memory(freed, SETTINGS)
    assert d.verdict is Verdict.GRANT and d.new_limit == 125 * M


def test_without_a_session_budget_the_step_is_granted() -> None:
    d = decide_memory(MemoryCrossing(200 * M, 128 * M, 200 * M, 0), SETTINGS)
    assert d.verdict is Verdict.GRANT and d.new_limit == 250 * M and d.room == -1


def test_zero_wait_kills_at_once_when_there_is_no_room() -> None:
    settings = PolicySettings(wait_seconds=0)
    c = MemoryCrossing(250 * M, 250 * M, 256 * M, 256 * M)
    assert decide_memory(c, settings).verdict is Verdict.KILL


def test_suggested_memory_has_the_step_margin() -> None:
    assert suggested_memory(400 * M, SETTINGS) == 500 * M


def test_no_deadlock_while_a_tool_call_of_the_session_still_runs() -> None:
    assert deadlocked({"a": 1.0}, session_tool_calls=2) is None
    assert deadlocked({}, session_tool_calls=0) is None


def test_when_all_wait_the_last_to_stop_is_given_up() -> None:
    assert deadlocked({"a": 1.0, "b": 2.5}, session_tool_calls=2) == "b"
    assert deadlocked({"a": 1.0}, session_tool_calls=1) == "a"
