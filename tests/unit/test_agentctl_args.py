"""agentctl's argument parsing and exit-status mapping: everything that needs no daemon."""

from __future__ import annotations

import errno
import json
import os
import signal

import pytest

from agentd.cli import agentctl
from agentd.cli.agentctl import (
    EXIT_NOT_EXECUTABLE,
    EXIT_NOT_FOUND,
    EXIT_RUN_FAILED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    CliError,
    exec_failure_status,
    exit_status_of,
    main,
    parse_args,
)

RUN = ["run", "--session", "s1"]


def usage_error(argv: list[str]) -> str:
    with pytest.raises(CliError) as info:
        parse_args(argv)
    assert info.value.exit_code == EXIT_USAGE
    return info.value.message


# ---- run: the command after `--` ---------------------------------------------------


def test_run_command_is_everything_after_the_first_double_dash() -> None:
    args = parse_args([*RUN, "--", "ls", "-l", "--", "--memory", "x"])
    assert args.command == ["ls", "-l", "--", "--memory", "x"]
    assert args.session == "s1"
    assert args.memory is None


def test_run_without_double_dash_is_a_usage_error() -> None:
    message = usage_error([*RUN, "ls", "-l"])
    assert "after '--'" in message and "ls -l" in message


def test_run_with_nothing_after_double_dash_is_a_usage_error() -> None:
    assert "no command after '--'" in usage_error([*RUN, "--"])


def test_run_without_any_command_is_a_usage_error() -> None:
    assert "no command" in usage_error(RUN)


def test_run_with_words_before_double_dash_is_a_usage_error() -> None:
    assert "unexpected 'ls'" in usage_error([*RUN, "ls", "--", "-l"])


def test_run_requires_session() -> None:
    assert "--session" in usage_error(["run", "--", "true"])


def test_run_limits_are_passed_through_as_typed() -> None:
    args = parse_args(
        [
            *RUN,
            "--memory",
            "1.5GiB",
            "--memory-high",
            "512M",
            "--cpu",
            "500m",
            "--pids",
            "64",
            "--priority",
            "batch",
            "--timeout",
            "2.5",
            "--summary-json",
            "-",
            "--",
            "true",
        ]
    )
    # Sizes stay strings: the daemon parses them again and names the field it refuses.
    assert (args.memory, args.memory_high, args.cpu) == ("1.5GiB", "512M", "500m")
    assert (args.pids, args.priority, args.timeout) == (64, "batch", 2.5)
    assert args.summary_json == "-"


@pytest.mark.parametrize("size", ["512M", "2G", "1.5GiB", "1048576", "64k", "1KB"])
def test_valid_sizes_are_accepted(size: str) -> None:
    assert parse_args([*RUN, "--memory", size, "--", "true"]).memory == size


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--memory", "12X", "is not a size"),
        ("--memory", "0", "0 bytes"),
        ("--memory-high", "lots", "is not a size"),
        ("--memory", "99999999T", "too large"),
        ("--cpu", "0", "positive"),
        ("--cpu", "-1", "positive"),
        ("--cpu", "many", "not a CPU amount"),
        ("--pids", "0", "at least 1"),
        ("--pids", "1.5", "whole number"),
        ("--timeout", "0", "positive"),
        ("--timeout", "nan", "positive"),
        ("--timeout", "soon", "not a number"),
        ("--priority", "urgent", "invalid choice"),
    ],
)
def test_invalid_values_name_the_option(option: str, value: str, expected: str) -> None:
    message = usage_error([*RUN, option, value, "--", "true"])
    assert f"argument {option}" in message
    assert expected in message


def test_negative_size_is_refused() -> None:
    # With `=`, argparse hands "-5M" to the size check instead of taking it for an option.
    assert "is not a size" in usage_error([*RUN, "--memory=-5M", "--", "true"])


def test_summary_json_in_a_missing_directory_is_refused_before_running(tmp_path) -> None:
    target = tmp_path / "missing" / "s.json"
    assert "does not exist" in usage_error([*RUN, "--summary-json", str(target), "--", "true"])


def test_summary_json_that_is_a_directory_is_refused(tmp_path) -> None:
    assert "is a directory" in usage_error([*RUN, "--summary-json", str(tmp_path), "--", "true"])


# ---- --socket on every subcommand ------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["status", "--json"],
        ["sessions"],
        ["sessions", "--json"],
        ["close", "s1"],
        ["tool-calls"],
        ["tool-calls", "--session", "s1", "--all", "--json"],
        [*RUN, "--", "true"],
    ],
)
def test_socket_is_accepted_before_and_after_the_subcommand(argv: list[str]) -> None:
    before = parse_args(["--socket", "/a.sock", *argv])
    assert before.socket == "/a.sock"
    sub, *rest = argv
    after = parse_args([sub, "--socket", "/b.sock", *rest])
    assert after.socket == "/b.sock"


def test_socket_defaults_to_env_then_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTD_SOCKET", "/env/agentd.sock")
    assert parse_args(["status"]).socket == "/env/agentd.sock"
    monkeypatch.delenv("AGENTD_SOCKET")
    assert parse_args(["status"]).socket == "/run/agentd/agentd.sock"


def test_socket_value_may_look_like_a_subcommand() -> None:
    args = parse_args(["--socket", "run", "run", "--session", "s", "--", "true"])
    assert args.socket == "run" and args.command == ["true"]


