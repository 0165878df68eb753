from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agentd import config
from agentd.config import ConfigError, add_arguments, load_config
from agentd.observability.address import split_listen


def load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "agentd.toml"
    path.write_text(text)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load_config(parser.parse_args(["--config", str(path)]), environ={})


def test_listen_defaults_to_loopback(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    assert cfg.prometheus.listen == "127.0.0.1:9464"
    assert cfg.prometheus.session_metrics is True


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:0", ("::1", 0)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
    ],
)
def test_split_listen(listen: str, expected: tuple[str, int]) -> None:
    assert split_listen(listen) == expected


@pytest.mark.parametrize(
    ("listen", "reason"),
    [
        ("9464", "HOST:PORT"),
        ("localhost:9464", "not an IP address"),
        ("127.0.0.1:http", "must be a number"),
        ("127.0.0.1:70000", "must be a number"),
    ],
)
def test_bad_listen_is_refused_with_the_reason(tmp_path: Path, listen: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[prometheus\] listen = .*{reason}"):
        load(tmp_path, f'[prometheus]\nlisten = "{listen}"\n')


def test_empty_listen_turns_the_endpoint_off(tmp_path: Path) -> None:
    assert load(tmp_path, '[prometheus]\nlisten = ""\n').prometheus.listen == ""
