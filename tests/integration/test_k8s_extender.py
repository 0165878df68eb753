"""The scheduler extender's HTTP/JSON side, with kube-scheduler's own payloads.

The nodes here are STAND-INS: in-process gRPC servers (mutual TLS, real sockets)
implementing only NodeService.ScorePlacement with a simple memory rule, so that the
extender's protocol handling, deadlines and failure reporting are tested on their
own. The extender against real agentd daemons is test_k8s_extender_live.py.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))

from k8s_support import fixture, post, running_extender

from agentd.certs import init_directory
from agentd.v1 import node_pb2, node_pb2_grpc

MiB = 1 << 20


@dataclass
class StandInNode(node_pb2_grpc.NodeServiceServicer):
    """Stand-in for agentd's NodeService: feasible when the memory fits in `free`."""

    free: int
    delay: float = 0.0
    seen: list[node_pb2.Candidate] = field(default_factory=list)

    def ScorePlacement(self, request: node_pb2.ScorePlacementRequest, context: Any) -> Any:
        time.sleep(self.delay)
        scores = []
        for c in request.candidates:
            self.seen.append(c)
            memory = int(c.session_budget.memory_max or c.intent.resources.memory_max or 0)
            fits = memory <= self.free
            scores.append(
                node_pb2.Score(
                    candidate_id=c.id,
                    feasible=fits,
                    reason="" if fits else f"memory: {memory} asked, {self.free} free",
                    memory_headroom_bytes=max(self.free - memory, 0),
                    score=100.0 * (self.free - memory) / self.free if fits else 0.0,
                )
            )
        return node_pb2.ScorePlacementResponse(scores=scores)


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path


@dataclass
class Pki:
    ca: Cert
    server: Cert
    scheduler: Cert
    foreign_scheduler: Cert  # signed by another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Made by agentd.certs (the code behind `agentctl certs init`)."""
    d = tmp_path_factory.mktemp("pki")
    init_directory(d / "ours", ["agentd-node"], [("scheduler", "extender")])
    init_directory(d / "other", ["agentd-node"], [("scheduler", "intruder")])

    def pair(directory: Path, name: str) -> Cert:
        return Cert(directory / f"{name}.pem", directory / f"{name}.key")

    return Pki(
        ca=pair(d / "ours", "ca"),
        server=pair(d / "ours", "server"),
        scheduler=pair(d / "ours", "client-extender"),
        foreign_scheduler=pair(d / "other", "client-intruder"),
    )


def start_node(pki: Pki, servicer: StandInNode) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    node_pb2_grpc.add_NodeServiceServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(pki.server.key.read_bytes(), pki.server.cert.read_bytes())],
        root_certificates=pki.ca.cert.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, pki: Pki, nodes: dict[str, StandInNode], timeout: float = 2.0) -> None:
        self.servers = []
        endpoints = {}
        for name, servicer in nodes.items():
            server, port = start_node(pki, servicer)
            self.servers.append(server)
            endpoints[name] = f"127.0.0.1:{port}"
        self.endpoints = endpoints
        self.pki = pki
        self.timeout = timeout

    def extender(
        self, client: Cert | None = None, extra_nodes: dict[str, str] | None = None
    ) -> Any:
        """The extender's HTTP server, serving until the block ends."""
        client = client or self.pki.scheduler
        return running_extender(
            self.pki.ca.cert,
            client.cert,
            client.key,
            {**self.endpoints, **(extra_nodes or {})},
            server_name="localhost",
            timeout=self.timeout,
        )

    def stop(self) -> None:
        for server in self.servers:
            server.stop(0)


@pytest.fixture
def cluster(pki: Pki) -> Iterator[tuple[Cluster, dict[str, StandInNode]]]:
    nodes = {"node-a": StandInNode(free=8192 * MiB), "node-b": StandInNode(free=256 * MiB)}
    c = Cluster(pki, nodes)
    yield c, nodes
    c.stop()