def test_close_accepts_a_session_after_double_dash() -> None:
    assert parse_args(["close", "--", "-odd.name"]).session == "-odd.name"


def test_tool_calls_flags() -> None:
    args = parse_args(["tool-calls", "--session", "s1", "--all"])
    assert (args.session, args.all, args.json) == ("s1", True, False)


# ---- main(): returns, never exits ---------------------------------------------------


def test_main_returns_2_and_one_line_for_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    assert main([*RUN, "--memory", "12X", "--", "true"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("agentctl: argument --memory:")
    assert err.count("\n") == 1


def test_main_returns_2_for_an_unknown_subcommand(capsys: pytest.CaptureFixture) -> None:
    assert main(["frobnicate"]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith("agentctl: ")


def test_main_returns_2_without_a_subcommand(capsys: pytest.CaptureFixture) -> None:
    assert main([]) == EXIT_USAGE


def test_main_help_returns_0(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    # The exit statuses `run` reserves are documented in its help.
    for code in ("124", "125", "126", "127", "128+N"):
        assert code in out


def needs_generated_code() -> None:
    # The SDK imports the gRPC code generated at install time (agentd.v1); a source
    # checkout on sys.path (pytest run from the repo root with `python -m`) lacks it.
    try:
        import agentd.v1.agent_pb2  # noqa: F401
    except ImportError:
        reason = "agentd.v1 is generated by pip install: run the installed package"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and a prerequisite is missing: {reason}")
        pytest.skip(reason)


def test_unreachable_daemon_names_the_socket(tmp_path, capsys: pytest.CaptureFixture) -> None:
    needs_generated_code()
    socket = str(tmp_path / "nothing-here.sock")
    assert main(["status", "--socket", socket]) == 1
    assert socket in capsys.readouterr().err


def test_unreachable_daemon_before_run_is_125(tmp_path, capsys: pytest.CaptureFixture) -> None:
    needs_generated_code()
    socket = str(tmp_path / "nothing-here.sock")
    assert main(["run", "--socket", socket, "--session", "s", "--", "true"]) == EXIT_RUN_FAILED
    err = capsys.readouterr().err
    assert err.startswith("agentctl: ") and socket in err


# ---- exit-status mapping ------------------------------------------------------------


@pytest.mark.parametrize(
    ("returncode", "status"),
    [(0, 0), (1, 1), (3, 3), (255, 255), (-signal.SIGKILL, 137), (-signal.SIGTERM, 143)],
)
def test_exit_status_of_maps_signals_to_128_plus_n(returncode: int, status: int) -> None:
    assert exit_status_of(returncode) == status


def test_run_status_prefers_interruption_then_timeout() -> None:
    assert agentctl._run_status(-9, timed_out=False, interrupted_by=signal.SIGINT) == 130
    assert agentctl._run_status(-9, timed_out=True, interrupted_by=None) == EXIT_TIMEOUT
    assert agentctl._run_status(-9, timed_out=False, interrupted_by=None) == 137
    assert agentctl._run_status(7, timed_out=False, interrupted_by=None) == 7


def test_exec_failures_map_like_a_shell() -> None:
    not_found = FileNotFoundError(errno.ENOENT, "No such file or directory", "frob")
    assert exec_failure_status(not_found, "frob") == EXIT_NOT_FOUND
    denied = PermissionError(errno.EACCES, "Permission denied", "/tmp/x")
    assert exec_failure_status(denied, "/tmp/x") == EXIT_NOT_EXECUTABLE
    assert exec_failure_status(OSError(errno.ENOEXEC, "Exec format error"), "x") == 126
    # agentd's own launcher missing is agentctl's failure, not the command's.
    launcher_missing = FileNotFoundError("agentd's launcher is missing at /x/agentd-exec")
    assert exec_failure_status(launcher_missing, "true") == EXIT_RUN_FAILED


# ---- output helpers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_bytes", "text"),
    [
        (None, "-"),
        (0, "0B"),
        (1000, "1000B"),
        (1536, "1.5K"),
        (1024, "1K"),
        (536870912, "512M"),
        (3567616, "3.4M"),
        (1610612736, "1.5G"),
    ],
)
def test_human_size(num_bytes: int | None, text: str) -> None:
    assert agentctl.human_size(num_bytes) == text


def test_table_aligns_columns() -> None:
    text = agentctl.table(["A", "LONGER", "LAST"], [["xyz", "1", "tail"], ["x", "22", "t"]])
    lines = text.splitlines()
    assert lines[0] == "A    LONGER  LAST"
    assert lines[1] == "xyz  1       tail"
    assert lines[2] == "x    22      t"


def test_run_summary_has_the_documented_keys_even_without_usage() -> None:
    summary = agentctl.run_summary(
        None,
        tool_call_id="tc-1",
        session_id="s1",
        args=["true"],
        returncode=-9,
        timed_out=True,
        interrupted_by=None,
        error="agentd went away",
    )
    for key in (
        "tool_call_id",
        "exit_code",
        "oom_killed",
        "peak_memory_bytes",
        "cpu_user_seconds",
        "cpu_system_seconds",
        "wall_seconds",
        "processes",
    ):
        assert key in summary
    assert summary["exit_code"] is None and summary["signal"] == 9
    json.dumps(summary)  # serializable as one object
