"""Run-queue latency per tool call and per node, from the eBPF histogram.

bpf/tracker.c (RUNQ_LATENCY) counts, per tool call key, how long its tasks waited
runnable before a CPU took them, in log2 buckets of nanoseconds with 4 sub-buckets per
power of two (~19% wide). This module reads those maps once per detail tick and hands
the collector cumulative counts: per tool call since it began, per node (the sum over
every tool call agentd tracks, kept across tool calls' ends). Percentiles of any span
come from the difference of two cumulative histograms (`between`).

Samples carry `rql_count`, `rql_sum_ns` and one `rql_b<slot>` per non-empty bucket
(sparse: ~15-25 keys). docs/runqlat.md has the design and what it costs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from prometheus_client import Counter, Gauge

log = structlog.get_logger("agentd.metrics")

SUB_BITS = 2
BUCKET_PREFIX = "rql_b"
#: An unused key's entries are deleted after this long (processes that outlive their
#: tool call keep counting under its key until then).
IDLE_KEY_SECONDS = 5.0

NODE_P50 = Gauge(
    "agentd_collector_runq_delay_p50_seconds",
    "Median run-queue delay of agentd's tool calls' tasks over the last detail period",
)
NODE_P99 = Gauge(
    "agentd_collector_runq_delay_p99_seconds",
    "99th percentile run-queue delay of agentd's tool calls' tasks over the last detail period",
)
NODE_WAITS = Counter(
    "agentd_collector_runq_waits_total", "Run-queue waits of agentd's tool calls' tasks"
)
NODE_DELAY = Counter(
    "agentd_collector_runq_delay_seconds_total",
    "Run-queue delay summed over agentd's tool calls' tasks",
)

Histogram = dict[int, float]
Sample = dict[str, float]  # as in agentd.metrics.window, which imports this module


class RunqMaps(Protocol):
    """What is needed of the eBPF source (agentd.tracking.ebpf.EbpfSource)."""

    runq: bool

    def enable_runq(self) -> None: ...

    def disable_runq(self) -> None: ...

    def table(self, name: str) -> Any: ...


def bucket_bounds(slot: int) -> tuple[float, float]:
    """[low, high) in nanoseconds of a histogram slot (see runq_slot_of in tracker.c)."""
    if slot < 1 << SUB_BITS:
        return float(slot), float(slot + 1)
    log2, sub = slot >> SUB_BITS, slot & ((1 << SUB_BITS) - 1)
    unit = 1 << (log2 - SUB_BITS)
    return float(((1 << SUB_BITS) + sub) * unit), float(((1 << SUB_BITS) + sub + 1) * unit)


def quantile(hist: Histogram, q: float) -> float:
    """The q-quantile in nanoseconds, linear inside its bucket; 0 for an empty one."""
    total = sum(hist.values())
    if total <= 0:
        return 0.0
    rank = q * total
    seen = 0.0
    for slot in sorted(hist):
        count = hist[slot]
        if count <= 0:
            continue
        if seen + count >= rank:
            low, high = bucket_bounds(slot)
            return low + (high - low) * max(0.0, rank - seen) / count
        seen += count
    return bucket_bounds(max(hist))[1]


def histogram_of(sample: Sample) -> Histogram:
    n = len(BUCKET_PREFIX)
    return {int(k[n:]): v for k, v in sample.items() if k.startswith(BUCKET_PREFIX)}


def between(first: Sample | None, last: Sample) -> Histogram:
    """The histogram of what happened between two cumulative samples (first None: since
    the counting began). A bucket missing from `first` was still empty then."""
    end = histogram_of(last)
    if first is None:
        return end
    start = histogram_of(first)
    return {slot: n - start.get(slot, 0.0) for slot, n in end.items() if n > start.get(slot, 0.0)}


def summary(first: Sample | None, last: Sample, seconds: float) -> dict[str, float]:
    """p50/p99/mean in microseconds and waits per second of a span of samples."""
    hist = between(first, last)
    waits = last.get("rql_count", 0.0) - (first or {}).get("rql_count", 0.0)
    delay = last.get("rql_sum_ns", 0.0) - (first or {}).get("rql_sum_ns", 0.0)
    return {
        "runq_p50_us": quantile(hist, 0.5) / 1e3,
        "runq_p99_us": quantile(hist, 0.99) / 1e3,
        "runq_mean_us": delay / waits / 1e3 if waits > 0 else 0.0,
        "runq_waits_per_s": waits / seconds if seconds > 0 else 0.0,
    }


def _as_sample(count: float, sum_ns: float, hist: Histogram) -> Sample:
    out: Sample = {"rql_count": count, "rql_sum_ns": sum_ns}
    out.update({f"{BUCKET_PREFIX}{slot}": n for slot, n in hist.items()})
    return out


def _entries(table: Any) -> list[tuple[Any, Any]]:
    """A map's entries in batches of system calls (BPF_MAP_LOOKUP_BATCH, 5.6+): per
    entry (get-next-key, then lookup) 25 entries took 0.8 ms against 0.28 ms, and 100
    tool calls have ~2,000. Per entry where the kernel has no batch lookups."""
    try:
        return list(table.items_lookup_batch())
    except Exception:
        return list(table.items())


def _scalar(value: Any) -> Any:
    """A scalar key or value: batch lookups give ints, per-entry ones ctypes wrappers."""
    return getattr(value, "value", value)


class RunqReader:
    """Reads the kernel's maps (at most once per `max_age`), keeps the node's cumulative
    histogram across tool calls' ends and deletes what nobody reads any more."""

    def __init__(self, maps: RunqMaps, clock: Callable[[], float] = time.monotonic) -> None:
        self._maps = maps
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at = -1.0
        self._per_key: dict[int, tuple[float, float, Histogram]] = {}
        self._last_seen: dict[int, tuple[float, float, Histogram]] = {}
        self._used_at: dict[int, float] = {}
        self._node_hist: Histogram = {}
        self._node_count = 0.0
        self._node_sum = 0.0
        self._node_prev: tuple[float, Histogram] | None = None

    def start(self) -> None:
        self._maps.enable_runq()

    def close(self) -> None:
        self._maps.disable_runq()

    def refresh(self, max_age: float = 0.0) -> None:
        with self._lock:
            now = self._clock()
            if self._read_at >= 0 and now - self._read_at < max_age:
                return
            self._read_at = now
            per_key = self._read_maps()
            self._account_node(per_key)
            self._per_key = per_key
            self._drop_idle(now)

    def _read_maps(self) -> dict[int, tuple[float, float, Histogram]]:
        hists: dict[int, Histogram] = {}
        for k, v in _entries(self._maps.table("runq_hist")):
            hists.setdefault(int(k.key), {})[int(k.slot)] = float(_scalar(v))
        out: dict[int, tuple[float, float, Histogram]] = {}
        for k, v in _entries(self._maps.table("runq_totals")):
            key = int(_scalar(k))
            out[key] = (float(v.count), float(v.sum_ns), hists.get(key, {}))
        return out

    def _account_node(self, per_key: dict[int, tuple[float, float, Histogram]]) -> None:
        """Add each key's increase since the last read to the node's totals."""
        added_count = added_sum = 0.0
        for key, (count, sum_ns, hist) in per_key.items():
            prev_count, prev_sum, prev_hist = self._last_seen.get(key, (0.0, 0.0, {}))
            added_count += max(0.0, count - prev_count)
            added_sum += max(0.0, sum_ns - prev_sum)
            for slot, n in hist.items():
                grown = n - prev_hist.get(slot, 0.0)
                if grown > 0:
                    self._node_hist[slot] = self._node_hist.get(slot, 0.0) + grown
            self._last_seen[key] = (count, sum_ns, dict(hist))
        self._node_count += added_count
        self._node_sum += added_sum
        NODE_WAITS.inc(added_count)
        NODE_DELAY.inc(added_sum / 1e9)

    def _drop_idle(self, now: float) -> None:
        for key in list(self._per_key):
            self._used_at.setdefault(key, now)
            if now - self._used_at[key] > IDLE_KEY_SECONDS:
                self._delete_key(key)

    def _delete_key(self, key: int) -> None:
        """Forget a key in the kernel and here (its counts stay in the node's totals)."""
        hist_map = self._maps.table("runq_hist")
        for slot in self._per_key.get(key, (0, 0, {}))[2]:
            k = hist_map.Key()
            k.key, k.slot = key, slot
            hist_map.pop(k, None)
        totals = self._maps.table("runq_totals")
        totals.pop(totals.Key(key), None)
        self._per_key.pop(key, None)
        self._last_seen.pop(key, None)
        self._used_at.pop(key, None)

    def node_sample(self) -> Sample:
        with self._lock:
            hist = dict(self._node_hist)
            sample = _as_sample(self._node_count, self._node_sum, hist)
            if self._node_prev is not None:
                recent = between(_as_sample(0, 0, self._node_prev[1]), sample)
                NODE_P50.set(quantile(recent, 0.5) / 1e9)
                NODE_P99.set(quantile(recent, 0.99) / 1e9)
            self._node_prev = (self._node_count, hist)
        return sample

    def key_sample(self, key: int) -> Sample:
        with self._lock:
            self._used_at[key] = self._clock()
            count, sum_ns, hist = self._per_key.get(key, (0.0, 0.0, {}))
            return _as_sample(count, sum_ns, hist)

    def forget(self, key: int) -> None:
        """The tool call ended: what its processes still do is dropped after a while."""
        with self._lock:
            if key in self._used_at:
                self._used_at[key] = self._clock() - IDLE_KEY_SECONDS + 1.0


