#!/usr/bin/env python3
"""The interference experiment: victim tool calls alone and next to antagonists, all
through agentd, recording the dataset the predictor learns from.

Victims are realistic tool calls (a pytest suite, a C compile, a Python data job, a
git-heavy script, an install from a local wheel cache) and synthetic ones (CPU,
memory bandwidth, fsync'd writes, fork/exec), each about a second alone. Antagonists
are stress-ng tool calls in another session (CPU at three intensities, memory, cache,
fsync'd I/O, fork), started `--warmup` seconds before the victim so that the node
window its record keeps from before its start shows them.

Built for a shared machine (other people's jobs come and go):
- victim and antagonist are pinned to one CPU (`--cpus`, taskset) at a raised
  priority (`--nice`): they meet each other there, and the rest of the node's load
  takes a smaller, steadier share of that CPU. Nobody else's process is moved.
- every contended run sits between two solo runs of the same victim, seconds apart:
  its slowdown is duration / mean(solo before, solo after), against the node as it
  was then (tag `solo_baseline_seconds`); solo runs get the same against their solo
  neighbours, which measures the ground truth's own noise.
- each record keeps the node window before and during it (PSI, run queue, CPU) and
  the load average at its start (tag `loadavg1`).

Per victim (shuffled): a warm-up run, solo, then (antagonist, repetition) cells in a
shuffled order, each `contended, solo`. Starts its own agentd (unique socket, state
dir, cgroup root; removed at the end), then writes the records as JSON lines to
`--out`, and a summary (wall time, load averages, matrix) beside it:

    cd /tmp && /path/to/.venv/bin/python /path/to/bench/interference.py \\
        --out /path/to/tests/data/interference.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from agentd_process import AgentdProcess  # noqa: E402

from agentd.metrics.dataset import (  # noqa: E402
    PAIRED_BASELINE_TAG,
    Dataset,
    Record,
    command_class,
    export_jsonl,
    load_jsonl,
)
from agentd.sdk import Client  # noqa: E402

PY = sys.executable
WHEELS = ("structlog", "attrs", "six", "idna", "packaging")
INSTALLED = ("six", "idna", "packaging")
WHEEL_CACHE = Path("/var/tmp/agentd-bench-wheels")


@dataclass(frozen=True)
class Workload:
    name: str
    argv: list[str]
    memory: str | None = None
    cpu: float | None = None
    cwd: str | None = None


@dataclass(frozen=True)
class Antagonist:
    name: str
    argv: list[str]
    memory: str
    cpu: float | None = None


#: Antagonist kinds and intensities; each runs pinned to the experiment's CPU.
ANTAGONISTS = {
    "cpu-1": Antagonist("cpu-1", ["stress-ng", "--cpu", "1", "--cpu-method", "matrixprod"], "256M"),
    "cpu-2": Antagonist("cpu-2", ["stress-ng", "--cpu", "2", "--cpu-method", "matrixprod"], "256M"),
    # one worker held to a third of a core by its cgroup: the low intensity
    "cpu-q": Antagonist("cpu-q", ["stress-ng", "--cpu", "1"], "256M", cpu=0.33),
    "vm": Antagonist("vm", ["stress-ng", "--vm", "1", "--vm-bytes", "256M", "--vm-keep"], "512M"),
    "cache": Antagonist("cache", ["stress-ng", "--cache", "1"], "256M"),
    "io": Antagonist(
        "io", ["stress-ng", "--hdd", "1", "--hdd-bytes", "128M", "--hdd-opts", "fsync"], "512M"
    ),
    "fork": Antagonist("fork", ["stress-ng", "--fork", "1"], "512M"),
}


# ---- victims ---------------------------------------------------------------------------


def prepare_victims(work: Path) -> list[Workload]:
    """Write the victims' inputs under `work`; each victim runs a second or two alone."""
    tests = work / "suite"
    tests.mkdir()
    for i in range(3):
        body = "\n".join(
            f"def test_{i}_{j}():\n    assert sorted(range({j} * 300, 0, -1))[0] == 1\n"
            f"    assert sum(k * k for k in range(4000)) > 0\n"
            for j in range(1, 20)
        )
        (tests / f"test_mod{i}.py").write_text(body)
    csrc = work / "big.c"
    csrc.write_text(
        "\n".join(
            f"int f{i}(int *a, int n) {{ int s = 0; for (int j = 0; j < n; j++) "
            f"{{ s += a[j] * {i} ^ (s >> 3); "
            f"if (s % {i + 7} == 0) s += f{max(i - 1, 0)}(a, j / 2 + 1); }}"
            f" return s; }}"
            for i in range(1, 120)
        )
        + "\nint f0(int *a, int n) { return n ? a[0] : 0; }\n"
    )
    data = work / "data_job.py"
    data.write_text(
        "import json, random, collections\n"
        "random.seed(1)\n"
        "rows = [{'k': random.randrange(1000), 'v': random.random(), 's': str(i)} "
        "for i in range(80000)]\n"
        "rows.sort(key=lambda r: (r['k'], r['v']))\n"
        "groups = collections.defaultdict(list)\n"
        "for r in rows: groups[r['k']].append(r['v'])\n"
        "out = {k: sum(v) / len(v) for k, v in groups.items()}\n"
        "print(len(json.dumps(rows[:15000])), len(out))\n"
    )
    git = work / "git_job.sh"
    git.write_text(
        'set -e\nd=$(mktemp -d -p "$1")\ncd "$d"\ngit init -q .\n'
        "git config user.email b@x; git config user.name bench\n"
        'for i in $(seq 1 150); do echo "line $i" > f$i.txt; done\n'
        "git add -A; git commit -qm one\n"
        "for i in $(seq 1 150 | shuf -n 75 --random-source=/dev/zero); do\n"
        "  echo more >> f$i.txt\ndone\n"
        "git commit -qam two; git log --stat -n 2 >/dev/null; git diff HEAD~1 --stat >/dev/null\n"
        "git status --porcelain >/dev/null; git repack -q -a -d\n"
        'cd /; rm -rf "$d"\n'
    )
    ensure_wheels()
    pip_target = work / "pip-target"
    return [
        Workload(
            "pytest-suite", [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)], "1G"
        ),
        Workload("cc-compile", ["gcc", "-O2", "-c", str(csrc), "-o", str(work / "big.o")], "1G"),
        Workload("py-data", [PY, str(data)], "2G"),
        Workload("git-ops", ["bash", str(git), str(work)], "512M"),
        Workload(
            "pip-install",
            [
                PY,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--no-deps",
                "--upgrade",
                "--find-links",
                str(WHEEL_CACHE),
                "--target",
                str(pip_target),
                *INSTALLED,
            ],
            "1G",
        ),
        Workload("syn-cpu", [PY, "-c", "s=0\nfor i in range(5_000_000): s += i * i"], "256M", 1.0),
        Workload(
            "syn-mem",
            [PY, "-c", "b = bytearray(128 << 20)\nfor _ in range(4): c = bytes(b); del c"],
            "1G",
        ),
        Workload(
            "syn-io",
            ["dd", "if=/dev/zero", f"of={work / 'io.bin'}", "bs=1M", "count=160", "conv=fsync"],
            "512M",
        ),
        Workload(
            "syn-fork",
            [PY, "-c", "import subprocess\nfor _ in range(250): subprocess.run(['/bin/true'])"],
            "512M",
        ),
    ]


