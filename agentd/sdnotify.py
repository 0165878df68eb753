"""systemd's notification protocol (sd_notify), without libsystemd.

With `Type=notify`, systemd considers agentd started only when it sends
READY=1, and with `WatchdogSec=` restarts it when the WATCHDOG=1 pings stop.
The protocol is one datagram of `KEY=value` lines to the AF_UNIX socket named
in $NOTIFY_SOCKET. Outside systemd the variable is unset and every method is a
no-op that returns False, so callers never branch on "are we under systemd".

Sending never raises: a lost notification is for the caller to log, not a
reason to stop the daemon.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping

_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends state changes to systemd, if agentd runs under it."""

    def __init__(
        self, environ: Mapping[str, str] | None = None, *, unset_environment: bool = False
    ) -> None:
        """Read $NOTIFY_SOCKET and the watchdog variables from `environ` (os.environ).

        With `unset_environment`, the variables are removed from os.environ so that
        tool calls started later do not inherit them (and cannot talk to systemd
        on agentd's behalf).
        """
        env = os.environ if environ is None else environ
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog = (
            _watchdog_seconds(env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"))
            if self._address is not None  # pings could not be sent anyway
            else None
        )
        self._socket: socket.socket | None = None
        self.last_error: OSError | None = None
        if unset_environment:
            _unset(env)

    @property
    def enabled(self) -> bool:
        """Whether there is a systemd to notify."""
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        """Startup finished: the API is serving."""
        return self.notify("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        """A one-line status shown by `systemctl status`."""
        return self.notify(*_status(text))

    def watchdog(self) -> bool:
        """A keep-alive ping; send it every watchdog_interval() / 2 seconds."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """Shutdown started."""
        return self.notify("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds after which systemd gives up on us without a ping; None: no watchdog."""
        return self._watchdog

    def notify(self, *fields: str) -> bool:
        """Send `KEY=value` fields in one datagram; True when it was sent."""
        if self._address is None or not fields:
            return False
        try:
            if self._socket is None:
                # Kept open: the watchdog pings for the daemon's whole life.
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as e:
            self.last_error = e
            self.close()
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _address(value: str) -> str | bytes | None:
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        # Linux abstract namespace: a leading NUL instead of the '@'.
        return b"\0" + value[1:].encode()
    # Unset, or a transport we do not speak (systemd >= 253 also allows vsock:).
    return None


def _watchdog_seconds(usec: str | None, pid: str | None) -> float | None:
    if not usec:
        return None
    # WATCHDOG_PID names the process the watchdog is meant for; a child that
    # inherited the variables must not think it is being watched.
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


def _status(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    # A newline would start a new KEY=value field: keep the status one field.
    return ("STATUS=" + " ".join(text.splitlines()),)


def _unset(environ: Mapping[str, str]) -> None:
    if isinstance(environ, MutableMapping):
        for name in _VARIABLES:
            environ.pop(name, None)
