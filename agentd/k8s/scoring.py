"""Asking every candidate node's agentd to score a pod, in parallel, under one deadline.

One gRPC channel per endpoint, kept open (TLS handshakes are the expensive part);
each node's ScorePlacement is issued as a future at once, and the deadline bounds
the whole round: a node that has not answered by then is reported as such, never
waited for, and never makes the extender fail.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc

from agentd.k8s.config import ExtenderConfig
from agentd.v1 import node_pb2, node_pb2_grpc


@dataclass(frozen=True)
class NodeAnswer:
    node: str
    score: node_pb2.Score | None  # None when the node could not answer
    error: str = ""  # why not (unreachable, deadline, refused)


def internal_ip(node: dict[str, Any]) -> str:
    for address in (node.get("status") or {}).get("addresses") or []:
        if isinstance(address, dict) and address.get("type") == "InternalIP":
            return str(address.get("address") or "")
    return ""


class NodeScorer:
    def __init__(self, cfg: ExtenderConfig) -> None:
        self.cfg = cfg
        self._credentials = grpc.ssl_channel_credentials(
            root_certificates=cfg.tls.ca,
            private_key=cfg.tls.key,
            certificate_chain=cfg.tls.cert,
        )
        self._lock = threading.Lock()
        self._stubs: dict[tuple[str, str], node_pb2_grpc.NodeServiceStub] = {}
        self._channels: list[grpc.Channel] = []

    def endpoint(self, name: str, node: dict[str, Any] | None) -> str:
        if name in self.cfg.nodes:
            return self.cfg.nodes[name]
        ip = internal_ip(node) if node else ""
        if ip and self.cfg.port:
            return f"[{ip}]:{self.cfg.port}" if ":" in ip else f"{ip}:{self.cfg.port}"
        return ""

    def _stub(self, name: str, endpoint: str) -> node_pb2_grpc.NodeServiceStub:
        server_name = self.cfg.tls.server_name.replace("{node}", name)
        key = (endpoint, server_name)
        with self._lock:
            stub = self._stubs.get(key)
            if stub is None:
                options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
                channel = grpc.secure_channel(endpoint, self._credentials, options=options)
                self._channels.append(channel)
                stub = self._stubs[key] = node_pb2_grpc.NodeServiceStub(channel)
            return stub

    def score(
        self, candidate: node_pb2.Candidate, nodes: dict[str, dict[str, Any] | None]
    ) -> dict[str, NodeAnswer]:
        """Every node's answer (or why there is none) within the configured deadline."""
        deadline = time.monotonic() + self.cfg.timeout_seconds
        request = node_pb2.ScorePlacementRequest(candidates=[candidate])
        answers: dict[str, NodeAnswer] = {}
        pending: dict[str, tuple[str, Any]] = {}
        for name, node in nodes.items():
            endpoint = self.endpoint(name, node)
            if not endpoint:
                answers[name] = NodeAnswer(
                    name, None, "no agentd endpoint for this node ([nodes] or InternalIP+port)"
                )
                continue
            future = self._stub(name, endpoint).ScorePlacement.future(
                request, timeout=self.cfg.timeout_seconds
            )
            pending[name] = (endpoint, future)
        for name, (endpoint, future) in pending.items():
            try:
                response = future.result(timeout=max(deadline - time.monotonic(), 0.0))
            except grpc.FutureTimeoutError:
                future.cancel()
                answers[name] = NodeAnswer(
                    name,
                    None,
                    f"agentd at {endpoint} did not answer within {self.cfg.timeout_seconds:g}s",
                )
                continue
            except grpc.RpcError as e:
                answers[name] = NodeAnswer(name, None, _rpc_reason(endpoint, e))
                continue
            if len(response.scores) != 1:
                answers[name] = NodeAnswer(
                    name, None, f"agentd at {endpoint} answered {len(response.scores)} scores for 1"
                )
                continue
            answers[name] = NodeAnswer(name, response.scores[0])
        return answers

    def close(self) -> None:
        with self._lock:
            for channel in self._channels:
                channel.close()
            self._channels.clear()
            self._stubs.clear()


def _rpc_reason(endpoint: str, error: grpc.RpcError) -> str:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    name = code.name if code is not None else "ERROR"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"agentd at {endpoint} did not answer in time ({details})"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"agentd at {endpoint} is unreachable: {details}"
    return f"agentd at {endpoint} refused: {name}: {details}"
