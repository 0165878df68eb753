"""Priority classes mapped to cgroup settings: CPU weight, memory protection and what
the pressure policy writes when it throttles a class.

The mapping is configuration ([priorities]); this module turns it into GroupLimits so
that the manager (at session creation) and the pressure policy (under pressure) agree
on one table. Interactive sessions have no throttle entry: the policy never throttles
or freezes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentd.cgroups.base import GroupLimits
from agentd.config import SCHEMA, PrioritiesConfig
from agentd.model import Priority, Resources


@dataclass(frozen=True)
class ClassSettings:
    cpu_weight: int
    #: Fraction of the session's memory budget protected from reclaim (v2 memory.low;
    #: v1 has no protection, only the soft-limit ordering, see session_limits()).
    memory_protection: float
    #: Fraction of the session's memory budget written as memory.high when throttled
    #: (v1: memory.soft_limit_in_bytes); None: the policy never throttles this class.
    throttle_memory_high: float | None
    #: cpu.max (cores) when throttled; None: never throttled.
    throttle_cpu: float | None


@dataclass(frozen=True)
class PriorityTable:
    classes: dict[Priority, ClassSettings]
    #: batch session groups cpu.idle while an interactive session is open (cpu_idle.py)
    batch_cpu_idle: bool = True

    @classmethod
    def default(cls) -> PriorityTable:
        """The table of an empty [priorities] section."""
        defaults = {k: parse(v) for k, (v, parse) in SCHEMA["priorities"].items()}
        return cls.from_config(PrioritiesConfig(**defaults))

    @classmethod
    def from_config(cls, cfg: PrioritiesConfig | None) -> PriorityTable:
        if cfg is None:
            return cls.default()
        return cls(
            {
                Priority.INTERACTIVE: ClassSettings(
                    cfg.interactive_cpu_weight, cfg.interactive_memory_protection, None, None
                ),
                Priority.NORMAL: ClassSettings(
                    cfg.normal_cpu_weight,
                    cfg.normal_memory_protection,
                    cfg.normal_throttle_memory_high,
                    cfg.normal_throttle_cpu,
                ),
                Priority.BATCH: ClassSettings(
                    cfg.batch_cpu_weight,
                    cfg.batch_memory_protection,
                    cfg.batch_throttle_memory_high,
                    cfg.batch_throttle_cpu,
                ),
            },
            batch_cpu_idle=cfg.batch_cpu_idle,
        )

    def cpu_weight(self, priority: Priority) -> int:
        return self.classes[priority].cpu_weight

    def throttleable(self, priority: Priority) -> bool:
        return self.classes[priority].throttle_cpu is not None

    def session_limits(self, budget: Resources, priority: Priority, backend: str) -> GroupLimits:
        """The session group's limits: its budget plus its class's weight and protection.

        v2: memory.low = protection x budget, unless the caller set memory_low itself.
        v1 has no memory.low (the backend drops it): there the only ordering is the soft
        limit a throttle writes (throttle_limits), which makes global reclaim take from
        throttled groups first.
        """
        settings = self.classes[priority]
        memory_low = budget.memory_low
        if backend == "v2" and memory_low is None and budget.memory_max:
            memory_low = int(budget.memory_max * settings.memory_protection) or None
        return GroupLimits(
            memory_max=budget.memory_max,
            memory_high=budget.memory_high,
            memory_low=memory_low,
            cpu_max_cores=budget.cpu,
            cpu_weight=settings.cpu_weight,
            pids_max=budget.pids_max,
        )

    def throttle_limits(self, budget: Resources, priority: Priority) -> GroupLimits | None:
        """What throttling a session of this class writes; None if it is never throttled.

        memory_high = fraction x budget: memory.high on v2 (reclaim and allocation
        stalls above it), memory.soft_limit_in_bytes on v1 (only an ordering for global
        reclaim: on v1 the CPU quota and the freezer are the effective parts).
        """
        settings = self.classes[priority]
        if settings.throttle_cpu is None:
            return None
        memory_high = None
        if budget.memory_max and settings.throttle_memory_high:
            memory_high = int(budget.memory_max * settings.throttle_memory_high)
        return GroupLimits(memory_high=memory_high, cpu_max_cores=settings.throttle_cpu)
