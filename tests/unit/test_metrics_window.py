"""Bounded rings and the node window computed from them."""

from __future__ import annotations

import pytest

from agentd.metrics.window import FEATURE_NAMES, NodeWindow, RingWindow, mean, peak, rate


def test_ring_is_bounded_and_keeps_the_newest() -> None:
    ring = RingWindow(5)
    for i in range(100):
        ring.append(float(i), {"x": float(i)})
    assert len(ring) == 5
    assert [t for t, _ in ring] == [95.0, 96.0, 97.0, 98.0, 99.0]


def test_ring_needs_two_samples_of_room() -> None:
    with pytest.raises(ValueError):
        RingWindow(1)


def test_span_rate_mean_peak() -> None:
    ring = RingWindow(100)
    for i in range(11):  # binary-exact times: 10.0, 10.125, ... 11.25
        ring.append(10.0 + i * 0.125, {"c": i * 50.0, "g": float(i % 3)})
    last_half = ring.span(0.5)
    assert len(last_half) == 5  # 10.75 .. 11.25
    assert rate(last_half, "c") == pytest.approx(400.0)
    assert mean(ring.span(10), "g") == pytest.approx(sum(i % 3 for i in range(11)) / 11)
    assert peak(ring.span(10), "g") == 2.0
    # a span that ends earlier
    assert [t for t, _ in ring.span(0.25, end=10.375)] == [10.125, 10.25, 10.375]


def test_rate_needs_two_samples_and_never_goes_negative() -> None:
    assert rate([(1.0, {"c": 5.0})], "c") == 0.0
    assert rate([(1.0, {"c": 5.0}), (2.0, {"c": 1.0})], "c") == 0.0  # counter reset
    assert rate([(1.0, {}), (2.0, {"c": 1.0})], "c") == 0.0


def test_node_window_from_samples() -> None:
    a = {
        "cpu_total_jiffies": 0.0,
        "cpu_busy_jiffies": 0.0,
        "psi_cpu_some_total_us": 0.0,
        "psi_memory_full_total_us": 0.0,
        "pgmajfault": 0.0,
        "procs_running": 2.0,
        "MemTotal": 100.0,
        "MemAvailable": 40.0,
    }
    b = {
        **a,
        "cpu_total_jiffies": 200.0,
        "cpu_busy_jiffies": 150.0,  # 75% busy
        "psi_cpu_some_total_us": 500_000.0,  # waited half of the two seconds... per second
        "psi_memory_full_total_us": 20_000.0,
        "pgmajfault": 30.0,
        "procs_running": 4.0,
    }
    agentd = [(0.0, {"cpu_usage_us": 0.0}), (2.0, {"cpu_usage_us": 1_000_000.0})]
    w = NodeWindow.from_samples([(0.0, a), (2.0, b)], agentd, tool_calls=3, ncpus=2)
    assert w.seconds == 2.0
    assert w.cpu_busy_cores == pytest.approx(1.5)
    assert w.psi_cpu_some == pytest.approx(0.25)
    assert w.psi_memory_full == pytest.approx(0.01)
    assert w.pgmajfault_per_s == pytest.approx(15)
    assert w.procs_running == 3.0
    assert w.mem_available_frac == pytest.approx(0.4)
    assert w.agentd_cpu_cores == pytest.approx(0.5)
    assert w.agentd_tool_calls == 3


def test_node_window_round_trips_and_tolerates_unknown_keys() -> None:
    w = NodeWindow(cpu_busy_cores=1.25, psi_io_some=0.5)
    data = {**w.as_dict(), "from_a_newer_agentd": 1.0}
    assert NodeWindow.from_dict(data) == w
    assert "seconds" not in FEATURE_NAMES and "psi_io_some" in FEATURE_NAMES
