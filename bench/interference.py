#!/usr/bin/env python3
"""The interference experiment: victim tool calls alone and next to antagonists, all
through agentd, recording the dataset the predictor learns from.

Victims are realistic tool calls (a pytest suite, a C compile, a Python data job, a
git-heavy script, an install from a local wheel cache) and synthetic ones (CPU,
memory bandwidth, fsync'd writes, fork/exec), each a second or two alone.
Antagonists are stress-ng tool calls in another session (memory ones under a memory
limit), started `--warmup` seconds before the victims so that the node window a
victim's record keeps from before its start shows them. Blocks of the matrix:

    solo, cpu-1, vm, solo, cpu-2, cache, solo, cpu-q, io, solo, fork, solo

(`solo` repeated so that the baseline follows the drift of a shared machine.)
Each block runs every victim `--reps` times, in a shuffled order.

Starts its own agentd (unique socket, state dir, cgroup root; removed at the end),
then writes the records, tagged with workload / antagonist / repetition, as JSON
lines to `--out`, and a summary (wall time, load averages, matrix) beside it:

    cd /tmp && sudo /path/to/.venv/bin/python /path/to/bench/interference.py \\
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

from agentd.metrics.dataset import Dataset, Record, export_jsonl  # noqa: E402
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


ANTAGONISTS = {
    "cpu-1": Antagonist("cpu-1", ["stress-ng", "--cpu", "1", "--cpu-method", "matrixprod"], "256M"),
    "cpu-2": Antagonist("cpu-2", ["stress-ng", "--cpu", "2", "--cpu-method", "matrixprod"], "256M"),
    # the same two workers held to half a core by their cgroup: a low intensity
    "cpu-q": Antagonist("cpu-q", ["stress-ng", "--cpu", "2"], "256M", cpu=0.5),
    "vm": Antagonist("vm", ["stress-ng", "--vm", "2", "--vm-bytes", "300M", "--vm-keep"], "768M"),
    "cache": Antagonist("cache", ["stress-ng", "--cache", "2"], "256M"),
    "io": Antagonist(
        "io", ["stress-ng", "--hdd", "1", "--hdd-bytes", "256M", "--hdd-opts", "fsync"], "512M"
    ),
    "fork": Antagonist("fork", ["stress-ng", "--fork", "2"], "512M"),
}
BLOCKS = (
    "solo",
    "cpu-1",
    "vm",
    "solo",
    "cpu-2",
    "cache",
    "solo",
    "cpu-q",
    "io",
    "solo",
    "fork",
    "solo",
)


# ---- victims ---------------------------------------------------------------------------


def prepare_victims(work: Path) -> list[Workload]:
    """Write the victims' inputs under `work`; each victim runs a second or two alone."""
    tests = work / "suite"
    tests.mkdir()
    for i in range(3):
        body = "\n".join(
            f"def test_{i}_{j}():\n    assert sorted(range({j} * 300, 0, -1))[0] == 1\n"
            f"    assert sum(k * k for k in range(4000)) > 0\n"
            for j in range(1, 40)
        )
        (tests / f"test_mod{i}.py").write_text(body)
    csrc = work / "big.c"
    csrc.write_text(
        "\n".join(
            f"int f{i}(int *a, int n) {{ int s = 0; for (int j = 0; j < n; j++) "
            f"{{ s += a[j] * {i} ^ (s >> 3); "
            f"if (s % {i + 7} == 0) s += f{max(i - 1, 0)}(a, j / 2 + 1); }}"
            f" return s; }}"
            for i in range(1, 260)
        )
        + "\nint f0(int *a, int n) { return n ? a[0] : 0; }\n"
    )
    data = work / "data_job.py"
    data.write_text(
        "import json, random, collections\n"
        "random.seed(1)\n"
        "rows = [{'k': random.randrange(1000), 'v': random.random(), 's': str(i)} "
        "for i in range(150000)]\n"
        "rows.sort(key=lambda r: (r['k'], r['v']))\n"
        "groups = collections.defaultdict(list)\n"
        "for r in rows: groups[r['k']].append(r['v'])\n"
        "out = {k: sum(v) / len(v) for k, v in groups.items()}\n"
        "print(len(json.dumps(rows[:30000])), len(out))\n"
    )
    git = work / "git_job.sh"
    git.write_text(
        'set -e\nd=$(mktemp -d -p "$1")\ncd "$d"\ngit init -q .\n'
        "git config user.email b@x; git config user.name bench\n"
        'for i in $(seq 1 300); do echo "line $i" > f$i.txt; done\n'
        "git add -A; git commit -qm one\n"
        "for i in $(seq 1 300 | shuf -n 150 --random-source=/dev/zero); do\n"
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
        Workload("syn-cpu", [PY, "-c", "s=0\nfor i in range(7_000_000): s += i * i"], "256M", 1.0),
        Workload(
            "syn-mem",
            [PY, "-c", "b = bytearray(160 << 20)\nfor _ in range(6): c = bytes(b); del c"],
            "1G",
        ),
        Workload(
            "syn-io",
            ["dd", "if=/dev/zero", f"of={work / 'io.bin'}", "bs=1M", "count=192", "conv=fsync"],
            "512M",
        ),
        Workload(
            "syn-fork",
            [PY, "-c", "import subprocess\nfor _ in range(600): subprocess.run(['/bin/true'])"],
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


def run_matrix(
    client: Client,
    victims: list[Workload],
    blocks: list[str],
    reps: int,
    warmup: float,
    gap: float,
    seed: int,
) -> list[tuple[str, dict[str, str]]]:
    """Run every block; returns (tool_call_id, tags) for every victim run."""
    rng = random.Random(seed)
    tags: list[tuple[str, dict[str, str]]] = []
    with (
        client.session("victims", memory="6G", exist_ok=True) as victim_session,
        client.session("antagonists", memory="2G", exist_ok=True) as antagonist_session,
    ):
        for b, block in enumerate(blocks):
            handle = None
            if block != "solo":
                a = ANTAGONISTS[block]
                handle = antagonist_session.start(
                    [*a.argv, "--timeout", "3600"],
                    memory=a.memory,
                    cpu=a.cpu,
                    label=f"antagonist-{a.name}",
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(warmup)
            order = [(v, r) for v in victims for r in range(reps)]
            rng.shuffle(order)
            started = time.monotonic()
            for v, r in order:
                time.sleep(gap)
                result = victim_session.run(
                    v.argv,
                    memory=v.memory,
                    cpu=v.cpu,
                    label=v.name,
                    cwd=v.cwd,
                    capture_output=True,
                    timeout=300,
                )
                if result.returncode != 0:
                    print(f"  {v.name} failed ({result.returncode}): {result.stderr[-300:]!r}")
                tags.append(
                    (
                        result.tool_call_id,
                        {"workload": v.name, "antagonist": block, "rep": str(r), "block": str(b)},
                    )
                )
            if handle is not None:
                handle.kill()
                handle.wait(timeout=30)
            print(
                f"block {b:2d} {block:6s} {time.monotonic() - started:6.1f} s load {load()}",
                flush=True,
            )
    return tags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON lines output")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--gap",
        type=float,
        default=1.2,
        help="idle seconds before each victim (its 1 s window shows no victim)",
    )
    parser.add_argument("--blocks", default=",".join(BLOCKS))
    parser.add_argument("--victims", default="", help="comma-separated subset")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    blocks = args.blocks.split(",")
    unknown = [b for b in blocks if b != "solo" and b not in ANTAGONISTS]
    if unknown:
        parser.error(f"unknown blocks: {unknown}")

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
            tags = run_matrix(client, victims, blocks, args.reps, args.warmup, args.gap, args.seed)
        time.sleep(0.5)  # the collector writes the last record
        dataset = Dataset(Path(daemon.state_dir) / "dataset.sqlite")
        for tool_call_id, t in tags:
            if not dataset.tag(tool_call_id, t):
                print(f"  no record for {tool_call_id} ({t})")
        records: list[Record] = [r for r in dataset.records() if "workload" in r.tags]
        dataset.close()
    finally:
        leftovers = daemon.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    wall = time.time() - began
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        export_jsonl(records, f)
    summary: dict[str, Any] = {
        "records": len(records),
        "wall_seconds": round(wall, 1),
        "load_before": load_before,
        "load_after": load(),
        "blocks": blocks,
        "reps": args.reps,
        "victims": [v.name for v in victims],
        "antagonists": {
            k: {"argv": a.argv, "memory": a.memory, "cpu": a.cpu} for k, a in ANTAGONISTS.items()
        },
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "leftover_groups": leftovers,
    }
    args.out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
