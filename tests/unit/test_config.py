from __future__ import annotations

import argparse
import dataclasses
import grp
import re
from pathlib import Path

import pytest

from agentd import config
from agentd.config import ConfigError, add_arguments, load_config


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(autouse=True)
def no_default_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Tests must not depend on whether this machine has /etc/agentd/agentd.toml.
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "agentd.toml")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agentd.toml"
    path.write_text(text)
    return path


def test_defaults_without_any_file() -> None:
    cfg = load_config(parse(), environ={})
    assert cfg.source is None
    assert cfg.daemon.socket == Path("/run/agentd/agentd.sock")
    assert cfg.daemon.socket_mode == 0o660
    assert cfg.daemon.socket_gid == 0
    assert cfg.daemon.state_dir == Path("/var/lib/agentd")
    assert (cfg.daemon.log_format, cfg.daemon.log_level) == ("auto", "info")
    assert (cfg.cgroup.backend, cfg.cgroup.root) == ("auto", "agentd")
    assert cfg.node.reserved_memory == 1 << 30
    assert cfg.defaults.session_memory == 4 << 30
    assert cfg.defaults.session_cpu is None
    assert cfg.defaults.session_pids == 4096
    assert cfg.defaults.tool_call_grace_seconds == 30.0


@pytest.mark.parametrize(("cpus", "readers"), [(1, 0), (2, 3), (64, 3)])
def test_auto_readers_by_the_cpus(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cpus: int, readers: int
) -> None:
    monkeypatch.setattr(config.os, "cpu_count", lambda: cpus)
    assert load_config(parse(), environ={}).api.readers == readers
    path = write(tmp_path, "[api]\nreaders = 0\n")
    assert load_config(parse("--config", str(path)), environ={}).api.readers == 0


def test_default_file_is_read_when_present(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, '[cgroup]\nroot = "from-default"\n')
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", path)
    cfg = load_config(parse(), environ={})
    assert cfg.cgroup.root == "from-default"
    assert cfg.source == path


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"^{missing}: no such file$"):
        load_config(parse("--config", str(missing)), environ={})


