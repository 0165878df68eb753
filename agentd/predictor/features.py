"""What the predictor sees: a candidate tool call, the node window, and the
candidate's class profile (how it behaves alone), turned into one feature vector.

Training (from dataset records) and serving (from the collector) go through the
same `feature_vector`, so the two cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agentd.metrics.dataset import Baseline, Record, command_class
from agentd.metrics.window import FEATURE_NAMES as WINDOW_FEATURES
from agentd.metrics.window import NodeWindow

GIB = float(1 << 30)


@dataclass(frozen=True)
class CandidateFeatures:
    """A tool call a scheduler considers placing here (an intent and its label)."""

    label: str
    memory_bytes: int | None = None
    cpu_cores: float | None = None
    expected_duration_seconds: float | None = None
    priority: int | None = None

    @property
    def command_class(self) -> str:
        return command_class(self.label)


@dataclass(frozen=True)
class ClassProfile:
    """How a command class runs alone; unknown classes get the neutral profile."""

    known: bool = False
    solo_cpu_cores: float = 1.0
    solo_duration_seconds: float = 0.0
    solo_peak_memory_bytes: float = 0.0
    #: cores wanted alone (on CPU + waiting for one): CPU-boundness
    solo_cpu_demand: float = 1.0
    solo_pgfault_per_s: float = 0.0
    solo_max_tasks: float = 1.0

    @classmethod
    def of(cls, baseline: Baseline | None) -> ClassProfile:
        if baseline is None:
            return cls()
        return cls(
            known=True,
            solo_cpu_cores=baseline.cpu_per_second,
            solo_duration_seconds=baseline.duration_seconds,
            solo_peak_memory_bytes=baseline.peak_memory_bytes,
            solo_cpu_demand=baseline.cpu_demand or baseline.cpu_per_second,
            solo_pgfault_per_s=baseline.pgfault_per_s,
            solo_max_tasks=baseline.max_tasks,
        )


CANDIDATE_FEATURES = (
    "cand_cpu_request",
    "cand_memory_gib",
    "profile_known",
    "profile_cpu_cores",
    "profile_cpu_demand",
    "profile_log_duration",
    "profile_peak_gib",
    "profile_log_pgfault_rate",
    "profile_log_tasks",
    # interactions a linear model cannot build itself: how much of what the candidate
    # wants (CPU, memory) the node's current contention would take from it
    "cpu_demand_over_free",
    "cpu_contention",
    "cpu_demand_x_psi_cpu",
    "cpu_demand_x_agentd_cores",
    "cpu_demand_x_runnable_per_cpu",
    "memory_pressure_x_peak",
)
FEATURE_NAMES: tuple[str, ...] = WINDOW_FEATURES + CANDIDATE_FEATURES


def window_values(window: NodeWindow) -> list[float]:
    # getattr, not as_dict(): dataclasses.asdict deep-copies and was 2/3 of predict()
    return [getattr(window, name) for name in WINDOW_FEATURES]


def feature_vector(
    candidate: CandidateFeatures,
    window: NodeWindow,
    profile: ClassProfile,
    window_part: list[float] | None = None,
) -> list[float]:
    """`window_part`: window_values(window), when the caller builds several vectors on
    one window (ScorePlacement's candidates)."""
    demand = profile.solo_cpu_demand
    if candidate.cpu_cores:
        demand = min(candidate.cpu_cores, demand)
    free = max(window.ncpus - window.cpu_busy_cores, 0.05)
    peak_gib = (profile.solo_peak_memory_bytes or float(candidate.memory_bytes or 0)) / GIB
    values = (window_part if window_part is not None else window_values(window)) + [
        float(candidate.cpu_cores or 0.0),
        float(candidate.memory_bytes or 0) / GIB,
        1.0 if profile.known else 0.0,
        profile.solo_cpu_cores,
        demand,
        math.log1p(profile.solo_duration_seconds),
        peak_gib,
        math.log1p(profile.solo_pgfault_per_s),
        math.log(max(profile.solo_max_tasks, 1.0)),
        demand / free,
        demand * window.cpu_busy_cores / window.ncpus,
        demand * window.psi_cpu_some,
        demand * window.agentd_cpu_cores,
        demand * window.procs_running / window.ncpus,
        (window.psi_memory_some + window.pgmajfault_per_s / 1000) * peak_gib,
    ]
    return values


def candidate_of(record: Record) -> CandidateFeatures:
    intent = record.intent
    return CandidateFeatures(
        label=record.label,
        memory_bytes=intent.get("memory_max"),
        cpu_cores=intent.get("cpu"),
        expected_duration_seconds=intent.get("expected_duration_seconds"),
        priority=intent.get("priority"),
    )
