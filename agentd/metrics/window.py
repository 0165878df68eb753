"""Bounded windows of samples and the node window the predictor reads.

A RingWindow keeps the last `capacity` samples (time, counters) and nothing else:
memory is fixed whatever the uptime. Rates come from the first and last sample in
the requested span, so a missed tick only lengthens the span it is divided by.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass

from agentd.metrics.runqlat import summary as runq_summary

Sample = dict[str, float]


class RingWindow:
    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError("a window needs room for at least 2 samples")
        self._samples: collections.deque[tuple[float, Sample]] = collections.deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def capacity(self) -> int:
        return self._samples.maxlen or 0

    def append(self, t: float, sample: Sample) -> None:
        self._samples.append((t, sample))

    def span(self, seconds: float, end: float | None = None) -> list[tuple[float, Sample]]:
        """Samples with end - seconds <= t <= end (end: the newest sample)."""
        if not self._samples:
            return []
        end = self._samples[-1][0] if end is None else end
        start = end - seconds
        return [(t, s) for t, s in self._samples if start <= t <= end]

    def last(self) -> tuple[float, Sample] | None:
        return self._samples[-1] if self._samples else None

    def __iter__(self) -> Iterator[tuple[float, Sample]]:
        return iter(self._samples)


def rate(samples: list[tuple[float, Sample]], key: str) -> float:
    """Per-second increase of counter `key` between the first and last sample (0 when
    fewer than two samples have it or time did not advance)."""
    have = [(t, s[key]) for t, s in samples if key in s]
    if len(have) < 2 or have[-1][0] <= have[0][0]:
        return 0.0
    return max(0.0, (have[-1][1] - have[0][1]) / (have[-1][0] - have[0][0]))


def mean(samples: list[tuple[float, Sample]], key: str) -> float:
    values = [s[key] for _, s in samples if key in s]
    return sum(values) / len(values) if values else 0.0


def peak(samples: list[tuple[float, Sample]], key: str) -> float:
    return max((s[key] for _, s in samples if key in s), default=0.0)


@dataclass(frozen=True)
class NodeWindow:
    """What the node looked like over a short span: the predictor's view of "now".

    Fractions are of wall time (PSI) or of the node's CPUs; rates are per second.
    Built from the collector's rings (from_samples) or from a stored dataset record
    (from_dict), so training and serving see the same numbers.
    """

    seconds: float = 0.0
    ncpus: float = float(os.cpu_count() or 1)
    cpu_busy_cores: float = 0.0
    cpu_iowait_cores: float = 0.0
    procs_running: float = 0.0
    procs_blocked: float = 0.0
    psi_cpu_some: float = 0.0
    psi_memory_some: float = 0.0
    psi_memory_full: float = 0.0
    psi_io_some: float = 0.0
    psi_io_full: float = 0.0
    pgfault_per_s: float = 0.0
    pgmajfault_per_s: float = 0.0
    refault_per_s: float = 0.0
    pgscan_per_s: float = 0.0
    swap_per_s: float = 0.0
    ctxt_per_s: float = 0.0
    forks_per_s: float = 0.0
    disk_busy_frac: float = 0.0
    disk_mb_per_s: float = 0.0
    net_mb_per_s: float = 0.0
    mem_available_frac: float = 1.0
    agentd_tool_calls: float = 0.0
    agentd_cpu_cores: float = 0.0
    # Run-queue latency of agentd's tool calls' tasks (eBPF, docs/runqlat.md; 0 without
    # it). Features since model file version 3.
    runq_p50_us: float = 0.0
    runq_p99_us: float = 0.0
    runq_waits_per_s: float = 0.0

    @classmethod
    def from_samples(
        cls,
        node: list[tuple[float, Sample]],
        agentd: list[tuple[float, Sample]] | None = None,
        tool_calls: float = 0.0,
        ncpus: float | None = None,
    ) -> NodeWindow:
        """From node samples (ProcNodeSource) and samples of agentd's `sessions` group."""
        agentd = agentd or []
        seconds = node[-1][0] - node[0][0] if len(node) >= 2 else 0.0
        ncpus = ncpus or float(os.cpu_count() or 1)
        total = rate(node, "cpu_total_jiffies")
        busy_frac = rate(node, "cpu_busy_jiffies") / total if total else 0.0
        iowait_frac = rate(node, "cpu_iowait_jiffies") / total if total else 0.0
        last = node[-1][1] if node else {}
        mem_total = last.get("MemTotal", 0.0)
        return cls(
            seconds=seconds,
            ncpus=ncpus,
            cpu_busy_cores=busy_frac * ncpus,
            cpu_iowait_cores=iowait_frac * ncpus,
            procs_running=mean(node, "procs_running"),
            procs_blocked=mean(node, "procs_blocked"),
            psi_cpu_some=rate(node, "psi_cpu_some_total_us") / 1e6,
            psi_memory_some=rate(node, "psi_memory_some_total_us") / 1e6,
            psi_memory_full=rate(node, "psi_memory_full_total_us") / 1e6,
            psi_io_some=rate(node, "psi_io_some_total_us") / 1e6,
            psi_io_full=rate(node, "psi_io_full_total_us") / 1e6,
            pgfault_per_s=rate(node, "pgfault"),
            pgmajfault_per_s=rate(node, "pgmajfault"),
            refault_per_s=rate(node, "workingset_refault_anon")
            + rate(node, "workingset_refault_file"),
            pgscan_per_s=rate(node, "pgscan_kswapd") + rate(node, "pgscan_direct"),
            swap_per_s=rate(node, "pswpin") + rate(node, "pswpout"),
            ctxt_per_s=rate(node, "ctxt"),
            forks_per_s=rate(node, "forks"),
            disk_busy_frac=rate(node, "disk_busy_ms") / 1000,
            disk_mb_per_s=(rate(node, "disk_read_sectors") + rate(node, "disk_write_sectors"))
            * 512
            / 1e6,
            net_mb_per_s=(rate(node, "net_rx_bytes") + rate(node, "net_tx_bytes")) / 1e6,
            mem_available_frac=last.get("MemAvailable", mem_total) / mem_total
            if mem_total
            else 1.0,
            agentd_tool_calls=tool_calls,
            agentd_cpu_cores=rate(agentd, "cpu_usage_us") / 1e6,
            **_runq(node),
        )

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> NodeWindow:
        """Unknown keys are ignored and missing ones take defaults, so records written
        by an older or newer agentd still load."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: float(v) for k, v in data.items() if k in names})


def _runq(node: list[tuple[float, Sample]]) -> dict[str, float]:
    have = [(t, s) for t, s in node if "rql_count" in s]
    if len(have) < 2:
        return {}
    out = runq_summary(have[0][1], have[-1][1], have[-1][0] - have[0][0])
    return {k: out[k] for k in ("runq_p50_us", "runq_p99_us", "runq_waits_per_s")}


#: Window fields the model does not read: `seconds` (how long the window is). The
#: run-queue figures are features since model file version 3 (the dataset recorded
#: on a quiet CPU has them).
NOT_FEATURES = ("seconds",)

FEATURE_NAMES: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(NodeWindow) if f.name not in NOT_FEATURES
)
