"""Interference metrics: sources, bounded windows, the collector and the dataset."""

from __future__ import annotations

from pathlib import Path

import structlog

from agentd.cgroups.base import CgroupBackend
from agentd.config import Config
from agentd.events import EventBus
from agentd.metrics.collector import Collector, CollectorSettings
from agentd.metrics.dataset import DATASET_FILE, Dataset
from agentd.metrics.reader import CachedReader
from agentd.metrics.runqlat import RunqGroupSource, RunqNodeSource, RunqReader
from agentd.metrics.sources import group_sources, node_sources
from agentd.metrics.window import NodeWindow
from agentd.tracking import Tracker
from agentd.tracking.ebpf import EbpfSource

log = structlog.get_logger("agentd.metrics")

__all__ = ["Collector", "CollectorSettings", "Dataset", "NodeWindow", "build_collector"]


def dataset_path(cfg: Config) -> Path:
    return Path(cfg.daemon.state_dir) / DATASET_FILE


def build_collector(
    cfg: Config, backend: CgroupBackend, bus: EventBus, tracker: Tracker | None = None
) -> Collector | None:
    """The daemon's collector as configured ([collector], [predictor]); None when off.
    With the eBPF tracker, the run-queue latency histogram is one more source."""
    c = cfg.collector
    if not c.enabled:
        return None
    settings = CollectorSettings(
        period_seconds=c.period_ms / 1000,
        detail_period_seconds=max(c.detail_period_ms, c.period_ms) / 1000,
        window_seconds=c.window_seconds,
        before_seconds=cfg.predictor.window_seconds,
        max_groups=c.max_groups,
    )
    dataset = Dataset(dataset_path(cfg)) if c.dataset else None
    reader = CachedReader()
    nodes, groups = node_sources(reader), group_sources(backend, reader)
    if c.runq_histogram and tracker is not None:
        runq = runq_sources(tracker)
        if runq is not None:
            nodes.append(runq[0])
            groups.append(runq[1])
    return Collector(nodes, groups, settings, dataset, bus)


def runq_sources(tracker: Tracker) -> tuple[RunqNodeSource, RunqGroupSource] | None:
    """The eBPF run-queue sources, attached; None (logged) where they cannot be."""
    source = tracker.source
    if not isinstance(source, EbpfSource) or not source.runq:
        log.warning(
            "collector.runq_unavailable",
            reason=f"needs the eBPF tracking source with its run-queue programs "
            f"(tracking source: {tracker.source_name})",
        )
        return None
    reader = RunqReader(source)
    try:
        reader.start()
    except Exception as e:
        log.warning("collector.runq_unavailable", reason=str(e))
        return None

    def key_of_rel(rel: str) -> int | None:
        return tracker.key_of(rel.rsplit("/", 1)[-1])

    return RunqNodeSource(reader), RunqGroupSource(reader, key_of_rel)
