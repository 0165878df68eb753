"""The TCP listener: NodeService and health over mutual TLS.

Same service objects as the unix socket (server.py); only the transport and the
identity differ: grpc verifies the client certificate against the configured CA
during the handshake (require_client_auth), so a client without one, or with one
from another CA, never reaches a method. Roles come from the certificate (auth.py).
"""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agentd.api.node_service import NodeService
from agentd.v1 import node_pb2, node_pb2_grpc

NODE_SERVICE_NAME = node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name

#: A ScorePlacement of 256 candidates is ~30 KB: anything near this is refused
#: (RESOURCE_EXHAUSTED) before it is parsed.
MAX_REQUEST_BYTES = 256 * 1024
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
#: Threads for unary calls, on top of one per allowed event stream.
UNARY_WORKERS = 16


class TcpServer:
    def __init__(
        self,
        address: str,
        cert: Path,
        key: Path,
        client_ca: Path,
        service: NodeService,
        health_servicer: health.HealthServicer,
        max_watchers: int,
    ) -> None:
        self.server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=UNARY_WORKERS + max_watchers, thread_name_prefix="agentd-tcp"
            ),
            options=[
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        node_pb2_grpc.add_NodeServiceServicer_to_server(service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        reflection.enable_server_reflection(
            (NODE_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        credentials = grpc.ssl_server_credentials(
            [(key.read_bytes(), cert.read_bytes())],
            root_certificates=client_ca.read_bytes(),
            require_client_auth=True,
        )
        self.port = self.server.add_secure_port(address, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        self.address = address

    def start(self) -> None:
        self.server.start()

    def stop(self, grace: float = 5.0) -> None:
        self.server.stop(grace).wait()
