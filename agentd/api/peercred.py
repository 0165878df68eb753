"""Caller identity from the kernel for gRPC over a unix socket.

grpcio does not expose the peer credentials (SO_PEERCRED) of a unix-socket
connection (grpc/grpc#15511; LocalServerCredentials(UDS) never reads them either).
So identity comes from a second unix socket that agentd owns itself, next to the
gRPC one (`<socket>.cred`): a client connects, the daemon reads SO_PEERCRED,
answers with a random token bound to that (pid, uid, gid), and the client sends
the token as `x-agentd-token` metadata on every call. The token is a capability
for that uid; it dies with the process that obtained it and with the daemon.
Both sockets share the same permissions. See docs/security.md.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import threading
from collections.abc import Sequence

import structlog

from agentd.credproto import TOKEN_METADATA_KEY
from agentd.manager import Caller

log = structlog.get_logger("agentd.peercred")

_UCRED = struct.Struct("3i")


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: with the pid, an identity that survives pid reuse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[19]


class TokenRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[Caller, str | None]] = {}

    def issue(self, caller: Caller) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = (caller, _start_time(caller.pid))
        return token

    def lookup(self, metadata: Sequence[tuple[str, str | bytes]]) -> Caller | None:
        for key, value in metadata:
            if key == TOKEN_METADATA_KEY and isinstance(value, str):
                with self._lock:
                    entry = self._tokens.get(value)
                return entry[0] if entry else None
        return None

    def prune(self) -> int:
        """Forget tokens whose process is gone (or was replaced by another with its pid)."""
        with self._lock:
            dead = [t for t, (c, start) in self._tokens.items() if _start_time(c.pid) != start]
            for token in dead:
                del self._tokens[token]
        return len(dead)

    def __len__(self) -> int:
        return len(self._tokens)


class CredentialServer:
    """Accepts on the `.cred` socket and hands out tokens; one thread, tiny protocol:
    the daemon writes `<token>\\n` and closes."""

    def __init__(self, path: str, registry: TokenRegistry, mode: int, gid: int) -> None:
        self.path = path
        self.registry = registry
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        # Bind under a tight umask so the socket never exists with looser permissions.
        old = os.umask(0o177)
        try:
            self._sock.bind(path)
        finally:
            os.umask(old)
        os.chown(path, 0 if os.geteuid() == 0 else -1, gid)
        os.chmod(path, mode)
        self._sock.listen(128)
        self._thread = threading.Thread(target=self._serve, name="agentd-cred", daemon=True)
        self._stopping = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _serve(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._stopping:
                    return
                continue
            with conn:
                try:
                    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
                    pid, uid, gid = _UCRED.unpack(raw)
                    token = self.registry.issue(Caller(uid=uid, gid=gid, pid=pid))
                    conn.sendall(token.encode() + b"\n")
                except OSError as e:
                    log.warning("cred.failed", error=str(e))