class RunqNodeSource:
    """The node level: every tracked tool call's waits, cumulative since the start."""

    name = "runqlat"
    detail = True

    def __init__(self, reader: RunqReader) -> None:
        self._reader = reader

    def sample(self) -> Sample:
        self._reader.refresh()
        return self._reader.node_sample()

    def close(self) -> None:
        self._reader.close()


class RunqGroupSource:
    """The tool call level: its own histogram (keyed in the kernel by its tracking key,
    resolved from the group's path by `key_of_rel`)."""

    name = "runqlat-group"
    detail = True
    #: tool calls only: the session and node levels are the node source's sum
    per_process = True
    #: keyed by the tool call's tracking key, not read from its group: still there
    #: after the group is removed (the collector's last look at an ended tool call)
    outlives_group = True

    def __init__(self, reader: RunqReader, key_of_rel: Callable[[str], int | None]) -> None:
        self._reader = reader
        self._key_of_rel = key_of_rel
        self._keys: dict[str, int] = {}

    def sample(self, rel: str) -> Sample:
        key = self._keys.get(rel) or self._key_of_rel(rel)
        if key is None:
            return {}
        self._keys[rel] = key
        self._reader.refresh(max_age=0.05)
        return self._reader.key_sample(key)

    def forget(self, rel: str) -> None:
        key = self._keys.pop(rel, None)
        if key is not None:
            self._reader.forget(key)
