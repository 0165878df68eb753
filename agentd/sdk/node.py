"""Connecting to NodeService (for schedulers and tools): over TCP with mutual TLS,
or over the local unix socket as the calling uid.

    channel = node.tls_channel("node1:7443", ca="ca.pem", cert="client-kube.pem",
                               key="client-kube.key")
    stub = node_pb2_grpc.NodeServiceStub(channel)
    state = stub.GetNodeState(node_pb2.GetNodeStateRequest(), timeout=5)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from agentd.credproto import TOKEN_METADATA_KEY, fetch_token
from agentd.v1 import node_pb2_grpc


def tls_channel(
    address: str,
    ca: str | Path,
    cert: str | Path | None = None,
    key: str | Path | None = None,
    server_name: str | None = None,
) -> grpc.Channel:
    """A channel to `address` ("host:port") that verifies the daemon against `ca`
    and presents the client certificate `cert`/`key`. `server_name` overrides the
    name checked against the daemon's certificate (default: the host part)."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if cert else None,
    )
    options: list[tuple[str, Any]] = []
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(address, credentials, options=options)


class LocalNodeClient:
    """NodeService over the local unix socket, identified as this process's uid."""

    def __init__(self, socket_path: str) -> None:
        self.channel = grpc.insecure_channel(f"unix:{socket_path}")
        self.stub = node_pb2_grpc.NodeServiceStub(self.channel)
        self.metadata = ((TOKEN_METADATA_KEY, fetch_token(socket_path)),)

    def call(self, method: str, request: Any, timeout: float = 10.0) -> Any:
        return getattr(self.stub, method)(request, timeout=timeout, metadata=self.metadata)

    def watch(self, request: Any, timeout: float | None = None) -> Any:
        return self.stub.WatchNodeEvents(request, timeout=timeout, metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()
