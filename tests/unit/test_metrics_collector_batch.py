"""The collector handles the tool calls that ended in one period as a batch: one node
sample at their end and one dataset transaction, the same records as one by one."""

from __future__ import annotations

import time
from pathlib import Path

from agentd.events import Event, EventBus
from agentd.metrics.collector import Collector, CollectorSettings
from agentd.metrics.dataset import Dataset
from agentd.metrics.window import Sample
from agentd.model import Intent, Resources, ToolCall, Usage


class CountingNode:
    name = "node"
    detail = False

    def __init__(self) -> None:
        self.samples = 0

    def sample(self) -> Sample:
        self.samples += 1
        return {"cpu_total_jiffies": 100.0 * self.samples, "cpu_busy_jiffies": 50.0 * self.samples}


class FakeGroups:
    name = "groups"
    detail = False
    per_process = False

    def sample(self, rel: str) -> Sample:
        return {"cpu_usage_us": 1000.0, "nr_tasks": 1.0}

    def forget(self, rel: str) -> None:
        pass


def tool_call(i: int) -> ToolCall:
    now = time.time()
    return ToolCall(
        id=f"tc-{i:012x}",
        session_id="s1",
        owner_uid=0,
        intent=Intent(resources=Resources(), label="true"),
        limits=Resources(),
        started_at=now,
        launcher_pid=0,
        ended_at=now + 0.01,
        usage=Usage(wall_seconds=0.01),
    )


def test_ends_of_one_period_share_a_node_sample_and_a_transaction(tmp_path: Path) -> None:
    bus = EventBus()
    node = CountingNode()
    dataset = Dataset(tmp_path / "dataset.sqlite")
    collector = Collector([node], [FakeGroups()], CollectorSettings(), dataset, bus)
    for _ in range(3):
        collector.tick()
    calls = [tool_call(i) for i in range(5)]
    for t in calls:
        bus.publish(Event(t.session_id, t.id, 0, "tool_call_begun", t))
    for t in calls:
        bus.publish(Event(t.session_id, t.id, 0, "tool_call_ended", t))
    before = node.samples
    collector._drain_events()
    assert node.samples - before == 1  # one node sample for the five ends
    assert sorted(r.tool_call_id for r in dataset.records()) == [t.id for t in calls]
    assert collector.tracked() == []
    # Tool calls that began in the same period saw the same node window, each with
    # the number of tool calls tracked when it began.
    records = sorted(dataset.records(), key=lambda r: r.tool_call_id)
    assert {r.window_before["cpu_busy_cores"] for r in records} == {
        records[0].window_before["cpu_busy_cores"]
    }
    assert [r.window_before["agentd_tool_calls"] for r in records] == [0.0, 1.0, 2.0, 3.0, 4.0]
    dataset.close()


def test_dataset_add_many_is_one_transaction_of_all_records(tmp_path: Path) -> None:
    bus = EventBus()
    dataset = Dataset(tmp_path / "dataset.sqlite")
    collector = Collector([CountingNode()], [FakeGroups()], CollectorSettings(), dataset, bus)
    collector.tick()
    calls = [tool_call(i) for i in range(3)]
    for t in calls:
        collector.begin(t)
    records = collector.end_many(calls)
    assert [r.tool_call_id for r in records if r is not None] == [t.id for t in calls]
    assert len(dataset) == 3
    assert collector.end_many([tool_call(99)]) == [None]  # never tracked: no record
    assert len(dataset) == 3
    dataset.close()


def test_window_dict_is_as_dict_for_every_field() -> None:
    """The collector's fast copy of a window records exactly what as_dict() would."""
    import dataclasses

    from agentd.metrics.collector import window_dict
    from agentd.metrics.window import NodeWindow

    values = {f.name: float(i) + 0.5 for i, f in enumerate(dataclasses.fields(NodeWindow))}
    window = NodeWindow(**values)
    assert window_dict(window) == window.as_dict() == values
    assert window_dict(NodeWindow()) == NodeWindow().as_dict()


class GroupFiles:
    """A source of the group's own files: the group is gone once the tool call ended."""

    detail = False
    per_process = False

    def __init__(self, name: str, removed: set[str]) -> None:
        self.name = name
        self.removed = removed
        self.reads: list[str] = []

    def sample(self, rel: str) -> Sample:
        self.reads.append(rel)
        if rel in self.removed:
            raise FileNotFoundError(2, "No such file or directory", rel)
        return {"cpu_usage_us": 1000.0}

    def forget(self, rel: str) -> None:
        pass


class KeyedHistogram:
    """Like the eBPF run-queue source: keyed by the tool call, outlives its group."""

    name = "keyed"
    detail = True
    per_process = True
    outlives_group = True

    def sample(self, rel: str) -> Sample:
        return {"rql_count": 4.0, "rql_sum_ns": 4e6, "rql_b60": 4.0}

    def forget(self, rel: str) -> None:
        pass


def test_the_last_look_at_a_removed_group_reads_only_what_outlives_it(tmp_path: Path) -> None:
    from agentd.metrics.collector import SOURCE_ERRORS

    removed: set[str] = set()
    first, second = GroupFiles("files-a", removed), GroupFiles("files-b", removed)
    dataset = Dataset(tmp_path / "dataset.sqlite")
    collector = Collector(
        [CountingNode()], [first, second, KeyedHistogram()], CollectorSettings(), dataset
    )
    collector.tick()
    gone, there = tool_call(1), tool_call(2)
    for t in (gone, there):
        collector.begin(t)
    removed.add(gone.cgroup_rel)
    errors = [SOURCE_ERRORS.labels(s)._value.get() for s in ("files-a", "files-b", "keyed")]
    first.reads.clear()
    second.reads.clear()
    records = {r.tool_call_id: r for r in collector.end_many([gone, there]) if r is not None}
    # The first source found the group gone: the second was not tried for it, and a
    # removed group is no read error. The keyed histogram still made the record.
    calls = (gone.cgroup_rel, there.cgroup_rel)  # not the sessions group's sample
    assert [rel for rel in first.reads if rel in calls] == [gone.cgroup_rel, there.cgroup_rel]
    assert [rel for rel in second.reads if rel in calls] == [there.cgroup_rel]
    assert [SOURCE_ERRORS.labels(s)._value.get() for s in ("files-a", "files-b", "keyed")] == errors
    assert records[gone.id].group_run["samples"] == 1.0
    assert records[gone.id].group_run["runq_waits_per_s"] > 0
    assert records[there.id].group_run["samples"] == 1.0
    dataset.close()
