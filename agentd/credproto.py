"""The client half of the peer-credential handshake (see agentd/api/peercred.py).

Kept free of server imports so that the SDK stays light.
"""

from __future__ import annotations

import socket

TOKEN_METADATA_KEY = "x-agentd-token"


def cred_socket_path(grpc_socket_path: str) -> str:
    return grpc_socket_path + ".cred"


def fetch_token(grpc_socket_path: str, timeout: float = 5.0) -> str:
    """Client side: obtain a token for this process. Raises OSError if unreachable."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(timeout)
        s.connect(cred_socket_path(grpc_socket_path))
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(256)
            if not chunk:
                raise ConnectionError("agentd closed the credential socket without a token")
            data += chunk
    return data.decode().strip()
