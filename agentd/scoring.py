"""Placement scores: does a candidate fit on this node now, how much room is left
after it, and how good a place this is (0..100).

Memory and pids are incompressible: a candidate fits only within what is not yet
promised, i.e. allocatable minus the budgets of open sessions minus live
reservations. CPU is compressible (a budget is a cpu.max ceiling, and the default
session budget is the whole node), so summing budgets would call a node full as
soon as one default session is open: CPU room is measured instead, the cores not
used recently minus those reserved. The score favours room left after placing the
candidate, is lowered by the node's recent stall time (PSI) and divided by the
predicted slowdown when a predictor answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agentd.model import Intent, Resources

#: Weights of memory and CPU room in the score (memory first: running out of it
#: kills, running out of CPU slows).
MEMORY_WEIGHT = 0.6
CPU_WEIGHT = 0.4


@dataclass(frozen=True)
class Demand:
    memory: int = 0
    cpu: float = 0.0
    pids: int = 0

    @classmethod
    def of(cls, intent: Intent, session_budget: Resources | None) -> Demand:
        r = session_budget if session_budget is not None else intent.resources
        return cls(
            memory=r.memory_max or r.memory_high or 0, cpu=r.cpu or 0.0, pids=r.pids_max or 0
        )

    def as_resources(self) -> Resources:
        return Resources(
            memory_max=self.memory or None, cpu=self.cpu or None, pids_max=self.pids or None
        )


def total(resources: list[Resources]) -> Demand:
    return Demand(
        memory=sum(r.memory_max or 0 for r in resources),
        cpu=sum(r.cpu or 0.0 for r in resources),
        pids=sum(r.pids_max or 0 for r in resources),
    )


@dataclass(frozen=True)
class Capacity:
    memory: int
    cpus: float
    pids: int


@dataclass(frozen=True)
class Room:
    """What is left before the candidate; may be negative when overcommitted."""

    memory: int
    cpu: float
    pids: int

    @classmethod
    def of(cls, capacity: Capacity, allocated: Demand, reserved: Demand, cpu_used: float) -> Room:
        return cls(
            memory=capacity.memory - allocated.memory - reserved.memory,
            cpu=capacity.cpus - cpu_used - reserved.cpu,
            pids=capacity.pids - allocated.pids - reserved.pids,
        )


@dataclass(frozen=True)
class Prediction:
    slowdown: float  # expected duration / solo duration
    low: float
    high: float
    model: str


#: Given a candidate's intent and session budget (None for a tool call), the
#: predicted slowdown on this node now, or None when it cannot say.
Predictor = Callable[[Intent, Resources | None], Prediction | None]


@dataclass(frozen=True)
class Score:
    feasible: bool
    reason: str
    memory_headroom: int  # bytes left after placing it (0 when it does not fit)
    cpu_headroom: float
    score: float
    prediction: Prediction | None = None


def infeasibility(demand: Demand, room: Room) -> str:
    """Why `demand` does not fit in `room`, or "" when it does."""
    if demand.memory > room.memory:
        return f"memory: needs {demand.memory} bytes, {max(room.memory, 0)} bytes unallocated"
    if demand.cpu > room.cpu:
        return f"cpu: needs {demand.cpu:g} cores, {max(room.cpu, 0.0):.2f} cores idle"
    if demand.pids > room.pids:
        return f"pids: needs {demand.pids}, {max(room.pids, 0)} unallocated"
    return ""


def score(
    demand: Demand,
    room: Room,
    capacity: Capacity,
    stall_percent: float,
    prediction: Prediction | None,
) -> Score:
    """`stall_percent`: the node's recent PSI "some" share (0..100) for CPU or memory,
    whichever is worse."""
    reason = infeasibility(demand, room)
    if reason:
        return Score(False, reason, 0, 0.0, 0.0, prediction)
    memory_left = room.memory - demand.memory
    cpu_left = room.cpu - demand.cpu
    memory_share = memory_left / capacity.memory if capacity.memory else 0.0
    cpu_share = cpu_left / capacity.cpus if capacity.cpus else 0.0
    value = 100.0 * (MEMORY_WEIGHT * memory_share + CPU_WEIGHT * cpu_share)
    value *= 1.0 - min(max(stall_percent, 0.0), 100.0) / 100.0
    if prediction is not None and prediction.slowdown > 1.0:
        value /= prediction.slowdown
    return Score(True, "", memory_left, cpu_left, min(max(value, 0.0), 100.0), prediction)
