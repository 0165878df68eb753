"""Node-level figures that NodeService answers with, sampled once a second.

GetNodeState and ScorePlacement are called thousands of times a second by
schedulers; reading cgroupfs and /proc/pressure on each call would cost more than
the call itself. The housekeeping loop calls `sample()`; the API reads the last
snapshot. CPU usage is a rate, so it needs two samples anyway.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import structlog

from agentd.cgroups.base import CgroupBackend, CgroupError

log = structlog.get_logger("agentd.api.sampler")

PSI_RESOURCES = ("cpu", "memory", "io")


@dataclass(frozen=True)
class Pressure:
    """/proc/pressure/<resource>: percent of time some (full) tasks stalled."""

    some_avg10: float = 0.0
    some_avg60: float = 0.0
    full_avg10: float = 0.0
    full_avg60: float = 0.0


@dataclass(frozen=True)
class NodeSample:
    memory_bytes: int = 0
    cpu_cores: float = 0.0
    processes: int = 0
    pressure: dict[str, Pressure] = field(default_factory=dict)
    time: float = 0.0


def parse_pressure(text: str) -> Pressure:
    """Parse the two lines of a PSI file ("some avg10=0.00 avg60=..." / "full ...")."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        for pair in rest.split():
            key, _, value = pair.partition("=")
            if key in ("avg10", "avg60"):
                values[f"{kind}_{key}"] = float(value)
    return Pressure(
        some_avg10=values.get("some_avg10", 0.0),
        some_avg60=values.get("some_avg60", 0.0),
        full_avg10=values.get("full_avg10", 0.0),
        full_avg60=values.get("full_avg60", 0.0),
    )


def read_pressure(resource: str, proc: str = "/proc") -> Pressure | None:
    try:
        with open(f"{proc}/pressure/{resource}") as f:
            return parse_pressure(f.read())
    except OSError:
        return None  # kernel without PSI (or psi=0): reported as unset


class NodeSampler:
    def __init__(self, backend: CgroupBackend, group: str = "sessions") -> None:
        self.backend = backend
        self.group = group
        self._lock = threading.Lock()
        self._last_cpu: tuple[float, int] | None = None  # (monotonic time, usec)
        self.latest = NodeSample()

    def fresh(self, max_age_seconds: float = 0.2) -> NodeSample:
        """The latest sample, taken anew if older than `max_age_seconds`: GetNodeState
        answers with what is in use now (a handful of cgroupfs reads), while scoring
        calls keep using the periodic sample."""
        latest = self.latest
        if time.time() - latest.time <= max_age_seconds:
            return latest
        return self.sample()

    def sample(self) -> NodeSample:
        pressure = {r: p for r in PSI_RESOURCES if (p := read_pressure(r)) is not None}
        try:
            usage = self.backend.usage(self.group)
        except CgroupError as e:
            log.warning("sampler.usage_failed", error=str(e))
            self.latest = NodeSample(pressure=pressure, time=time.time())
            return self.latest
        now = time.monotonic()
        cpu_usec = usage.cpu_user_usec + usage.cpu_system_usec
        with self._lock:
            rate = 0.0
            if self._last_cpu is not None and now > self._last_cpu[0]:
                elapsed = now - self._last_cpu[0]
                rate = max(cpu_usec - self._last_cpu[1], 0) / 1e6 / elapsed
            self._last_cpu = (now, cpu_usec)
            self.latest = NodeSample(
                memory_bytes=usage.memory_current,
                cpu_cores=rate,
                processes=usage.pids_current,
                pressure=pressure,
                time=time.time(),
            )
        return self.latest
