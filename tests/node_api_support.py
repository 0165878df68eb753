"""Helpers for NodeService tests and the API benchmark: a daemon with the TCP
listener on a free loopback port and a development CA made by agentd.certs (the
code behind `agentctl certs init`)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import grpc
from agentd_process import AgentdProcess

from agentd.certs import init_directory
from agentd.sdk.node import tls_channel
from agentd.v1 import node_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class NodeDaemon:
    daemon: AgentdProcess
    certs: Path
    address: str

    def channel(self, client: str = "kube", ca: Path | None = None) -> grpc.Channel:
        return tls_channel(
            self.address,
            ca or self.certs / "ca.pem",
            self.certs / f"client-{client}.pem",
            self.certs / f"client-{client}.key",
        )

    def stub(self, client: str = "kube") -> node_pb2_grpc.NodeServiceStub:
        return node_pb2_grpc.NodeServiceStub(self.channel(client))

    @property
    def audit_log(self) -> Path:
        return Path(self.daemon.state_dir) / "audit.log"


CLIENTS = [("scheduler", "kube"), ("observer", "grafana"), ("scheduler", "sched2")]


def make_certs(directory: Path, clients: list[tuple[str, str]] = CLIENTS) -> Path:
    init_directory(directory, ["node-test"], clients)
    return directory


def node_daemon(
    workdir: Path,
    api: str = "",
    tracking: str = "off",
    tables: str = "",
    clients: list[tuple[str, str]] = CLIENTS,
    log_level: str = "debug",
) -> NodeDaemon:
    """`api`: more [api] lines; `tables`: more tables. Process tracking is off unless
    asked for: these tests are about the API, and without eBPF a daemon starts at once."""
    certs = make_certs(workdir / "certs", clients)
    address = f"127.0.0.1:{free_port()}"
    config = (
        f'[api]\ntcp_listen = "{address}"\ntls_cert = "{certs}/server.pem"\n'
        f'tls_key = "{certs}/server.key"\ntls_client_ca = "{certs}/ca.pem"\n{api}\n'
        f'[tracking]\nsource = "{tracking}"\n{tables}'
    )
    daemon = AgentdProcess(config=config, log_level=log_level)
    daemon.start()
    return NodeDaemon(daemon, certs, address)
