"""What an agent reads when a guard acted (agentd/enforcement/feedback.py)."""

from __future__ import annotations

from agentd.enforcement import feedback

M = 1 << 20
ARGV = ("python3", "-m", "pytest", "-n", "8")


def test_memory_killed_names_the_figures_and_the_intent_to_ask_for() -> None:
    e = feedback.memory_killed(
        "memory", 612 * M, 512 * M, 700 * M, 900 * M, 1024 * M, 42, "python3", ARGV
    )
    assert (e.action, e.limit, e.unit, e.limit_value, e.value) == (
        "killed", "memory", "bytes", 512 * M, 612 * M,
    )  # fmt: skip
    assert e.suggestion.startswith("memory 612.0M over intent 512M")
    assert "raise intent.memory_max to 700M" in e.suggestion
    assert e.pid == 42 and e.argv == ARGV and e.time > 0


def test_session_budget_kill_points_at_the_session() -> None:
    e = feedback.memory_killed(
        "session_memory", 200 * M, 256 * M, 250 * M, 1100 * M, 1024 * M, 7, "cc1", ()
    )
    assert e.limit == "session_memory" and e.limit_value == 1024 * M and e.value == 1100 * M
    assert "budget.memory_max" in e.suggestion and "fewer tool calls" in e.suggestion


def test_resumed_says_what_to_declare_next_time() -> None:
    e = feedback.memory_resumed(130 * M, 128 * M, 163 * M, 9, "python3", ARGV, intent=128 * M)
    assert e.action == "resumed" and e.limit_value == 163 * M
    assert e.suggestion.startswith("memory 130.0M over intent 128M: resumed with 163M")
    assert "declare intent.memory_max=163M next time" in e.suggestion


def test_a_second_grant_names_the_raised_limit_not_the_intent() -> None:
    e = feedback.memory_resumed(164 * M, 163 * M, 205 * M, 9, "python3", ARGV, intent=128 * M)
    assert e.suggestion.startswith("memory 164.0M over limit 163M: resumed with 205M")


def test_fork_rate_kill_suggests_fewer_workers() -> None:
    e = feedback.fork_killed("fork_rate", 3000, 500, 11, "bash", ("bash", "-c", ":"))
    assert (e.unit, e.value, e.limit_value) == ("forks/s", 3000, 500)
    assert e.suggestion.startswith("fork rate 3000/s over 500/s")
    assert "fewer parallel workers" in e.suggestion


def test_process_count_kill_mentions_pids_max() -> None:
    e = feedback.fork_killed("processes", 2100, 2048, 11, "make", ())
    assert e.unit == "processes" and "intent.pids_max" in e.suggestion


def test_pids_max_kill_says_forks_were_refused() -> None:
    e = feedback.fork_killed("pids_max", 9, 256, 11, "bash", ())
    assert (e.unit, e.value, e.limit_value) == ("forks refused", 9, 256)
    assert e.suggestion.startswith("reached its pids_max of 256 (9 forks refused)")


def test_oom_names_the_victim() -> None:
    e = feedback.oom_killed(70 * M, 64 * M, 88 * M, 1234, "python3", ARGV)
    assert e.action == "oom_killed" and e.pid == 1234
    assert "python3 (pid 1234)" in e.suggestion and "88M" in e.suggestion
    no_limit = feedback.oom_killed(70 * M, 0, 0, 1234, "", ())
    assert "process (pid 1234)" in no_limit.suggestion


def test_event_details_are_all_text() -> None:
    e = feedback.fork_killed("fork_rate", 3000, 500, 11, "bash", ("bash", "-c", ":"))
    details = feedback.event_details(e)
    assert all(isinstance(v, str) for v in details.values())
    assert (
        details["pid"] == "11" and details["argv"] == "bash -c :" and details["unit"] == "forks/s"
    )
