"""Prometheus counters of the guards (default registry, served by the observability work)."""

from __future__ import annotations

from prometheus_client import Counter

GUARD_ACTIONS = Counter(
    "agentd_guard_actions_total",
    "Actions of the in-kernel guards and the daemon's decisions, by kind",
    ["kind"],
)
OOM_KILLS_ATTRIBUTED = Counter(
    "agentd_guard_oom_kills_attributed_total",
    "OOM kills the kernel reported for a process of a tool call (oom:mark_victim)",
)
