"""The guard's worker sleeps while no tool call runs and ticks while one does
(agentd/enforcement/guard.py; the real guard is tested in tests/integration/test_guards.py).

The kernel's maps, the tracker and the backend are stand-ins: what is tested is when
the worker wakes, not what the kernel does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from agentd.enforcement.guard import TICK_SECONDS, Guard, GuardSettings
from agentd.enforcement.maps import GuardLimit
from agentd.events import Event, EventBus
from agentd.model import Intent, Priority, Resources, Session, ToolCall


class FakeMaps:
    """GuardMaps' interface over dicts."""

    def __init__(self) -> None:
        self.limits: dict[int, GuardLimit] = {}
        self.turn = 0

    def set_node_budget(self, priority_class: int, budget: int) -> None: ...
    def set_node_turn_threshold(self, threshold: int) -> None: ...
    def release_node_turn(self, key: int = 0) -> None:
        self.turn = key

    def node_turn(self) -> int:
        return self.turn

    def node_used(self) -> int:
        return 0

    def add_session(self, key: int, budget: int) -> None: ...
    def remove_session(self, key: int) -> None: ...
    def add_tool_call(self, key: int, limit: GuardLimit, processes: int) -> None:
        self.limits[key] = limit

    def remove_tool_call(self, key: int) -> None:
        self.limits.pop(key, None)

    def state(self, key: int) -> Any:
        return None


class FakeTracker:
    def __init__(self) -> None:
        self.keys: dict[str, int] = {}

    def key_of(self, tool_call_id: str) -> int:
        return self.keys.setdefault(tool_call_id, len(self.keys) + 1)


SESSION = Session(
    id="s1", owner_uid=0, budget=Resources(memory_max=1 << 30), priority=Priority.NORMAL,
    created_at=0.0,
)  # fmt: skip


def tool_call(tc_id: str, waiting: bool = False) -> ToolCall:
    return ToolCall(
        id=tc_id, session_id="s1", owner_uid=0, intent=Intent(), limits=Resources(),
        started_at=time.time(), launcher_pid=0, waiting=waiting,
    )  # fmt: skip


@pytest.fixture
def guard() -> Iterator[tuple[Guard, EventBus]]:
    bus = EventBus()
    g = Guard(GuardSettings(node_budget=1 << 30, node_turn=0.2), FakeMaps(), FakeTracker(),  # type: ignore[arg-type]
              None, bus)  # type: ignore[arg-type]  # fmt: skip
    g.start()
    try:
        yield g, bus
    finally:
        g.stop()
        assert g._thread is not None and not g._thread.is_alive()


def ticks_over(g: Guard, seconds: float) -> int:
    before = g.ticks
    time.sleep(seconds)
    return g.ticks - before


def test_worker_does_not_tick_without_tool_calls(guard: tuple[Guard, EventBus]) -> None:
    g, _ = guard
    time.sleep(0.1)
    assert ticks_over(g, 0.6) == 0


def test_worker_ticks_while_a_tool_call_runs_and_sleeps_after_it_ends(
    guard: tuple[Guard, EventBus],
) -> None:
    g, _ = guard
    tc = tool_call("t1")
    g.begin(tc, SESSION, [])
    # The old fixed tick: ~6 in 0.6 s (at least half of them on a busy machine).
    assert ticks_over(g, 0.6) >= 0.6 / TICK_SECONDS / 2
    g.end(tc)
    time.sleep(2 * TICK_SECONDS)  # the tick under way when it ended
    assert ticks_over(g, 0.6) == 0


def test_launcher_placed_ahead_does_not_tick_until_its_command_begins(
    guard: tuple[Guard, EventBus],
) -> None:
    """A waiting launcher allocates nothing: no tick. Its command starting (published as
    tool_call_begun, with no call into the guard) wakes the worker at once."""
    g, bus = guard
    tc = tool_call("t1", waiting=True)
    g.begin(tc, SESSION, [])
    time.sleep(2 * TICK_SECONDS)
    assert ticks_over(g, 0.6) == 0
    tc.waiting = False
    bus.publish(Event("s1", "t1", 0, "tool_call_begun", tc))
    assert ticks_over(g, 0.6) >= 0.6 / TICK_SECONDS / 2


def test_stop_wakes_a_sleeping_worker_at_once(guard: tuple[Guard, EventBus]) -> None:
    g, _ = guard
    time.sleep(0.1)
    started = time.monotonic()
    g.stop()
    assert time.monotonic() - started < 1.0
