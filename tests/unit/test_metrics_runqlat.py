"""The run-queue histogram's arithmetic (buckets, quantiles, spans) and the collector
going on without it where the eBPF source is not there."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from agentd.config import add_arguments, load_config
from agentd.events import EventBus
from agentd.metrics import build_collector, runq_sources
from agentd.metrics.runqlat import between, bucket_bounds, quantile, summary
from agentd.metrics.window import FEATURE_NAMES, NodeWindow


def slot_of(delta: int) -> int:
    """runq_slot_of in bpf/tracker.c."""
    if delta < 4:
        return delta
    log = delta.bit_length() - 1
    return (log << 2) | ((delta >> (log - 2)) & 3)


@pytest.mark.parametrize("delta", [0, 1, 3, 4, 5, 7, 8, 9, 1000, 123_456, 10**9, 2**40 + 12345])
def test_each_delay_falls_inside_its_bucket(delta: int) -> None:
    low, high = bucket_bounds(slot_of(delta))
    assert low <= delta < high
    assert high / max(low, 1) <= 2  # a quarter of a power of two, or one ns below 4


def test_quantiles_of_a_known_histogram() -> None:
    # 90 waits of ~1 us, 10 of ~1 ms
    hist = {slot_of(1000): 90.0, slot_of(1_000_000): 10.0}
    assert quantile(hist, 0.5) == pytest.approx(1000, rel=0.25)
    assert quantile(hist, 0.99) == pytest.approx(1_000_000, rel=0.25)
    assert quantile({}, 0.5) == 0.0


def test_a_span_is_the_difference_of_cumulative_samples() -> None:
    first = {"rql_count": 10.0, "rql_sum_ns": 10_000.0, f"rql_b{slot_of(1000)}": 10.0}
    last = {
        "rql_count": 20.0,
        "rql_sum_ns": 10_000.0 + 10 * 1_000_000,
        f"rql_b{slot_of(1000)}": 10.0,
        f"rql_b{slot_of(1_000_000)}": 10.0,
    }
    assert between(first, last) == {slot_of(1_000_000): 10.0}
    s = summary(first, last, 2.0)
    assert s["runq_waits_per_s"] == 5.0
    assert s["runq_mean_us"] == pytest.approx(1000)
    assert s["runq_p50_us"] == pytest.approx(1000, rel=0.25)


def test_the_node_window_reads_the_histogram_and_the_model_too() -> None:
    node = [
        (0.0, {"rql_count": 0.0, "rql_sum_ns": 0.0}),
        (1.0, {"rql_count": 100.0, "rql_sum_ns": 1e8, f"rql_b{slot_of(1_000_000)}": 100.0}),
    ]
    w = NodeWindow.from_samples(node)
    assert w.runq_p50_us == pytest.approx(1000, rel=0.25) and w.runq_waits_per_s == 100
    assert "runq_p50_us" in FEATURE_NAMES  # model file version 3
    assert NodeWindow.from_samples(node[:1]).runq_p99_us == 0.0


def test_without_the_ebpf_source_the_collector_goes_on_without_it(tmp_path: Path) -> None:
    tracker = SimpleNamespace(source=object(), source_name="procfs")
    with capture_logs() as logs:
        assert runq_sources(tracker) is None  # type: ignore[arg-type]
    assert logs[0]["event"] == "collector.runq_unavailable"
    assert "tracking source: procfs" in logs[0]["reason"]
    toml = tmp_path / "agentd.toml"
    toml.write_text("[collector]\ndataset = false\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = load_config(parser.parse_args(["--config", str(toml)]), environ={})
    assert cfg.collector.runq_histogram
    backend = SimpleNamespace(name="v1", path_in=lambda c, r: "", procs=lambda *a, **k: [])
    collector = build_collector(cfg, backend, EventBus(), tracker)  # type: ignore[arg-type]
    assert collector is not None
    names = [s.name for s in collector._node_sources + collector._group_sources]
    assert "runqlat" not in names and "proc" in names
