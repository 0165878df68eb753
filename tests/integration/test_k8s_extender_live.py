"""The scheduler extender against several live agentd daemons on this machine.

Each "node" is a real daemon (its own socket, state directory, cgroup root, TCP
listener with mutual TLS, metrics port); the extender reaches them with a client
certificate of role scheduler from the same development CA (agentd.certs, the code
behind `agentctl certs init`), and gets kube-scheduler's own payloads
(tests/fixtures/k8s). Scores come from agentd's real ScorePlacement.
"""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))

from agentd_process import AgentdProcess
from conftest import require_cgroup_v1
from k8s_support import fixture, post, running_extender
from node_api_support import free_port

from agentd.certs import init_directory

NODES = ("node-a", "node-b", "node-c")
MiB = 1 << 20


@dataclass
class LiveNode:
    name: str
    daemon: AgentdProcess
    address: str
    metrics_port: int


def start_node(name: str, certs: Path, extra: str = "") -> LiveNode:
    address = f"127.0.0.1:{free_port()}"
    metrics_port = free_port()
    config = (
        f'[api]\ntcp_listen = "{address}"\ntls_cert = "{certs}/server.pem"\n'
        f'tls_key = "{certs}/server.key"\ntls_client_ca = "{certs}/ca.pem"\n'
        f'[tracking]\nsource = "off"\n'
        f'[prometheus]\nlisten = "127.0.0.1:{metrics_port}"\n{extra}'
    )
    daemon = AgentdProcess(config=config)
    daemon.start()
    return LiveNode(name, daemon, address, metrics_port)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_cgroup_v1()
    certs = tmp_path_factory.mktemp("certs")
    # One CA; the server certificate names every node (the extender checks the name).
    init_directory(certs, list(NODES), [("scheduler", "extender"), ("observer", "grafana")])
    # node-b keeps all but 200 MiB for the host: neither test pod (512Mi, 288Mi) fits.
    reserve_b = psutil.virtual_memory().total - 200 * MiB
    nodes: dict[str, LiveNode] = {}
    try:
        nodes["node-a"] = start_node("node-a", certs)
        nodes["node-b"] = start_node("node-b", certs, f'[node]\nreserved_memory = "{reserve_b}"\n')
        nodes["node-c"] = start_node("node-c", certs)
        # node-c already holds a session with a 12G budget: less room than node-a.
        with nodes["node-c"].daemon.client() as client:
            busy = client.session("resident", memory="12G")
            yield {"certs": certs, "nodes": nodes}
            busy.close()
    finally:
        for node in nodes.values():
            leftovers = node.daemon.cleanup()
            assert not leftovers, f"{node.name}: {leftovers}"
            assert node.daemon.exit_status in (0, None), node.daemon.logs()[-3000:]


def extender(cluster: dict[str, Any], extra_nodes: dict[str, str] | None = None) -> Any:
    certs = cluster["certs"]
    return running_extender(
        certs / "ca.pem",
        certs / "client-extender.pem",
        certs / "client-extender.key",
        {n.name: n.address for n in cluster["nodes"].values()} | (extra_nodes or {}),
        server_name="{node}",
        timeout=5.0,
    )


def test_filter_with_node_objects_uses_agentds_feasibility(cluster) -> None:
    args = fixture("filter_nodes.json")
    with extender(cluster) as http:
        _, result = post(http, "filter", args)
    assert result["Error"] == ""
    assert [n["metadata"]["name"] for n in result["Nodes"]["items"]] == ["node-a", "node-c"]
    assert result["Nodes"]["items"][0] == args["Nodes"]["items"][0]
    assert list(result["FailedNodes"]) == ["node-b"]
    assert "memory" in result["FailedNodes"]["node-b"]
    assert str(512 * MiB) in result["FailedNodes"]["node-b"]
    assert result["FailedAndUnresolvableNodes"] == {}


def test_filter_with_node_names_fails_an_unreachable_node_with_its_reason(cluster) -> None:
    args = fixture("filter_nodenames.json")
    args["NodeNames"] = [*NODES, "node-d"]
    with extender(cluster, {"node-d": f"127.0.0.1:{free_port()}"}) as http:
        _, result = post(http, "filter", args)
    assert result["NodeNames"] == ["node-a", "node-c"]
    assert "node-b" in result["FailedNodes"]
    assert list(result["FailedAndUnresolvableNodes"]) == ["node-d"]
    assert "unreachable" in result["FailedAndUnresolvableNodes"]["node-d"]
    for node in cluster["nodes"].values():
        assert node.daemon.running()


def test_prioritize_prefers_the_node_with_more_room(cluster) -> None:
    with extender(cluster) as http:
        _, result = post(http, "prioritize", fixture("prioritize_nodenames.json"))
    scores = {p["Host"]: p["Score"] for p in result}
    assert set(scores) == set(NODES)
    assert all(0 <= s <= 10 for s in scores.values())
    assert scores["node-b"] == 0  # infeasible
    assert scores["node-a"] > scores["node-c"] > 0, scores


def test_a_pod_too_big_for_every_node_is_failed_everywhere(cluster) -> None:
    with extender(cluster) as http:
        _, result = post(http, "filter", fixture("filter_too_big.json"))
    assert result["NodeNames"] == []
    assert set(result["FailedNodes"]) == {"node-a", "node-b"}
    assert all("memory" in reason for reason in result["FailedNodes"].values())


def test_scoring_calls_are_timed_on_the_nodes_tcp_listener(cluster) -> None:
    with extender(cluster) as http:
        status, _ = post(http, "prioritize", fixture("prioritize_nodenames.json"))
    assert status == 200
    node = cluster["nodes"]["node-a"]
    url = f"http://127.0.0.1:{node.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    line = next(
        line
        for line in text.splitlines()
        if line.startswith("agentd_api_request_duration_seconds_count{")
        and 'transport="tcp"' in line
        and 'method="/agentd.v1.NodeService/ScorePlacement"' in line
        and 'code="OK"' in line
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1
