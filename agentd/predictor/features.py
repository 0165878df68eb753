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
    #: CPUs it may run on (a cpuset or taskset it shares with agentd's other tool
    #: calls); None: all of the node's
    cpus: float | None = None

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
    solo_file_bytes: float = 0.0

    @classmethod
    def of(cls, baseline: Baseline | None) -> ClassProfile:
        if baseline is None:
            return cls()
        return cls(
            known=True,
            solo_cpu_cores=baseline.cpu_per_second,
            solo_duration_seconds=baseline.duration_seconds,
            solo_peak_memory_bytes=baseline.peak_memory_bytes,
            # what it used alone is a lower bound of what it wanted (the sampled
            # demand misses a short run's first and last 100 ms)
            solo_cpu_demand=max(baseline.cpu_demand, baseline.cpu_per_second),
            solo_pgfault_per_s=baseline.pgfault_per_s,
            solo_max_tasks=baseline.max_tasks,
            solo_file_bytes=baseline.file_bytes,
        )

    @property
    def io_share(self) -> float:
        """Share of its solo run it neither used nor waited for a CPU: I/O, sleep,
        children on other CPUs (the complement of the CPU demand)."""
        return max(0.0, 1.0 - min(self.solo_cpu_demand, 1.0))


def cpu_share_slowdown(
    demand: float, agentd_cores: float, agentd_tool_calls: float, shared_cpus: float
) -> tuple[float, float]:
    """The slowdown CFS alone would cause, from first principles: (slowdown, the share
    of a CPU the candidate gets when it wants one).

    agentd's running tool calls use `agentd_cores` of the `shared_cpus` the candidate
    would run on. A thread that wants a CPU gets a whole one if one is left idle,
    else what they leave idle of one, but at least its fair share: every tool call's
    group has the same weight, so 1 / (1 + tool calls per CPU). The part of its solo
    time it spent wanting a CPU (`demand`, one thread's worth at most) stretches by
    1 / share; the rest (I/O, sleep) does not. One CPU hog on the one CPU: share 1/2,
    a CPU-bound candidate takes twice as long; a hog held to 1/3 of it: 1.5 times.
    """
    cpus = max(shared_cpus, 1.0)
    idle = min(max(cpus - max(agentd_cores, 0.0), 0.0), 1.0)
    fair = 1.0 / (1.0 + max(agentd_tool_calls, 0.0) / cpus)
    share = max(idle, fair)
    d = min(max(demand, 0.0), 1.0)
    return 1.0 + d * (1.0 / share - 1.0), share


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
    "profile_file_gib",
    "profile_io_share",
    # where the candidate would run: the CPUs it shares with agentd's tool calls,
    # and their CPU use per shared CPU (the antagonists' pressure it would meet)
    "shared_cpus",
    "agentd_cores_per_cpu",
    # the first-principles estimate (cpu_share_slowdown) and its parts
    "cpu_share_left",
    "cpu_share_slowdown",
    # interactions a linear model cannot build itself: how much of what the candidate
    # wants (CPU, memory) the node's current contention would take from it
    "cpu_demand_over_free",
    "cpu_contention",
    "cpu_demand_x_psi_cpu",
    "cpu_demand_x_agentd_cores",
    "cpu_demand_x_runnable_per_cpu",
    "memory_pressure_x_peak",
    "io_share_x_psi_io",
    "io_share_x_disk_busy",
    "log_tasks_x_forks",
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
    shared = candidate.cpus or window.ncpus
    slowdown, share = cpu_share_slowdown(
        demand, window.agentd_cpu_cores, window.agentd_tool_calls, shared
    )
    io_share = profile.io_share
    log_tasks = math.log(max(profile.solo_max_tasks, 1.0))
    values = (window_part if window_part is not None else window_values(window)) + [
        float(candidate.cpu_cores or 0.0),
        float(candidate.memory_bytes or 0) / GIB,
        1.0 if profile.known else 0.0,
        profile.solo_cpu_cores,
        demand,
        math.log1p(profile.solo_duration_seconds),
        peak_gib,
        math.log1p(profile.solo_pgfault_per_s),
        log_tasks,
        profile.solo_file_bytes / GIB,
        io_share,
        shared,
        window.agentd_cpu_cores / max(shared, 1.0),
        share,
        slowdown,
        demand / free,
        demand * window.cpu_busy_cores / window.ncpus,
        demand * window.psi_cpu_some,
        demand * window.agentd_cpu_cores,
        demand * window.procs_running / window.ncpus,
        (window.psi_memory_some + window.pgmajfault_per_s / 1000) * peak_gib,
        io_share * window.psi_io_some,
        io_share * window.disk_busy_frac,
        log_tasks * math.log1p(window.forks_per_s),
    ]
    return values


#: Tag of a record whose tool call ran confined to some CPUs (the experiment
#: harness pins victims and antagonists together: `taskset -c <list>`)
CPUS_TAG = "cpus"


def cpu_count(cpu_list: str) -> int:
    """How many CPUs a list like "1", "0-3" or "0,2-3" names."""
    count = 0
    for part in cpu_list.split(","):
        low, _, high = part.strip().partition("-")
        count += int(high) - int(low) + 1 if high else 1
    return count


def candidate_of(record: Record) -> CandidateFeatures:
    intent = record.intent
    cpus = record.tags.get(CPUS_TAG)
    return CandidateFeatures(
        label=record.label,
        memory_bytes=intent.get("memory_max"),
        cpu_cores=intent.get("cpu"),
        expected_duration_seconds=intent.get("expected_duration_seconds"),
        priority=intent.get("priority"),
        cpus=float(cpu_count(cpus)) if cpus else None,
    )
