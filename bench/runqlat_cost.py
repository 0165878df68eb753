#!/usr/bin/env python3
"""What the eBPF run-queue latency histogram costs (docs/runqlat.md).

A context-switch-heavy workload (stress-ng --switch: two processes ping-pong over a
pipe, pinned to one CPU, so every message is a wake-up and a context switch) runs for
`--seconds` in three arms per round, in rotating order on the same machine:

- off:       the tracker loaded, the run-queue programs detached (the baseline);
- untracked: the programs attached, the workload not tracked (what every other task of
             the host pays: one lookup per wake-up, two per switch);
- tracked:   the programs attached, the workload tracked as a tool call (its every
             wake-up and switch recorded in the histogram: the worst case).

Reported per arm: round trips per CPU-second of the workload (stress-ng's bogo ops/s
over usr+sys time: BPF programs run in the context of the task that hits the
tracepoint, so their time is in the workload's system time; wall-clock throughput on a
shared 2-CPU node mostly measures the neighbours), each arm's ratio to `off` in the same
round, the implied CPU nanoseconds per switch, the spread over rounds and the load
average. With --bpf-stats, also the kernel's own count and run time of each run-queue
program (kernel.bpf_stats_enabled, a host-wide sysctl: set for the run, then restored).

    cd /tmp && sudo /path/to/.venv/bin/python /path/to/bench/runqlat_cost.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from agentd.metrics.runqlat import RunqReader
from agentd.tracking.ebpf import RUNQ_PROGRAMS, EbpfSource

ARMS = ("off", "untracked", "tracked")
# stress-ng --metrics-brief: bogo ops, real s, usr s, sys s, ops/s real, ops/s usr+sys
_METRIC = re.compile(r"switch\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)")
BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"


def program_stats(source: EbpfSource) -> dict[str, tuple[int, int]]:
    """(run count, run time ns) of each run-queue program, from its fd's fdinfo."""
    out = {}
    for _tp, name in RUNQ_PROGRAMS:
        fd = source.program_fd(name)
        fields = dict(
            line.split(":\t", 1)
            for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
            if ":\t" in line
        )
        out[name] = (int(fields.get("run_cnt", 0)), int(fields.get("run_time_ns", 0)))
    return out


def run_workload(source: EbpfSource, seconds: float, track_key: int | None) -> float:
    """Switches per second of one stress-ng --switch run."""
    cmd = ["stress-ng", "--switch", "1", "--taskset", "0", "-t", str(seconds), "--metrics-brief"]
    # Wait for "go" so that the launcher is watched before stress-ng forks.
    p = subprocess.Popen(
        ["sh", "-c", 'read _ && exec "$@"', "sh", *cmd],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd="/tmp",
    )
    if track_key is not None:
        source.watch(p.pid, track_key)
    out, _ = p.communicate("go\n", timeout=seconds + 30)
    m = _METRIC.search(out)
    if m is None:
        raise RuntimeError(f"no stress-ng metrics in: {out[-500:]}")
    return float(m.group(6))  # bogo ops/s over usr+sys time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--bpf-stats", action="store_true", help="per-program run time from the kernel")
    args = ap.parse_args()
    previous_stats = None
    if args.bpf_stats:
        with open(BPF_STATS) as f:
            previous_stats = f.read().strip()
        with open(BPF_STATS, "w") as f:
            f.write("1")
    try:
        measure(args)
    finally:
        if previous_stats is not None:
            with open(BPF_STATS, "w") as f:
                f.write(previous_stats)


def measure(args: argparse.Namespace) -> None:
    source = EbpfSource()
    source.start(lambda ev: None)
    reader = RunqReader(source)
    rows: list[dict[str, float]] = []
    key = 70_000
    try:
        for r in range(args.rounds):
            order = ARMS[r % 3 :] + ARMS[: r % 3]
            row: dict[str, float] = {"load1": os.getloadavg()[0]}
            for arm in order:
                if arm == "off":
                    reader.close()
                else:
                    reader.start()
                key += 1
                tracked = key if arm == "tracked" else None
                before = program_stats(source) if args.bpf_stats else {}
                row[arm] = run_workload(source, args.seconds, tracked)
                if args.bpf_stats and arm != "off":
                    after = program_stats(source)
                    for name, (cnt, ns) in after.items():
                        row[f"{arm}:{name}:runs"] = cnt - before[name][0]
                        row[f"{arm}:{name}:ns"] = ns - before[name][1]
                if arm == "tracked":
                    reader.refresh()
                    row["tracked_waits"] = reader.key_sample(key)["rql_count"]
            row["load1_end"] = os.getloadavg()[0]
            rows.append(row)
            print(
                f"round {r + 1}: off {row['off']:,.0f}/s  untracked {row['untracked']:,.0f}/s "
                f"({row['untracked'] / row['off']:.3f})  tracked {row['tracked']:,.0f}/s "
                f"({row['tracked'] / row['off']:.3f}, {row['tracked_waits']:,.0f} waits "
                f"recorded)  load {row['load1']:.1f}-{row['load1_end']:.1f}",
                flush=True,
            )
    finally:
        reader.close()
        source.stop()

    print("\nratio to off (same round), median [min-max]; ns per switch added:")
    summary: dict[str, dict[str, float]] = {}
    for arm in ("untracked", "tracked"):
        ratios = [row[arm] / row["off"] for row in rows]
        # One op = one round trip = two switches (and two wake-ups).
        added = [(1 / row[arm] - 1 / row["off"]) / 2 * 1e9 for row in rows]
        summary[arm] = {
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "ns_per_switch_median": statistics.median(added),
        }
        print(
            f"  {arm:9s} {statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]"
            f"  {statistics.median(added):+.0f} ns/switch "
            f"[{min(added):+.0f}..{max(added):+.0f}]"
        )
    if args.bpf_stats:
        print("  kernel's own figures (bpf_stats), median over rounds: runs, ns per run")
        for arm in ("untracked", "tracked"):
            for _tp, name in RUNQ_PROGRAMS:
                runs = [row[f"{arm}:{name}:runs"] for row in rows]
                per = [row[f"{arm}:{name}:ns"] / r for row, r in zip(rows, runs, strict=True) if r]
                if per:
                    print(
                        f"    {arm:9s} {name:16s} {statistics.median(runs):>12,.0f} runs"
                        f"  {statistics.median(per):6.0f} ns [{min(per):.0f}-{max(per):.0f}]"
                    )
    loads = [row["load1"] for row in rows] + [row["load1_end"] for row in rows]
    print(f"  off: {statistics.median(row['off'] for row in rows):,.0f} switches/s median")
    print(f"  load average {min(loads):.1f}-{max(loads):.1f}, {os.cpu_count()} CPUs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": rows, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("needs root (eBPF)")
    main()
