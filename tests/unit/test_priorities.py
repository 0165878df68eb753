"""Priority classes -> cgroup settings, the [priorities] / [pressure] tables, PSI parsing
and the monitor's reading of its signals (a fake backend and fake PSI files)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agentd import config
from agentd.cgroups.base import GroupLimits, GroupUsage
from agentd.config import ConfigError, add_arguments, load_config
from agentd.enforcement.pressure import PressureMonitor, parse_psi_some_avg10
from agentd.enforcement.priorities import PriorityTable
from agentd.events import Event, EventBus
from agentd.model import Priority, Resources

MiB = 1 << 20
BUDGET = Resources(memory_max=400 * MiB, cpu=1.0, pids_max=100)


def load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "agentd.toml"
    path.write_text(text)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load_config(parser.parse_args(["--config", str(path)]), environ={})


def test_default_table_matches_the_config_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    assert PriorityTable.from_config(cfg.priorities) == PriorityTable.default()
    table = PriorityTable.default()
    weights = [table.cpu_weight(p) for p in (Priority.INTERACTIVE, Priority.NORMAL, Priority.BATCH)]
    assert weights == [400, 100, 25]
    assert not table.throttleable(Priority.INTERACTIVE)
    assert table.throttleable(Priority.BATCH)


def test_session_limits_protect_memory_on_v2_only() -> None:
    table = PriorityTable.default()
    v2 = table.session_limits(BUDGET, Priority.INTERACTIVE, "v2")
    assert v2 == GroupLimits(
        memory_max=400 * MiB, memory_low=200 * MiB, cpu_max_cores=1.0, cpu_weight=400, pids_max=100
    )
    assert table.session_limits(BUDGET, Priority.BATCH, "v2").memory_low is None  # protection 0
    # v1 has no memory.low: nothing is invented for it (no soft limit at creation).
    v1 = table.session_limits(BUDGET, Priority.INTERACTIVE, "v1")
    assert v1.memory_low is None and v1.memory_high is None
    # An explicit memory_low of the caller wins.
    own = table.session_limits(
        Resources(memory_max=400 * MiB, memory_low=10 * MiB), Priority.INTERACTIVE, "v2"
    )
    assert own.memory_low == 10 * MiB


def test_throttle_limits_per_class(tmp_path: Path) -> None:
    table = PriorityTable.default()
    assert table.throttle_limits(BUDGET, Priority.INTERACTIVE) is None
    assert table.throttle_limits(BUDGET, Priority.BATCH) == GroupLimits(
        memory_high=200 * MiB, cpu_max_cores=0.1
    )
    assert table.throttle_limits(BUDGET, Priority.NORMAL) == GroupLimits(
        memory_high=300 * MiB, cpu_max_cores=0.5
    )
    cfg = load(
        tmp_path,
        '[priorities]\nbatch_cpu_weight = 10\nbatch_throttle_cpu = "50m"\n'
        "batch_throttle_memory_high = 0.25\n",
    )
    table = PriorityTable.from_config(cfg.priorities)
    assert table.cpu_weight(Priority.BATCH) == 10
    assert table.throttle_limits(BUDGET, Priority.BATCH) == GroupLimits(
        memory_high=100 * MiB, cpu_max_cores=0.05
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[priorities]\nbatch_cpu_weight = 0\n", "between 1 and 10000"),
        ("[priorities]\nnormal_memory_protection = 1.5\n", "between 0 and 1"),
        ('[priorities]\nbatch_throttle_cpu = "0"\n', "positive number of cores"),
        ("[pressure]\nmemory_psi_enter = 120\n", "between 0 and 100"),
        ("[pressure]\nusage_enter = 0.5\nusage_exit = 0.6\n", "hysteresis"),
        ("[pressure]\ninterval_seconds = 0\n", "must be > 0"),
    ],
)
def test_bad_values_are_refused_precisely(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, text)


def test_pressure_table_loads(tmp_path: Path) -> None:
    cfg = load(tmp_path, "[pressure]\nusage_enter = 0.6\nusage_exit = 0.4\ndwell_seconds = 2\n")
    assert cfg.pressure is not None
    assert (cfg.pressure.usage_enter, cfg.pressure.usage_exit) == (0.6, 0.4)
    assert cfg.pressure.dwell_seconds == 2.0 and cfg.pressure.enabled


def test_parse_psi() -> None:
    text = (
        "some avg10=12.34 avg60=1.00 avg300=0.00 total=118389\n"
        "full avg10=3.00 avg60=0.00 avg300=0.00 total=59526\n"
    )
    assert parse_psi_some_avg10(text) == 12.34
    assert parse_psi_some_avg10("full avg10=3.00\n") is None


class FakeBackend:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.root = root
        self.current = 0
        self.ooms = 0

    def usage(self, rel: str) -> GroupUsage:
        assert rel == "sessions"
        return GroupUsage(memory_current=self.current, oom_kills=self.ooms)

    def path_of(self, rel: str) -> str:
        return str(self.root / rel)


def test_monitor_reads_every_signal(tmp_path: Path) -> None:
    (tmp_path / "sessions").mkdir()
    (tmp_path / "mem").write_text("some avg10=7.50 avg60=0 avg300=0 total=1\n")
    (tmp_path / "cpu").write_text("some avg10=40.00 avg60=0 avg300=0 total=1\n")
    (tmp_path / "sessions/memory.pressure").write_text("some avg10=2.00 avg60=0 avg300=0 total=1\n")
    (tmp_path / "sessions/memory.events").write_text("low 0\nhigh 5\nmax 3\noom 0\noom_kill 0\n")
    backend = FakeBackend(tmp_path, "v2")
    backend.current = 300 * MiB
    bus = EventBus()
    monitor = PressureMonitor(
        backend,  # type: ignore[arg-type]
        allocatable_memory=600 * MiB,
        bus=bus,
        guard_window_seconds=10,
        node_memory_psi=str(tmp_path / "mem"),
        node_cpu_psi=str(tmp_path / "cpu"),
    )
    first = monitor.sample(100.0)
    assert (first.memory_psi, first.cpu_psi, first.group_memory_psi) == (7.5, 40.0, 2.0)
    assert first.usage_fraction == 0.5
    assert first.limit_events == 0  # the first sample only sets the baseline
    (tmp_path / "sessions/memory.events").write_text("low 0\nhigh 9\nmax 5\noom 1\noom_kill 1\n")
    backend.ooms = 1  # oom_kill comes through GroupUsage, "max" from memory.events
    bus.publish(Event("s", "tc", 0, "guard_action", {"action": "stop"}))
    bus.publish(Event("s", "tc", 0, "throttled", {}))  # not a guard action
    second = monitor.sample(101.0)
    assert second.limit_events == 3  # max +2, oom_kill +1
    assert second.guard_actions == 1
    assert monitor.sample(112.0).guard_actions == 0  # out of the window
    monitor.close()
    assert bus.watchers == 0


def test_monitor_on_v1_has_no_group_psi(tmp_path: Path) -> None:
    backend = FakeBackend(tmp_path, "v1")
    backend.current = 60 * MiB
    monitor = PressureMonitor(backend, 600 * MiB, None, node_memory_psi=str(tmp_path / "none"))  # type: ignore[arg-type]
    sample = monitor.sample(0)
    assert sample.group_memory_psi is None and sample.memory_psi is None
    assert sample.usage_fraction == 0.1
    backend.ooms = 2
    assert monitor.sample(1).limit_events == 2
