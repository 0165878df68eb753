#!/usr/bin/env python3
"""What the collector costs: the daemon's CPU with N active tool calls (default 100,
each a sleeping process in its own group), with the collector on (100 ms period) and
off, measured in alternating rounds on the same machine.

Reported per round and overall: the daemon's CPU use (cores, from its /proc stat
over `--seconds`) with and without the collector, their difference (the collector's
cost for N active tool calls), the ratio, and the load average. The machine is shared:
quote the difference with its spread, not one figure.

    cd /tmp && sudo /path/to/.venv/bin/python /path/to/bench/collector_cost.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from agentd_process import AgentdProcess

from agentd.metrics.dataset import Dataset


def daemon_cpu_cores(
    enabled: bool, tool_calls: int, seconds: float, period_ms: int
) -> tuple[float, float]:
    """(daemon CPU in cores, median samples per recorded tool call per second)."""
    config = f"[collector]\nenabled = {str(enabled).lower()}\nperiod_ms = {period_ms}\n"
    config += '[tracking]\nsource = "off"\n'  # the same in both arms; not what we measure
    daemon = AgentdProcess(config=config)
    daemon.start()
    handles = []
    try:
        with (
            daemon.client() as client,
            client.session("cost", memory="8G", pids=tool_calls * 4) as s,
        ):
            for _ in range(tool_calls):
                handles.append(
                    s.start(
                        ["sleep", "600"], memory="16M", label="sleep", stdout=subprocess.DEVNULL
                    )
                )
            time.sleep(1.0)  # settle: groups created, collector tracking all of them
            assert daemon.process is not None
            proc = psutil.Process(daemon.process.pid)
            before = proc.cpu_times()
            started = time.monotonic()
            time.sleep(seconds)
            after = proc.cpu_times()
            elapsed = time.monotonic() - started
            for h in handles:
                h.kill()
            for h in handles:
                h.wait(timeout=30)
        time.sleep(1.0)  # the collector records the last ones
        rate = sample_rate(Path(daemon.state_dir) / "dataset.sqlite") if enabled else 0.0
    finally:
        daemon.cleanup()
    used = (after.user - before.user) + (after.system - before.system)
    return used / elapsed, rate


def sample_rate(path: Path) -> float:
    """Proof that the collector kept up: samples each tool call got per second of its
    life (the ring holds the last 50, so over 5 s of life this reads at most 50/life)."""
    dataset = Dataset(path)
    try:
        records = dataset.records()
    finally:
        dataset.close()
    rates = [
        r.group_run["samples"] / min(r.duration_seconds, 5.0) for r in records if r.duration_seconds
    ]
    return statistics.median(rates) if rates else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool-calls", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--period-ms", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for r in range(args.rounds):
        # alternate which arm goes first, so a drifting machine load hits both
        order = [True, False] if r % 2 == 0 else [False, True]
        got = {}
        rate = 0.0
        for enabled in order:
            got[enabled], r_ = daemon_cpu_cores(
                enabled, args.tool_calls, args.seconds, args.period_ms
            )
            rate = max(rate, r_)
        diff = got[True] - got[False]
        rows.append(
            {"on": got[True], "off": got[False], "diff": diff, "load": os.getloadavg(), "hz": rate}
        )
        ratio = got[True] / got[False] if got[False] else float("inf")
        print(
            f"round {r}: collector on {got[True]:.3f} cores, off {got[False]:.3f} cores, "
            f"cost {diff * 100:.1f}% of a core for {args.tool_calls} tool calls, "
            f"ratio {ratio:.1f}x, "
            f"{rate:.1f} samples/s per tool call, "
            f"load {[round(x, 2) for x in os.getloadavg()]}",
            flush=True,
        )
    diffs = [r["diff"] for r in rows]
    print(
        f"collector cost for {args.tool_calls} active tool calls at {args.period_ms} ms: "
        f"median {statistics.median(diffs) * 100:.1f}% of a core "
        f"(min {min(diffs) * 100:.1f}, max {max(diffs) * 100:.1f}) over {args.rounds} rounds; "
        f"idle daemon (collector off) median {statistics.median(r['off'] for r in rows) * 100:.1f}%"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
