"""Interference metrics: sources, bounded windows, the collector and the dataset."""

from __future__ import annotations

from pathlib import Path

from agentd.cgroups.base import CgroupBackend
from agentd.config import Config
from agentd.events import EventBus
from agentd.metrics.collector import Collector, CollectorSettings
from agentd.metrics.dataset import DATASET_FILE, Dataset
from agentd.metrics.reader import CachedReader
from agentd.metrics.sources import group_sources, node_sources
from agentd.metrics.window import NodeWindow

__all__ = ["Collector", "CollectorSettings", "Dataset", "NodeWindow", "build_collector"]


def dataset_path(cfg: Config) -> Path:
    return Path(cfg.daemon.state_dir) / DATASET_FILE


def build_collector(cfg: Config, backend: CgroupBackend, bus: EventBus) -> Collector | None:
    """The daemon's collector as configured ([collector], [predictor]); None when off."""
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
    return Collector(node_sources(reader), group_sources(backend, reader), settings, dataset, bus)