def test_full_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [daemon]
        socket = "/tmp/x/agentd.sock"
        socket_mode = "0640"
        socket_group = "1234"
        state_dir = "/tmp/x/state"
        log_format = "json"
        log_level = "DEBUG"
        [cgroup]
        backend = "v1"
        root = "agentd-test_1.0"
        [node]
        reserved_memory = "512M"
        [defaults]
        session_memory = "1.5G"
        session_cpu = "500m"
        session_pids = 64
        tool_call_grace_seconds = 2.5
        """,
    )
    cfg = load_config(parse("--config", str(path)), environ={})
    assert cfg.source == path
    assert cfg.daemon.socket == Path("/tmp/x/agentd.sock")
    assert cfg.daemon.socket_mode == 0o640
    assert cfg.daemon.socket_gid == 1234
    assert cfg.daemon.log_level == "debug"
    assert cfg.cgroup.backend == "v1"
    assert cfg.cgroup.root == "agentd-test_1.0"
    assert cfg.node.reserved_memory == 512 << 20
    assert cfg.defaults.session_memory == 3 << 29
    assert cfg.defaults.session_cpu == 0.5
    assert cfg.defaults.session_pids == 64
    assert cfg.defaults.tool_call_grace_seconds == 2.5


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[daemon]\nsocket = "/file.sock"\nstate_dir = "/file"\nlog_level = "error"\n'
        '[cgroup]\nroot = "file"\nbackend = "v2"\n',
    )
    environ = {
        "AGENTD_SOCKET": "/env.sock",
        "AGENTD_STATE_DIR": "/env",
        "AGENTD_CGROUP_ROOT": "env",
        "AGENTD_LOG_LEVEL": "warning",
        "AGENTD_LOG_FORMAT": "console",
    }
    args = parse("--config", str(path), "--socket", "/flag.sock", "--cgroup-root", "flag")
    cfg = load_config(args, environ=environ)
    assert cfg.daemon.socket == Path("/flag.sock")  # flag over environment over file
    assert cfg.cgroup.root == "flag"
    assert cfg.daemon.state_dir == Path("/env")  # environment over file
    assert cfg.daemon.log_level == "warning"
    assert cfg.daemon.log_format == "console"  # environment over default
    assert cfg.cgroup.backend == "v2"  # file over default

    args = parse("--config", str(path), "--cgroup-backend", "v1", "--log-level", "debug")
    cfg = load_config(args, environ=environ)
    assert (cfg.cgroup.backend, cfg.daemon.log_level) == ("v1", "debug")


def test_empty_environment_variable_counts_as_unset() -> None:
    cfg = load_config(parse(), environ={"AGENTD_SOCKET": "", "AGENTD_CGROUP_ROOT": ""})
    assert cfg.daemon.socket == Path("/run/agentd/agentd.sock")
    assert cfg.cgroup.root == "agentd"


def test_example_message_from_the_brief(tmp_path: Path) -> None:
    path = write(tmp_path, '[cgroup]\nbackend = "v3"\n')
    with pytest.raises(ConfigError) as err:
        load_config(parse("--config", str(path)), environ={})
    assert str(err.value) == f"{path}: [cgroup] backend = 'v3': must be one of auto, v1, v2"


@pytest.mark.parametrize(
    ("table", "line", "reason"),
    [
        ("daemon", 'socket = "relative.sock"', "absolute path"),
        ("daemon", "socket = 3", "must be a string"),
        ("daemon", 'socket_mode = "0666"', "writable by others"),
        ("daemon", 'socket_mode = "0460"', "writable by its owner"),
        ("daemon", 'socket_mode = "rw"', "octal string"),
        ("daemon", "socket_mode = 660", "octal string"),
        ("daemon", 'socket_group = "no-such-group-agentd-test"', "no group named"),
        ("daemon", "socket_group = -1", "non-negative gid"),
        ("daemon", 'state_dir = "var/lib"', "absolute path"),
        ("daemon", 'log_format = "xml"', "one of auto, json, console"),
        ("daemon", 'log_level = "loud"', "one of debug, info"),
        ("cgroup", 'root = "a/b"', "single group name"),
        ("cgroup", 'root = ".."', "single group name"),
        ("cgroup", 'root = ""', "single group name"),
        ("node", 'reserved_memory = "lots"', "not a size"),
        ("node", "reserved_memory = true", "must be a size"),
        ("defaults", 'session_memory = "0"', "greater than zero"),
        ("defaults", 'session_cpu = "-1"', "positive number of cores"),
        ("defaults", 'session_cpu = "two"', "not a CPU amount"),
        ("defaults", "session_pids = 0", "between 1 and"),
        ("defaults", 'session_pids = "10"', "must be an integer"),
        ("defaults", "tool_call_grace_seconds = -1", ">= 0"),
        ("defaults", "tool_call_grace_seconds = nan", "finite"),
        ("api", 'readers = "many"', '"auto" or an integer between 0 and 64'),
        ("api", "readers = 65", '"auto" or an integer between 0 and 64'),
        ("api", "readers = true", '"auto" or an integer between 0 and 64'),
    ],
)
def test_each_invalid_value_names_file_table_and_key(
    tmp_path: Path, table: str, line: str, reason: str
) -> None:
    path = write(tmp_path, f"[{table}]\n{line}\n")
    key = line.split(" = ")[0]
    with pytest.raises(ConfigError) as err:
        load_config(parse("--config", str(path)), environ={})
    message = str(err.value)
    assert message.startswith(f"{path}: [{table}] {key} = "), message
    assert reason in message


def test_invalid_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^environment: AGENTD_LOG_LEVEL = 'loud': must be one"):
        load_config(parse(), environ={"AGENTD_LOG_LEVEL": "loud"})
    with pytest.raises(ConfigError, match=r"^environment: AGENTD_CGROUP_ROOT = 'a/b'"):
        load_config(parse(), environ={"AGENTD_CGROUP_ROOT": "a/b"})


def test_invalid_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--state-dir = 'relative': must be an absolute path"):
        load_config(parse("--state-dir", "relative"), environ={})


def test_flags_with_choices_are_refused_by_argparse() -> None:
    with pytest.raises(SystemExit):
        parse("--cgroup-backend", "v3")


def test_bad_file_value_is_reported_even_when_overridden(tmp_path: Path) -> None:
    path = write(tmp_path, '[cgroup]\nroot = "a/b"\n')
    with pytest.raises(ConfigError, match=r"\[cgroup\] root = 'a/b'"):
        load_config(parse("--config", str(path), "--cgroup-root", "ok"), environ={})


def test_unknown_key_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, '[daemon]\nsokcet = "/x.sock"\n')
    with pytest.raises(ConfigError) as err:
        load_config(parse("--config", str(path)), environ={})
    message = str(err.value)
    assert message.startswith(f"{path}: [daemon] unknown key 'sokcet'")
    assert "did you mean 'socket'?" in message


def test_unknown_table_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[deamon]\nlog_level = 'info'\n")
    with pytest.raises(ConfigError, match=r"unknown table \[deamon\].*did you mean 'daemon'"):
        load_config(parse("--config", str(path)), environ={})


def test_top_level_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'socket = "/x.sock"\n')
    with pytest.raises(ConfigError, match=r"socket = '/x.sock': keys belong in a table"):
        load_config(parse("--config", str(path)), environ={})


def test_table_given_as_a_value_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "daemon = 1\n")
    with pytest.raises(ConfigError, match=r"daemon = 1: must be a table \[daemon\]"):
        load_config(parse("--config", str(path)), environ={})


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[daemon\n")
    with pytest.raises(ConfigError, match=rf"^{path}: invalid TOML"):
        load_config(parse("--config", str(path)), environ={})


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: cannot read"):
        load_config(parse("--config", str(tmp_path)), environ={})  # a directory


def test_socket_group_by_name_resolves_to_gid(tmp_path: Path) -> None:
    group = grp.getgrgid(0).gr_name
    path = write(tmp_path, f'[daemon]\nsocket_group = "{group}"\n')
    assert load_config(parse("--config", str(path)), environ={}).daemon.socket_gid == 0


def test_config_is_frozen() -> None:
    cfg = load_config(parse(), environ={})
    with pytest.raises(AttributeError):
        cfg.cgroup.root = "other"  # type: ignore[misc]


def test_example_config_documents_every_key_with_its_default(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "systemd" / "agentd.toml"
    # Uncomment the `#key = value` lines: the result must load and equal the defaults.
    lines = example.read_text().splitlines()
    keys = [line[1:] for line in lines if re.match(r"#\w+ = ", line)]
    text = "\n".join(line[1:] if re.match(r"#\w+ = ", line) else line for line in lines)
    assert {k.split(" = ")[0] for k in keys} == {k for t in config.SCHEMA.values() for k in t}
    path = write(tmp_path, text)
    defaults = load_config(parse(), environ={})
    loaded = load_config(parse("--config", str(path)), environ={})
    assert loaded == dataclasses.replace(defaults, source=path)
