"""The dataset: one record per finished tool call, in SQLite under the state dir.

A record holds what the predictor learns from: the intent and label, the node window
just before the call began (what a scheduler would have seen when placing it), the
node and agentd-wide windows over its run, its own group's counters, how many
neighbours ran beside it, and its duration. The solo baseline of a command class is
the median duration of its runs without contention, computed when asked (it improves
as records arrive; nothing stored goes stale).
"""

from __future__ import annotations

import csv
import json
import sqlite3
import statistics
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tool_call_records (
    tool_call_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    label TEXT NOT NULL,
    command_class TEXT NOT NULL,
    intent TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL NOT NULL,
    duration_seconds REAL NOT NULL,
    exit_code INTEGER NOT NULL,
    cpu_seconds REAL NOT NULL,
    peak_memory_bytes INTEGER NOT NULL,
    neighbours_at_start INTEGER NOT NULL,
    neighbours_max INTEGER NOT NULL,
    other_cpu_cores REAL NOT NULL,
    window_before TEXT NOT NULL,
    window_run TEXT NOT NULL,
    group_run TEXT NOT NULL,
    tags TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS records_by_class ON tool_call_records (command_class);
"""

_COLUMNS = (
    "tool_call_id",
    "session_id",
    "label",
    "command_class",
    "intent",
    "started_at",
    "ended_at",
    "duration_seconds",
    "exit_code",
    "cpu_seconds",
    "peak_memory_bytes",
    "neighbours_at_start",
    "neighbours_max",
    "other_cpu_cores",
    "window_before",
    "window_run",
    "group_run",
    "tags",
)
_JSON_COLUMNS = ("intent", "window_before", "window_run", "group_run", "tags")

DATASET_FILE = "dataset.sqlite"


def command_class(label: str) -> str:
    """The command class of a label: the program's name, or the module for
    `python -m X` ("python3 -m pytest -x" -> "pytest"); a label without spaces (one
    the agent chose, like "unit-tests") is its own class."""
    words = label.split()
    if not words:
        return "unlabelled"
    program = words[0].rsplit("/", 1)[-1]
    if program.startswith("python") and len(words) >= 3 and words[1] == "-m":
        return words[2]
    return program[:64]


@dataclass
class Record:
    tool_call_id: str
    session_id: str
    label: str
    command_class: str
    intent: dict[str, Any]
    started_at: float
    ended_at: float
    duration_seconds: float
    exit_code: int
    cpu_seconds: float
    peak_memory_bytes: int
    neighbours_at_start: int
    neighbours_max: int
    #: CPU cores used on the node by everything but this tool call, over its run
    other_cpu_cores: float
    window_before: dict[str, float]
    window_run: dict[str, float]
    group_run: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)

    def row(self) -> tuple[Any, ...]:
        return tuple(
            json.dumps(getattr(self, c), sort_keys=True) if c in _JSON_COLUMNS else getattr(self, c)
            for c in _COLUMNS
        )

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Record:
        values = {
            c: json.loads(v) if c in _JSON_COLUMNS else v
            for c, v in zip(_COLUMNS, row, strict=True)
        }
        return cls(**values)

    def flat(self) -> dict[str, Any]:
        """One level deep, for CSV: nested dicts become prefixed columns."""
        out: dict[str, Any] = {}
        for c in _COLUMNS:
            value = getattr(self, c)
            if isinstance(value, dict):
                for k, v in sorted(value.items()):
                    out[f"{c}.{k}"] = v
            else:
                out[c] = value
        return out


@dataclass(frozen=True)
class SoloRule:
    """When a run counts as uncontended: no other agentd tool call beside it, and
    the rest of the node (other processes) used at most `max_other_cores`. A run the
    experiment harness tagged (`antagonist`) is solo exactly when it says so: on a
    shared machine the harness's own solo runs are the reference, whatever else ran."""

    max_other_cores: float = 0.5

    def is_solo(self, record: Record) -> bool:
        if "antagonist" in record.tags:
            return record.tags["antagonist"] == "solo" and record.neighbours_max == 0
        return record.neighbours_max == 0 and record.other_cpu_cores <= self.max_other_cores


#: Tag the harness writes: the solo baseline measured next to this very run.
PAIRED_BASELINE_TAG = "solo_baseline_seconds"


@dataclass(frozen=True)
class Baseline:
    """How a command class runs alone (medians over its solo runs): the duration its
    slowdowns are measured against, and the resource profile the predictor reads."""

    command_class: str
    duration_seconds: float  # median over solo runs
    cpu_per_second: float  # cores the class uses when alone (median)
    peak_memory_bytes: float
    runs: int
    #: cores it wanted: on CPU or waiting for one (CPU-boundness; the rest is I/O,
    #: sleep or waiting on children)
    cpu_demand: float = 0.0
    pgfault_per_s: float = 0.0
    max_tasks: float = 1.0
    #: page cache it charged (written or read files): how much of it is file I/O
    file_bytes: float = 0.0


def baseline_seconds(record: Record, baselines: dict[str, Baseline]) -> float | None:
    """The solo duration a run's slowdown is measured against: the paired one the
    harness measured around it when there is one, else its class's solo median."""
    paired = record.tags.get(PAIRED_BASELINE_TAG)
    if paired is not None:
        return float(paired)
    base = baselines.get(record.command_class)
    return base.duration_seconds if base is not None else None


def solo_baselines(records: list[Record], rule: SoloRule, min_runs: int = 1) -> dict[str, Baseline]:
    """Per command class, the median duration (and profile) of its solo runs."""
    by_class: dict[str, list[Record]] = {}
    for r in records:
        if r.exit_code == 0 and rule.is_solo(r):
            by_class.setdefault(r.command_class, []).append(r)
    out = {}
    for cls, runs in by_class.items():
        if len(runs) < min_runs:
            continue

        def median_of(key: str, default: float, runs: list[Record] = runs) -> float:
            return statistics.median(float(r.group_run.get(key, default)) for r in runs)

        out[cls] = Baseline(
            command_class=cls,
            duration_seconds=statistics.median(r.duration_seconds for r in runs),
            cpu_per_second=statistics.median(
                r.cpu_seconds / r.duration_seconds for r in runs if r.duration_seconds > 0
            ),
            peak_memory_bytes=statistics.median(r.peak_memory_bytes for r in runs),
            runs=len(runs),
            cpu_demand=statistics.median(
                float(r.group_run.get("cpu_cores", 0.0))
                + float(r.group_run.get("runq_delay_frac", 0.0))
                for r in runs
            ),
            pgfault_per_s=median_of("pgfault_per_s", 0.0),
            max_tasks=median_of("max_nr_tasks", 1.0),
            file_bytes=median_of("max_file_bytes", 0.0),
        )
    return out


class Dataset:
    """The SQLite store; safe to use from several threads (one connection, a lock)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        with self._lock:
            self._db.executescript(_SCHEMA)
            self._db.execute("PRAGMA journal_mode=WAL")
            # No fsync per record (~1 ms of I/O each): with WAL a crash of the daemon
            # loses nothing, a power loss at most the last records of a training set.
            self._db.execute("PRAGMA synchronous=NORMAL")

    def add(self, record: Record) -> None:
        self.add_many([record])

    def add_many(self, records: list[Record]) -> None:
        """Store `records` in one transaction."""
        placeholders = ",".join("?" * len(_COLUMNS))
        with self._lock, self._db:
            self._db.executemany(
                f"INSERT OR REPLACE INTO tool_call_records ({','.join(_COLUMNS)}) "
                f"VALUES ({placeholders})",
                [r.row() for r in records],
            )

    def tag(self, tool_call_id: str, tags: dict[str, str]) -> bool:
        """Merge `tags` (e.g. the harness's workload and antagonist) into a record."""
        with self._lock, self._db:
            row = self._db.execute(
                "SELECT tags FROM tool_call_records WHERE tool_call_id = ?", (tool_call_id,)
            ).fetchone()
            if row is None:
                return False
            merged = {**json.loads(row[0]), **tags}
            self._db.execute(
                "UPDATE tool_call_records SET tags = ? WHERE tool_call_id = ?",
                (json.dumps(merged, sort_keys=True), tool_call_id),
            )
        return True

    def records(self) -> list[Record]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {','.join(_COLUMNS)} FROM tool_call_records ORDER BY started_at"
            ).fetchall()
        return [Record.from_row(tuple(r)) for r in rows]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM tool_call_records").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def export_jsonl(records: list[Record], out: IO[str]) -> int:
    for r in records:
        out.write(json.dumps(r.__dict__, sort_keys=True) + "\n")
    return len(records)


def export_csv(records: list[Record], out: IO[str]) -> int:
    rows = [r.flat() for r in records]
    columns = sorted({k for row in rows for k in row})
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return len(rows)


def load_jsonl(lines: Iterator[str] | IO[str]) -> list[Record]:
    return [Record(**json.loads(line)) for line in lines if line.strip()]
