from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from agentd.k8s.intent import PodIntentError, pod_intent
from agentd.k8s.quantity import QuantityError, bytes_of, cores_of, parse_quantity
from agentd.v1 import agent_pb2

FIXTURES = Path(__file__).parent.parent / "fixtures" / "k8s"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512Mi", Decimal(512 * 2**20)),
        ("2G", Decimal(2 * 10**9)),
        ("500m", Decimal("0.5")),
        ("1.5", Decimal("1.5")),
        ("1e3", Decimal(1000)),
        ("128974848", Decimal(128974848)),
        ("1Ki", Decimal(1024)),
    ],
)
def test_quantities_follow_kubernetes(text: str, expected: Decimal) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "1GB", "-1Gi", "1.2.3", "Mi"])
def test_bad_quantities_are_refused(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(text)


def test_memory_rounds_up_and_cpu_is_cores() -> None:
    assert bytes_of("1.5") == 2
    assert cores_of("250m") == 0.25


def test_annotations_win_over_requests() -> None:
    args = json.loads((FIXTURES / "filter_nodes.json").read_text())
    intent = pod_intent(args["Pod"])
    assert intent.memory_bytes == 512 << 20
    assert intent.cpu_cores == 0.5
    assert intent.priority == agent_pb2.PRIORITY_CLASS_INTERACTIVE
    assert intent.label == "swe-agent task 7"
    candidate = intent.candidate("agents/swe-7-sandbox")
    assert candidate.session_budget.memory_max == str(512 << 20)
    assert candidate.intent.resources.cpu == "0.5"


def test_requests_are_summed_over_containers_without_annotations() -> None:
    args = json.loads((FIXTURES / "filter_nodenames.json").read_text())
    intent = pod_intent(args["Pod"])
    assert intent.memory_bytes == (256 + 32) << 20
    assert intent.cpu_cores == pytest.approx(0.3)
    assert intent.label == "agents/swe-8-sandbox"
    assert intent.scope == "session"


def test_larger_init_container_counts() -> None:
    pod = {
        "spec": {
            "containers": [{"resources": {"requests": {"memory": "100Mi"}}}],
            "initContainers": [{"resources": {"requests": {"memory": "1Gi", "cpu": "2"}}}],
        }
    }
    intent = pod_intent(pod)
    assert intent.memory_bytes == 1 << 30
    assert intent.cpu_cores == 2.0


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({"agentd.io/memory": "lots"}, "agentd.io/memory='lots'"),
        ({"agentd.io/priority": "urgent"}, "must be one of interactive"),
        ({"agentd.io/pids": "0"}, "positive integer"),
        ({"agentd.io/scope": "node"}, "session or tool-call"),
        ({"agentd.io/duration-seconds": "soon"}, "duration-seconds"),
    ],
)
def test_bad_annotations_name_the_annotation(annotations: dict[str, str], message: str) -> None:
    with pytest.raises(PodIntentError, match=message.replace("(", r"\(")):
        pod_intent({"metadata": {"annotations": annotations}})


def test_tool_call_scope_has_no_session_budget() -> None:
    intent = pod_intent(
        {"metadata": {"annotations": {"agentd.io/scope": "tool-call", "agentd.io/memory": "1Gi"}}}
    )
    assert not intent.candidate("x").HasField("session_budget")


def test_scores_are_scaled_relative_to_the_best_feasible_node() -> None:
    from agentd.k8s.extender import scaled

    feasible = {"a": 4.0, "b": 2.0, "c": 0.1}
    # Small absolute scores (a stalled cluster) keep their order.
    assert [scaled(feasible[n], feasible, 10) for n in "abc"] == [10, 5, 1]
    assert scaled(None, feasible, 10) == 0
    assert scaled(0.0, {"a": 0.0}, 10) == 1  # feasible but scored 0: still above infeasible
    assert scaled(50.0, {"a": 100.0, "b": 50.0}, 100) == 50