def ensure_wheels() -> None:
    """The local wheel cache the pip-install victim installs from (downloaded once)."""
    if WHEEL_CACHE.is_dir() and len(list(WHEEL_CACHE.glob("*.whl"))) >= len(WHEELS):
        return
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [PY, "-m", "pip", "download", "-q", "--no-deps", "-d", str(WHEEL_CACHE), *WHEELS],
        check=True,
    )


# ---- the matrix ------------------------------------------------------------------------


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def confined(argv: list[str], cpus: str, nice: int) -> list[str]:
    """Pin a command (and everything it forks) to the experiment's CPU at a raised
    priority: victim and antagonist then share that CPU, and the other engineers'
    processes (nice 0, which the harness must not move) get a smaller share of it."""
    return ["nice", "-n", str(nice), "taskset", "-c", cpus, *argv]


@dataclass
class Run:
    tool_call_id: str
    tags: dict[str, str]


def run_matrix(
    client: Client,
    victims: list[Workload],
    antagonists: list[str],
    reps: int,
    warmup: float,
    gap: float,
    seed: int,
    cpus: str,
    nice: int,
) -> list[Run]:
    """Per victim (shuffled): solo, then for every (antagonist, repetition) cell in a
    shuffled order, a contended run followed by another solo. Every contended run
    thus has a solo run of the same victim just before and just after it: its
    slowdown is measured against the node as it was then, not against a median
    taken minutes earlier on a machine whose background load moves."""
    rng = random.Random(seed)
    runs: list[Run] = []
    with (
        client.session("victims", memory="6G", exist_ok=True) as victim_session,
        client.session("antagonists", memory="2G", exist_ok=True) as antagonist_session,
    ):

        def victim(v: Workload, tags: dict[str, str]) -> str:
            time.sleep(gap)
            tags = {
                **tags,
                "workload": v.name,
                "loadavg1": f"{os.getloadavg()[0]:.2f}",
                # the CPUs it shared with the antagonist (the predictor's shared_cpus)
                "cpus": cpus,
            }
            result = victim_session.run(
                confined(v.argv, cpus, nice),
                memory=v.memory,
                cpu=v.cpu,
                label=v.name,
                cwd=v.cwd,
                capture_output=True,
                timeout=300,
            )
            if result.returncode != 0:
                print(f"  {v.name} failed ({result.returncode}): {result.stderr[-300:]!r}")
            runs.append(Run(result.tool_call_id, tags))
            return result.tool_call_id

        order = list(victims)
        rng.shuffle(order)
        for v in order:
            started = time.monotonic()
            cells = [(a, r) for a in antagonists for r in range(reps)]
            rng.shuffle(cells)
            # one untagged run first (kept out of the dataset): caches, .pyc files
            victim_session.run(confined(v.argv, cpus, nice), memory=v.memory, capture_output=True)
            before = victim(v, {"antagonist": "solo", "rep": "0"})
            for i, (name, r) in enumerate(cells):
                a = ANTAGONISTS[name]
                handle = antagonist_session.start(
                    confined([*a.argv, "--timeout", "600"], cpus, nice),
                    memory=a.memory,
                    cpu=a.cpu,
                    label=f"antagonist-{a.name}",
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(warmup)  # the window before the victim shows the antagonist
                contended = victim(v, {"antagonist": name, "rep": str(r)})
                handle.kill()
                handle.wait(timeout=30)
                after = victim(v, {"antagonist": "solo", "rep": str(i + 1)})
                runs[-2].tags.update(solo_before=before, solo_after=after)
                assert runs[-2].tool_call_id == contended
                before = after
            print(
                f"{v.name:13s} {len(cells)} cells {time.monotonic() - started:6.1f} s "
                f"load {load()}",
                flush=True,
            )
    return runs


def relabel(records: list[Record]) -> int:
    """Give every victim record its workload's label. agentd labels a launcher placed
    ahead with the command line the kernel shows when the command starts before the
    SDK's report arrives (under load, 76 of the 387 runs recorded here): the harness knows what
    it ran. Returns how many records it corrected."""
    fixed = 0
    for r in records:
        name = r.tags.get("workload")
        if name and r.label != name:
            r.label, r.command_class = name, command_class(name)
            fixed += 1
    return fixed


def drop_started_at_placement(records: list[Record], gap: float) -> list[Record]:
    """The records whose start is right; the others are dropped.

    The harness sleeps `gap` seconds before every victim, so no victim can start
    within gap / 2 of the previous victim's end. One does when agentd noticed its
    command before the SDK's start report arrived (`Manager._notice_start`) and kept
    the launcher's placement time as its start: the previous victim's end, or the one
    before (the SDK keeps two launchers placed ahead). Such a record's duration counts
    the idle launcher too (on the quiet recording, 61 of 387 were ~4 s too long, and a
    solo run 5x its neighbours poisons four slowdowns), so it is dropped, and the
    paired baselines are computed from the solo runs that remain (a contended run
    left with neither of its solo neighbours is dropped too)."""
    ends = sorted(r.ended_at for r in records)
    kept = []
    for r in records:
        previous = [e for e in ends if e < r.ended_at]
        if previous and r.started_at < previous[-1] + gap / 2:
            continue
        kept.append(r)
    return kept


def paired_baselines(records: list[Record]) -> None:
    """Tag every record with the solo baseline it is measured against: for a contended
    run the mean of the solo runs just before and after it; for a solo run the mean
    of its solo neighbours (so that solo records show the ground truth's own noise)."""
    by_id = {r.tool_call_id: r for r in records}
    solos: dict[str, list[Record]] = {}
    for r in records:
        if r.tags.get("antagonist") == "solo":
            solos.setdefault(r.tags["workload"], []).append(r)
    for r in records:
        if r.tags.get("antagonist") == "solo":
            chain = solos[r.tags["workload"]]
            i = chain.index(r)
            pair = [chain[j] for j in (i - 1, i + 1) if 0 <= j < len(chain)]
        else:
            pair = [
                by_id[i]
                for i in (r.tags.get("solo_before"), r.tags.get("solo_after"))
                if i in by_id
            ]
        pair = [p for p in pair if p.exit_code == 0]
        if pair:
            r.tags[PAIRED_BASELINE_TAG] = f"{sum(p.duration_seconds for p in pair) / len(pair):.6f}"


def reprocess(source: Path, out: Path, gap: float, cpus: str) -> dict[str, Any]:
    """Apply this harness's post-processing (labels, the `cpus` tag, dropping records
    started at placement, paired baselines) to an earlier recording; its summary is
    kept, with what changed added."""
    with open(source) as f:
        records = load_jsonl(f)
    for r in records:
        r.tags.pop(PAIRED_BASELINE_TAG, None)
        r.tags.setdefault("cpus", cpus)
    relabelled = relabel(records)
    kept = drop_started_at_placement(records, gap)
    paired_baselines(kept)
    paired = [r for r in kept if PAIRED_BASELINE_TAG in r.tags]
    with open(out, "w") as f:
        export_jsonl(paired, f)
    summary_path = source.with_suffix(".summary.json")
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.update(
        records=len(paired),
        recorded=len(records),
        relabelled=summary.get("relabelled", 0) + relabelled,
        dropped_started_at_placement=len(records) - len(kept),
        dropped_without_solo_neighbours=len(kept) - len(paired),
        reprocessed_from=str(source),
    )
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON lines output")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument(
        "--gap",
        type=float,
        default=0.8,
        help="idle seconds before each victim (its 1 s window shows the antagonist or not)",
    )
    parser.add_argument("--antagonists", default=",".join(ANTAGONISTS))
    parser.add_argument("--victims", default="", help="comma-separated subset")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--cpus", default=str((os.cpu_count() or 1) - 1), help="the experiment's CPU(s)"
    )
    parser.add_argument("--nice", type=int, default=-10, help="victims' and antagonists' nice")
    parser.add_argument(
        "--reprocess",
        type=Path,
        help="record nothing: post-process this earlier recording into --out",
    )
    args = parser.parse_args(argv)
    if args.reprocess is not None:
        print(json.dumps(reprocess(args.reprocess, args.out, args.gap, args.cpus)))
        return 0
    antagonists = args.antagonists.split(",")
    unknown = [a for a in antagonists if a not in ANTAGONISTS]
    if unknown:
        parser.error(f"unknown antagonists: {unknown}")

    work = Path(tempfile.mkdtemp(prefix="agentd-interference-"))
    daemon = AgentdProcess(config="[predictor]\nwindow_seconds = 1\n")
    began, load_before = time.time(), load()
    try:
        victims = prepare_victims(work)
        if args.victims:
            victims = [v for v in victims if v.name in args.victims.split(",")]
        daemon.start()
        time.sleep(1.5)  # the node ring fills
        with daemon.client() as client:
            runs = run_matrix(
                client,
                victims,
                antagonists,
                args.reps,
                args.warmup,
                args.gap,
                args.seed,
                args.cpus,
                args.nice,
            )
        time.sleep(0.5)  # the collector writes the last record
        dataset = Dataset(Path(daemon.state_dir) / "dataset.sqlite")
        for run in runs:
            if not dataset.tag(run.tool_call_id, run.tags):
                print(f"  no record for {run.tool_call_id} ({run.tags})")
        records: list[Record] = [r for r in dataset.records() if "workload" in r.tags]
        dataset.close()
    finally:
        leftovers = daemon.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    relabelled = relabel(records)
    recorded = len(records)
    started_right = drop_started_at_placement(records, args.gap)
    paired_baselines(started_right)
    # a contended run whose solo neighbours were both dropped has no baseline
    records = [r for r in started_right if PAIRED_BASELINE_TAG in r.tags]
    wall = time.time() - began
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        export_jsonl(records, f)
    loads = [float(r.tags["loadavg1"]) for r in records]
    summary: dict[str, Any] = {
        "records": len(records),
        "wall_seconds": round(wall, 1),
        "load_before": load_before,
        "load_after": load(),
        "loadavg1_during": {
            "min": min(loads),
            "median": sorted(loads)[len(loads) // 2],
            "max": max(loads),
        },
        "reps": args.reps,
        "cpus": args.cpus,
        "nice": args.nice,
        "victims": [v.name for v in victims],
        "antagonists": {
            k: {
                "argv": ANTAGONISTS[k].argv,
                "memory": ANTAGONISTS[k].memory,
                "cpu": ANTAGONISTS[k].cpu,
            }
            for k in antagonists
        },
        "node_cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "leftover_groups": leftovers,
        "relabelled": relabelled,
        "dropped_started_at_placement": recorded - len(started_right),
        "dropped_without_solo_neighbours": len(started_right) - len(records),
    }
    args.out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
