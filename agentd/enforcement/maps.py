"""The guard's BPF maps, as bpf/tracker.c (-DGUARD) declares them.

Ownership is split so that neither side overwrites the other's writes: the daemon
writes `guard_limits` and `session_budget` (the kernel only ORs trip bits into
`guard_limits.tripped`), the kernel writes `guard_state` and `session_used` (the daemon
creates them zeroed and deletes them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

# Trip reasons (guard_limit.tripped, guard_event.reason).
G_MEMORY = 1
G_SESSION = 2
G_FORK_RATE = 4
G_PROCESSES = 8
G_PIDS_MAX = 16
G_NODE = 32
G_FORK_MASK = G_FORK_RATE | G_PROCESSES | G_PIDS_MAX
# guard_limit.flags: what the kernel does on crossing besides reporting.
GF_STOP_MEMORY = 1
GF_STOP_FORK = 2
GF_KILL_FORK = 4
#: guard_limit.flags bits 8-9: the tool call's priority class (its node_budget entry).
GF_CLASS_SHIFT = 8
GF_CLASS_MASK = 3 << GF_CLASS_SHIFT


class TableSource(Protocol):
    def table(self, name: str) -> Any: ...


@dataclass(frozen=True)
class GuardLimit:
    memory: int = 0  # bytes of anon + shmem; 0 = unbounded
    session: int = 0  # session key; 0 = none
    fork_rate: int = 0  # forks per second; 0 = unbounded
    fork_burst: int = 0  # forks allowed at once above the rate
    max_processes: int = 0  # 0 = unbounded
    fork_refusals: int = 0  # forks refused by pids.max before it trips; 0 = never
    flags: int = 0


@dataclass(frozen=True)
class GuardState:
    memory: int
    peak: int
    processes: int
    forks: int
    signals: int


class GuardMaps:
    def __init__(self, source: TableSource) -> None:
        self._limits = source.table("guard_limits")
        self._state = source.table("guard_state")
        self._budget = source.table("session_budget")
        self._used = source.table("session_used")
        self._node_used = source.table("node_used")
        self._node_budget = source.table("node_budget")
        self._node_turn = source.table("node_turn")

    def add_tool_call(self, key: int, limit: GuardLimit, processes: int) -> None:
        """State first (the programs need both), counting the processes already there."""
        state = self._state.Leaf()
        state.procs = processes
        self._state[self._state.Key(key)] = state
        self.set_limit(key, limit)

    def set_limit(self, key: int, limit: GuardLimit) -> None:
        """Write the limits and clear the trip bits: the daemon has decided."""
        leaf = self._limits.Leaf()
        leaf.memory = limit.memory
        leaf.session = limit.session
        cost = 1_000_000_000 // limit.fork_rate if limit.fork_rate else 0
        leaf.fork_cost_ns = cost
        leaf.fork_burst_ns = cost * max(limit.fork_burst, 1)
        leaf.max_procs = limit.max_processes
        leaf.refused_max = limit.fork_refusals
        leaf.flags = limit.flags
        leaf.tripped = 0
        self._limits[self._limits.Key(key)] = leaf

    def remove_tool_call(self, key: int) -> None:
        self._limits.pop(self._limits.Key(key), None)
        self._state.pop(self._state.Key(key), None)

    def state(self, key: int) -> GuardState | None:
        try:
            s = self._state[self._state.Key(key)]
        except KeyError:
            return None
        return GuardState(
            memory=int(s.memory),
            peak=int(s.peak),
            processes=int(s.procs),
            forks=int(s.forks),
            signals=int(s.signals),
        )

    def tripped(self, key: int) -> int:
        try:
            return int(self._limits[self._limits.Key(key)].tripped)
        except KeyError:
            return 0

    def add_session(self, key: int, budget: int) -> None:
        self._used[self._used.Key(key)] = self._used.Leaf(0)
        self.set_session_budget(key, budget)

    def set_session_budget(self, key: int, budget: int) -> None:
        self._budget[self._budget.Key(key)] = self._budget.Leaf(budget)

    def session_used(self, key: int) -> int:
        try:
            return int(self._used[self._used.Key(key)].value)
        except KeyError:
            return 0

    def set_node_budget(self, priority_class: int, budget: int) -> None:
        """Tool calls of the class are stopped while the node's sum is over `budget`."""
        self._node_budget[self._node_budget.Key(priority_class)] = self._node_budget.Leaf(budget)

    def set_node_turn_threshold(self, threshold: int) -> None:
        """Above `threshold` of the node's sum, one stoppable tool call at a time grows."""
        self._node_turn[self._node_turn.Key(0)] = self._node_turn.Leaf(threshold)

    def node_turn(self) -> int:
        """The key of the tool call whose turn it is to grow past the threshold; 0: none."""
        return int(self._node_turn[self._node_turn.Key(1)].value)

    def release_node_turn(self, key: int = 0) -> None:
        """Give the turn back (0), or hand it to `key`."""
        self._node_turn[self._node_turn.Key(1)] = self._node_turn.Leaf(key)

    def node_used(self) -> int:
        return int(self._node_used[self._node_used.Key(0)].value)

    def remove_session(self, key: int) -> None:
        self._budget.pop(self._budget.Key(key), None)
        self._used.pop(self._used.Key(key), None)
