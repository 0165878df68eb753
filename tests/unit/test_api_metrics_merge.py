"""interceptor.merge_families: the readers' API samples added to the daemon's own."""

from __future__ import annotations

import pytest
from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric

from agentd.observability.interceptor import merge_families


def _families(*metrics: Histogram | Counter) -> list[Metric]:
    return [family for metric in metrics for family in metric.collect()]


def _value(families: list[Metric], name: str, **labels: str) -> float:
    (value,) = [
        s.value for f in families for s in f.samples if s.name == name and s.labels == labels
    ]
    return value


def test_the_same_samples_are_summed_others_appended_unknown_families_left_out():
    own = Histogram("calls_seconds", "", ["method"], buckets=(0.1, 1.0), registry=None)
    theirs = Histogram("calls_seconds", "", ["method"], buckets=(0.1, 1.0), registry=None)
    stray = Counter("stray", "", registry=None)
    own.labels("score").observe(0.05)
    theirs.labels("score").observe(0.5)
    theirs.labels("score").observe(0.05)
    theirs.labels("state").observe(2.0)
    stray.inc()

    merged = merge_families(_families(own), _families(theirs, stray))

    assert [f.name for f in merged] == ["calls_seconds"]
    assert _value(merged, "calls_seconds_count", method="score") == 3
    assert _value(merged, "calls_seconds_bucket", method="score", le="0.1") == 2
    assert _value(merged, "calls_seconds_bucket", method="score", le="1.0") == 3
    assert _value(merged, "calls_seconds_sum", method="score") == pytest.approx(0.6)
    created = _value(_families(own), "calls_seconds_created", method="score")
    assert _value(merged, "calls_seconds_created", method="score") == created
    # Only in the readers: appended to the same family.
    assert _value(merged, "calls_seconds_count", method="state") == 1
    assert _value(merged, "calls_seconds_bucket", method="state", le="+Inf") == 1
