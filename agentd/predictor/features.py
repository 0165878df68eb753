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

    @classmethod
    def of(cls, baseline: Baseline | None) -> ClassProfile:
        if baseline is None:
            return cls()
        return cls(
            known=True,
            solo_cpu_cores=baseline.cpu_per_second,
            solo_duration_seconds=baseline.duration_seconds,
            solo_peak_memory_bytes=baseline.peak_memory_bytes,
        )


CANDIDATE_FEATURES = (
    "cand_cpu_request",
    "cand_memory_gib",
    "profile_known",
    "profile_cpu_cores",
    "profile_log_duration",
    "profile_peak_gib",
    # interactions a linear model cannot build itself
    "cpu_demand_over_free",
    "cpu_contention",
    "memory_pressure_x_peak",
)
FEATURE_NAMES: tuple[str, ...] = WINDOW_FEATURES + CANDIDATE_FEATURES


def feature_vector(
    candidate: CandidateFeatures, window: NodeWindow, profile: ClassProfile
) -> list[float]:
    cpu_demand = candidate.cpu_cores or profile.solo_cpu_cores
    if candidate.cpu_cores:
        cpu_demand = min(candidate.cpu_cores, profile.solo_cpu_cores)
    free = max(window.ncpus - window.cpu_busy_cores, 0.05)
    peak_gib = (profile.solo_peak_memory_bytes or float(candidate.memory_bytes or 0)) / GIB
    # getattr, not as_dict(): dataclasses.asdict deep-copies and was 2/3 of predict()
    values = [getattr(window, name) for name in WINDOW_FEATURES] + [
        float(candidate.cpu_cores or 0.0),
        float(candidate.memory_bytes or 0) / GIB,
        1.0 if profile.known else 0.0,
        profile.solo_cpu_cores,
        math.log1p(profile.solo_duration_seconds),
        peak_gib,
        cpu_demand / free,
        cpu_demand * window.cpu_busy_cores / window.ncpus,
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
