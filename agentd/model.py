"""Domain types: what a session and a tool call are, independent of gRPC and cgroupfs."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Priority(enum.IntEnum):
    """Priority classes; values match agentd.v1.PriorityClass."""

    INTERACTIVE = 1
    NORMAL = 2
    BATCH = 3


#: cgroup cpu.weight per class (v2 scale, default 100). Interactive work wins
#: the CPU under contention, batch work yields; no class is starved.
CPU_WEIGHT = {Priority.INTERACTIVE: 400, Priority.NORMAL: 100, Priority.BATCH: 25}


@dataclass(frozen=True)
class Resources:
    """Normalized resource amounts; None means not set (inherit from the parent)."""

    memory_max: int | None = None
    memory_high: int | None = None
    memory_low: int | None = None
    cpu: float | None = None  # cores
    pids_max: int | None = None

    def as_dict(self) -> dict[str, int | float | None]:
        return {
            "memory_max": self.memory_max,
            "memory_high": self.memory_high,
            "memory_low": self.memory_low,
            "cpu": self.cpu,
            "pids_max": self.pids_max,
        }

    @classmethod
    def from_dict(cls, data: dict[str, int | float | None]) -> Resources:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Intent:
    resources: Resources = field(default_factory=Resources)
    expected_duration_seconds: float | None = None
    priority: Priority | None = None
    label: str = ""


@dataclass(frozen=True)
class ExitStatus:
    known: bool = False
    exit_code: int = 0
    signal: int = 0

    @property
    def shell_code(self) -> int:
        """The code a shell would report: 128+signal when killed."""
        return 128 + self.signal if self.signal else self.exit_code


@dataclass(frozen=True)
class Usage:
    wall_seconds: float = 0.0
    cpu_user_seconds: float = 0.0
    cpu_system_seconds: float = 0.0
    peak_memory_bytes: int = 0
    memory_bytes: int = 0
    oom_kills: int = 0
    cpu_throttled_seconds: float = 0.0
    cpu_throttled_periods: int = 0
    processes: int = 0
    processes_running: int = 0


@dataclass(frozen=True)
class Enforcement:
    """Something agentd did to a tool call because it crossed a bound, told to the agent
    in the tool call's result (docs/enforcement.md)."""

    action: str  # "stopped", "resumed", "killed", "oom_killed", "reported"
    limit: str  # "memory", "session_memory", "fork_rate", "processes", "pids_max", "oom"
    limit_value: int  # the bound, in `unit`
    value: int  # how far it went, in `unit`
    unit: str  # "bytes", "forks/s", "processes" or "forks refused"
    pid: int = 0  # the process that crossed (or the OOM victim)
    comm: str = ""
    argv: tuple[str, ...] = ()
    suggestion: str = ""  # what the agent can do about it
    time: float = 0.0


@dataclass
class Session:
    id: str
    owner_uid: int
    budget: Resources
    priority: Priority
    created_at: float
    closed_at: float | None = None
    tool_calls_total: int = 0

    @property
    def open(self) -> bool:
        return self.closed_at is None

    @property
    def cgroup_rel(self) -> str:
        return f"sessions/{self.id}"


@dataclass
class ToolCall:
    id: str
    session_id: str
    owner_uid: int
    intent: Intent
    limits: Resources
    started_at: float
    launcher_pid: int
    ended_at: float | None = None
    exit: ExitStatus = field(default_factory=ExitStatus)
    usage: Usage = field(default_factory=Usage)
    leftover_processes_killed: int = 0
    enforcements: list[Enforcement] = field(default_factory=list)
    # Begun ahead (docs/placement.md): placed, its launcher waiting for a command.
    waiting: bool = False

    @property
    def running(self) -> bool:
        return self.ended_at is None

    @property
    def cgroup_rel(self) -> str:
        return f"sessions/{self.session_id}/{self.id}"

    @property
    def oom_killed(self) -> bool:
        return self.usage.oom_kills > 0
