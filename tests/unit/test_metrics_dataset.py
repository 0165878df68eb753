"""The dataset store, command classes, solo baselines and exports."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from agentd.metrics.dataset import (
    PAIRED_BASELINE_TAG,
    Dataset,
    Record,
    SoloRule,
    baseline_seconds,
    command_class,
    export_csv,
    export_jsonl,
    load_jsonl,
    solo_baselines,
)


def record(
    i: int, cls: str = "pytest", duration: float = 2.0, neighbours: int = 0, other: float = 0.1
) -> Record:
    return Record(
        tool_call_id=f"tc-{i}",
        session_id="s1",
        label=cls,
        command_class=cls,
        intent={"memory_max": 1 << 30, "cpu": None},
        started_at=1000.0 + i,
        ended_at=1000.0 + i + duration,
        duration_seconds=duration,
        exit_code=0,
        cpu_seconds=duration * 0.9,
        peak_memory_bytes=100 << 20,
        neighbours_at_start=neighbours,
        neighbours_max=neighbours,
        other_cpu_cores=other,
        window_before={"cpu_busy_cores": 0.5, "psi_cpu_some": 0.1},
        window_run={"cpu_busy_cores": 1.0},
        group_run={"cpu_cores": 0.9},
    )


@pytest.mark.parametrize(
    ("label", "cls"),
    [
        ("python3 -m pytest -x tests", "pytest"),
        ("/usr/bin/gcc -O2 -c x.c", "gcc"),
        ("unit-tests", "unit-tests"),
        ("", "unlabelled"),
        ("python3 script.py", "python3"),
    ],
)
def test_command_class(label: str, cls: str) -> None:
    assert command_class(label) == cls


def test_solo_baseline_is_the_median_of_uncontended_successful_runs() -> None:
    records = [
        record(1, duration=2.0),
        record(2, duration=3.0),
        record(3, duration=10.0),
        record(4, duration=50.0, neighbours=1),  # a neighbour ran: not solo
        record(5, duration=40.0, other=1.5),  # the node was busy: not solo
        record(6, cls="gcc", duration=1.0),
    ]
    failed = record(7, duration=0.1)
    failed.exit_code = 1
    base = solo_baselines([*records, failed], SoloRule(max_other_cores=0.5))
    assert base["pytest"].duration_seconds == 3.0 and base["pytest"].runs == 3
    assert base["pytest"].cpu_per_second == pytest.approx(0.9)
    assert base["gcc"].runs == 1
    # a looser rule admits the busy-node run
    assert solo_baselines(records, SoloRule(max_other_cores=2.0))["pytest"].runs == 4


def test_harness_tags_decide_solo_whatever_the_node_load() -> None:
    busy_solo = record(1, duration=2.0, other=1.8)
    busy_solo.tags = {"antagonist": "solo"}
    contended = record(2, duration=5.0, other=0.1)
    contended.tags = {"antagonist": "cpu-1"}
    base = solo_baselines([busy_solo, contended], SoloRule(max_other_cores=0.5))
    assert base["pytest"].runs == 1 and base["pytest"].duration_seconds == 2.0


def test_class_profile_medians_cpu_demand_faults_and_tasks() -> None:
    runs = [record(i) for i in range(3)]
    for r, (cores, runq, faults, tasks) in zip(
        runs, [(0.5, 0.4, 100.0, 1.0), (0.6, 0.3, 300.0, 3.0), (0.9, 0.1, 200.0, 2.0)], strict=True
    ):
        r.group_run = {
            "cpu_cores": cores,
            "runq_delay_frac": runq,
            "pgfault_per_s": faults,
            "max_nr_tasks": tasks,
        }
    base = solo_baselines(runs, SoloRule())["pytest"]
    assert base.cpu_demand == pytest.approx(0.9)  # on CPU + waiting for it
    assert (base.pgfault_per_s, base.max_tasks) == (200.0, 2.0)


def test_paired_baseline_wins_over_the_class_median() -> None:
    solo = [record(1, duration=2.0), record(2, duration=4.0)]
    base = solo_baselines(solo, SoloRule())
    contended = record(3, duration=6.0, neighbours=1)
    assert baseline_seconds(contended, base) == 3.0
    contended.tags[PAIRED_BASELINE_TAG] = "2.5"
    assert baseline_seconds(contended, base) == 2.5
    assert baseline_seconds(record(4, cls="unknown"), base) is None


def test_dataset_stores_tags_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "state" / "dataset.sqlite"
    ds = Dataset(path)
    ds.add(record(1))
    ds.add(record(2, cls="gcc"))
    assert ds.tag("tc-1", {"workload": "pytest-suite"})
    assert ds.tag("tc-1", {"antagonist": "cpu-1"})
    assert not ds.tag("tc-missing", {"x": "y"})
    ds.close()
    again = Dataset(path)
    got = again.records()
    assert len(again) == 2
    expected = record(1)
    expected.tags = {"workload": "pytest-suite", "antagonist": "cpu-1"}
    assert got[0] == expected
    assert got[1].command_class == "gcc"
    again.close()


def test_exports_round_trip(tmp_path: Path) -> None:
    records = [record(1), record(2, cls="gcc")]
    out = io.StringIO()
    assert export_jsonl(records, out) == 2
    assert load_jsonl(io.StringIO(out.getvalue())) == records
    out = io.StringIO()
    assert export_csv(records, out) == 2
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert rows[1]["command_class"] == "gcc"
    assert float(rows[0]["window_before.psi_cpu_some"]) == 0.1


def test_export_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agentd.metrics.export import main

    ds = Dataset(tmp_path / "dataset.sqlite")
    ds.add(record(1))
    ds.close()
    out = tmp_path / "out.csv"
    assert (
        main(["--dataset", str(tmp_path / "dataset.sqlite"), "--format", "csv", "--out", str(out)])
        == 0
    )
    assert out.read_text().count("\n") == 2
    assert main(["--dataset", str(tmp_path / "dataset.sqlite")]) == 0
    assert load_jsonl(io.StringIO(capsys.readouterr().out)) == [record(1)]
    assert main(["--dataset", str(tmp_path / "missing.sqlite")]) == 1
    assert "no dataset at" in capsys.readouterr().err
