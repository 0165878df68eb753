from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentd.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notification socket."""
    path = tmp_path / "notify.sock"
    assert len(str(path)) < 100, "AF_UNIX paths are limited to 108 bytes"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_status_watchdog_stopping_reach_the_socket(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    with Notifier({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.enabled
        assert notifier.ready("serving on /run/agentd/agentd.sock")
        assert receive(sock) == "READY=1\nSTATUS=serving on /run/agentd/agentd.sock"
        assert notifier.ready()
        assert receive(sock) == "READY=1"
        assert notifier.status("3 sessions")
        assert receive(sock) == "STATUS=3 sessions"
        assert notifier.watchdog()
        assert receive(sock) == "WATCHDOG=1"
        assert notifier.stopping()
        assert receive(sock) == "STOPPING=1"


def test_status_cannot_inject_fields(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    with Notifier({"NOTIFY_SOCKET": path}) as notifier:
        notifier.status("one\nREADY=1")
        assert receive(sock) == "STATUS=one READY=1"


def test_abstract_socket() -> None:
    name = f"agentd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        with Notifier({"NOTIFY_SOCKET": "@" + name}) as notifier:
            assert notifier.watchdog()
        assert receive(sock) == "WATCHDOG=1"


def test_not_under_systemd_everything_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert not notifier.stopping()
    assert notifier.watchdog_interval() is None


def test_unsupported_transport_is_disabled() -> None:
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_vanished_socket_reports_failure_without_raising(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    assert not notifier.ready()
    assert isinstance(notifier.last_error, FileNotFoundError)


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 30.0),
        ("500000", "self", 0.5),
        ("30000000", "1", None),  # meant for another process
        ("0", None, None),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(
    listener: tuple[socket.socket, str], usec: str | None, pid: str | None, expected: float | None
) -> None:
    _, path = listener
    environ = {"NOTIFY_SOCKET": path}
    if usec is not None:
        environ["WATCHDOG_USEC"] = usec
    if pid is not None:
        environ["WATCHDOG_PID"] = str(os.getpid()) if pid == "self" else pid
    assert Notifier(environ).watchdog_interval() == expected


def test_watchdog_needs_a_socket_to_ping() -> None:
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval() is None


def test_unset_environment_hides_systemd_from_children(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "KEEP": "1"}
    notifier = Notifier(environ, unset_environment=True)
    assert environ == {"KEEP": "1"}
    assert notifier.watchdog_interval() == 1.0
    assert notifier.ready()
    assert receive(sock) == "READY=1"
