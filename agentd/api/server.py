"""The gRPC server on the local unix socket: agent service, health, reflection."""

from __future__ import annotations

import contextlib
import os
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agentd.api.agent_service import AgentService
from agentd.api.decode import DecodeInterceptor
from agentd.api.node_service import NodeService
from agentd.api.peercred import CredentialServer, TokenRegistry
from agentd.credproto import cred_socket_path
from agentd.observability.interceptor import ApiMetricsInterceptor
from agentd.v1 import agent_pb2, agent_pb2_grpc, node_pb2, node_pb2_grpc

SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
NODE_SERVICE_NAME = node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name

# Requests are small; a larger one is malformed or hostile and is refused with
# RESOURCE_EXHAUSTED before it is parsed.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class UnixServer:
    def __init__(
        self,
        socket_path: str,
        mode: int,
        gid: int,
        service: AgentService,
        tokens: TokenRegistry,
        node_service: NodeService | None = None,
        # Watch streams may hold up to MAX_WATCHES of these; unary calls keep the rest.
        workers: int = 32,
    ) -> None:
        self.socket_path = socket_path
        self.mode = mode
        self.gid = gid
        Path(socket_path).parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="agentd-rpc"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
            interceptors=[ApiMetricsInterceptor("unix"), DecodeInterceptor()],
        )
        agent_pb2_grpc.add_AgentServiceServicer_to_server(service, self.server)
        services = [SERVICE_NAME]
        if node_service is not None:
            node_pb2_grpc.add_NodeServiceServicer_to_server(node_service, self.server)
            services.append(NODE_SERVICE_NAME)
        self.services = services
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*services, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.server.add_insecure_port(f"unix:{socket_path}")
        self.cred = CredentialServer(cred_socket_path(socket_path), tokens, mode, gid)

    def start(self) -> None:
        # grpc creates the socket 0755 (nobody but root can connect to it then): the
        # permissions are only ever tightened or widened to the configured mode here.
        self.server.start()
        os.chown(self.socket_path, 0 if os.geteuid() == 0 else -1, self.gid)
        os.chmod(self.socket_path, self.mode)
        self.cred.start()
        for name in ("", *self.services):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.cred.stop()
        self.server.stop(grace).wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
