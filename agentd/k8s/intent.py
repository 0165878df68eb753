"""What a pod asks of a node, as a NodeService Candidate.

From the pod's annotations first (the agent platform states what the sandbox's
agent session needs), else from its containers' resource requests, the way
kube-scheduler itself sums them: the sum over containers, or the largest init
container if that is more.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from google.protobuf import duration_pb2

from agentd.k8s.quantity import QuantityError, bytes_of, cores_of, parse_quantity
from agentd.v1 import agent_pb2, node_pb2

PREFIX = "agentd.io/"
MEMORY = PREFIX + "memory"
CPU = PREFIX + "cpu"
PIDS = PREFIX + "pids"
PRIORITY = PREFIX + "priority"
LABEL = PREFIX + "label"
DURATION = PREFIX + "duration-seconds"
# "session" (default): the pod is an agent sandbox, its figures a session budget;
# "tool-call": the pod is one short task, scored as a single tool call.
SCOPE = PREFIX + "scope"

PRIORITIES = {
    "interactive": agent_pb2.PRIORITY_CLASS_INTERACTIVE,
    "normal": agent_pb2.PRIORITY_CLASS_NORMAL,
    "batch": agent_pb2.PRIORITY_CLASS_BATCH,
}


class PodIntentError(ValueError):
    """The pod's annotations cannot be understood; the message names the annotation."""


@dataclass(frozen=True)
class PodIntent:
    memory_bytes: int | None
    cpu_cores: float | None
    pids: int | None
    priority: int
    label: str
    duration_seconds: float | None
    scope: str

    def candidate(self, candidate_id: str) -> node_pb2.Candidate:
        resources = agent_pb2.Resources(
            memory_max=str(self.memory_bytes) if self.memory_bytes else "",
            cpu=f"{self.cpu_cores:g}" if self.cpu_cores else "",
            pids_max=self.pids or 0,
        )
        intent = agent_pb2.Intent(resources=resources, priority=self.priority, label=self.label)
        if self.duration_seconds is not None:
            intent.expected_duration.CopyFrom(
                duration_pb2.Duration(
                    seconds=int(self.duration_seconds),
                    nanos=int((self.duration_seconds % 1) * 1e9),
                )
            )
        candidate = node_pb2.Candidate(id=candidate_id, intent=intent)
        if self.scope == "session":
            candidate.session_budget.CopyFrom(resources)
        return candidate


def pod_name(pod: dict[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name') or '?'}"


def pod_intent(pod: dict[str, Any]) -> PodIntent:
    if not isinstance(pod, dict):
        raise PodIntentError("Pod must be an object")
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if not isinstance(annotations, dict):
        raise PodIntentError("metadata.annotations must be an object")
    requested_memory, requested_cpu = _requests(pod.get("spec") or {})
    memory = _annotation(annotations, MEMORY, bytes_of)
    cpu = _annotation(annotations, CPU, cores_of)
    pids = _annotation(annotations, PIDS, _positive_int)
    duration = _annotation(annotations, DURATION, _seconds)
    priority_name = str(annotations.get(PRIORITY, "")).strip().lower()
    if priority_name and priority_name not in PRIORITIES:
        raise PodIntentError(
            f"annotation {PRIORITY}={priority_name!r}: must be one of {', '.join(PRIORITIES)}"
        )
    scope = str(annotations.get(SCOPE, "session")).strip().lower()
    if scope not in ("session", "tool-call"):
        raise PodIntentError(f"annotation {SCOPE}={scope!r}: must be session or tool-call")
    return PodIntent(
        memory_bytes=memory if memory is not None else requested_memory,
        cpu_cores=cpu if cpu is not None else requested_cpu,
        pids=pids,
        priority=PRIORITIES.get(priority_name, agent_pb2.PRIORITY_CLASS_UNSPECIFIED),
        label=str(annotations.get(LABEL, "")) or pod_name(pod),
        duration_seconds=duration,
        scope=scope,
    )


def _annotation(annotations: dict[str, Any], key: str, parse: Any) -> Any:
    if key not in annotations:
        return None
    value = annotations[key]
    try:
        return parse(str(value))
    except (QuantityError, ValueError) as e:
        raise PodIntentError(f"annotation {key}={value!r}: {e}") from None


def _positive_int(text: str) -> int:
    value = int(text.strip())
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _seconds(text: str) -> float:
    value = float(text.strip())
    if not 0 <= value < 10**9:
        raise ValueError("must be a number of seconds >= 0")
    return value


def _requests(spec: dict[str, Any]) -> tuple[int | None, float | None]:
    """(memory bytes, cores) requested by the pod's containers, None when none asks."""

    def total(containers: list[dict[str, Any]], name: str) -> Decimal | None:
        found = [
            parse_quantity(str(r[name]))
            for c in containers or []
            for r in [((c or {}).get("resources") or {}).get("requests") or {}]
            if name in r
        ]
        return sum(found, Decimal(0)) if found else None

    def init_max(name: str) -> Decimal | None:
        values = [total([c], name) for c in spec.get("initContainers") or []]
        present = [v for v in values if v is not None]
        return max(present) if present else None

    try:
        out = []
        for name in ("memory", "cpu"):
            values = [v for v in (total(spec.get("containers") or [], name), init_max(name)) if v]
            out.append(max(values) if values else None)
    except (QuantityError, TypeError, AttributeError) as e:
        raise PodIntentError(f"spec.containers[].resources.requests: {e}") from None
    memory, cpu = out
    return (int(memory) if memory is not None else None, float(cpu) if cpu is not None else None)