def test_filter_with_node_objects_answers_in_the_same_form(cluster) -> None:
    c, nodes = cluster
    with c.extender() as http:
        args = fixture("filter_nodes.json")
        status, result = post(http, "filter", args)
    assert status == 200
    assert result["NodeNames"] is None and result["Error"] == ""
    # The passing node comes back as the very Node object kube-scheduler sent.
    assert result["Nodes"]["items"] == [args["Nodes"]["items"][0]]
    assert result["FailedNodes"] == {
        "node-b": f"agentd: memory: {512 * MiB} asked, {256 * MiB} free"
    }
    # node-c has no endpoint ([nodes] lacks it, no port for its InternalIP).
    assert list(result["FailedAndUnresolvableNodes"]) == ["node-c"]
    assert "no agentd endpoint" in result["FailedAndUnresolvableNodes"]["node-c"]
    # The pod's annotations reached agentd as its intent.
    seen = nodes["node-a"].seen[-1]
    assert seen.id == "agents/swe-7-sandbox"
    assert seen.session_budget.memory_max == str(512 * MiB)
    assert seen.intent.resources.cpu == "0.5"
    assert seen.intent.priority == 1  # interactive


def test_filter_with_node_names_reports_an_unreachable_node(cluster) -> None:
    c, nodes = cluster
    with c.extender(extra_nodes={"node-c": f"127.0.0.1:{closed_port()}"}) as http:
        status, result = post(http, "filter", fixture("filter_nodenames.json"))
    assert status == 200
    assert result["Nodes"] is None
    assert result["NodeNames"] == ["node-a"]  # 288Mi does not fit node-b's 256Mi
    assert "node-b" in result["FailedNodes"]
    assert "unreachable" in result["FailedAndUnresolvableNodes"]["node-c"]
    # Requests of both containers, summed.
    assert nodes["node-a"].seen[-1].session_budget.memory_max == str(288 * MiB)


def test_prioritize_scales_agentd_scores_to_max_extender_priority(pki: Pki) -> None:
    nodes = {
        "node-a": StandInNode(free=8192 * MiB),
        "node-b": StandInNode(free=1024 * MiB),
        "node-c": StandInNode(free=256 * MiB),
    }
    c = Cluster(pki, nodes)
    with c.extender() as http:
        status, result = post(http, "prioritize", fixture("prioritize_nodenames.json"))
    c.stop()
    assert status == 200
    scores = {p["Host"]: p["Score"] for p in result}
    assert list(scores) == ["node-a", "node-b", "node-c"]
    assert all(isinstance(s, int) and 0 <= s <= 10 for s in scores.values())
    # Relative to the best candidate: node-a's 93.75 is 10, node-b's 50 is 5.
    assert scores["node-a"] == 10
    assert scores["node-b"] == round(10 * 50 / (100 * (8192 - 512) / 8192))
    assert scores["node-c"] == 0  # infeasible


def test_a_slow_node_is_failed_at_the_deadline_not_waited_for(pki: Pki) -> None:
    nodes = {"node-a": StandInNode(free=8192 * MiB), "node-b": StandInNode(8192 * MiB, delay=5)}
    c = Cluster(pki, nodes, timeout=0.5)
    with c.extender() as http:
        started = time.monotonic()
        status, result = post(http, "filter", fixture("filter_too_big.json") | {
            "Pod": fixture("filter_nodenames.json")["Pod"]
        })  # fmt: skip
        elapsed = time.monotonic() - started
    c.stop()
    assert status == 200
    assert result["NodeNames"] == ["node-a"]
    assert "did not answer" in result["FailedAndUnresolvableNodes"]["node-b"]
    assert elapsed < 2.0, elapsed


def test_a_client_certificate_from_another_ca_is_refused_by_the_node(cluster) -> None:
    c, _ = cluster
    with c.extender(client=c.pki.foreign_scheduler) as http:
        status, result = post(http, "filter", fixture("filter_nodenames.json"))
    assert status == 200
    assert result["NodeNames"] == []
    assert set(result["FailedAndUnresolvableNodes"]) == {"node-a", "node-b", "node-c"}


def test_bad_input_gets_a_precise_answer(cluster) -> None:
    c, _ = cluster
    with c.extender() as http:
        status, result = post(http, "filter", fixture("filter_bad_annotation.json"))
        assert status == 200
        assert "agentd.io/memory='lots'" in result["Error"]
        status, result = post(http, "filter", b"{not json")
        assert status == 400 and "not JSON" in result["error"]
        status, result = post(http, "filter", {"Pod": {}, "Nodes": None, "NodeNames": None})
        assert status == 400 and "NodeNames" in result["error"]
        status, result = post(http, "bind", {})
        assert status == 404
        # Still serving after all of that.
        status, result = post(http, "filter", fixture("filter_nodenames.json"))
        assert status == 200 and result["NodeNames"] == ["node-a"]
