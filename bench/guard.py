"""The in-kernel memory guard: how far over its limit a process gets before it is
stopped, against a user-space poller in the same run; and what the guard costs an
allocating process.

    .venv/bin/python bench/guard.py [--runs 10] [--limit-mib 128] [--step-kib 1024]
        [--rounds 3] [--touch-mib 256] [--repeats 8]

Reaction, `--runs` times each, interleaved: a Python process grows by `--step-kib`
blocks whose pages it writes (bytes * n), past `--limit-mib`:
  guard:  bpf/tracker.c with -DGUARD watches it with that limit; the kernel SIGSTOPs it
          in the page fault that crosses. Figure: the guard's sum at the stop - limit.
  poll:   no eBPF; a loop reads /proc/PID/status (RssAnon + RssShmem) every 100 ms and
          SIGSTOPs it when over. Figure: the same sum read once it is stopped - limit.
Cost, `--rounds` rounds of three configurations in rotating order, each a child that
touches `--touch-mib` (bytes * n, freed again) `--repeats` times; its CPU seconds:
  none:     no BPF program loaded;
  tracking: the tracker without the guard (peak RSS per process, TRACK_USAGE), watched;
  guard:    the tracker with the guard, watched, limit far above (never trips).
Printed: per-run figures, median and min-max, the ratios guard/tracking and
guard/none per round, and the load average before and after. Root needed (BPF).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

from agentd.enforcement.maps import GF_STOP_MEMORY, GuardLimit, GuardMaps
from agentd.tracking.ebpf import EbpfSource

MiB = 1 << 20
GROWER = """
import sys
step = int(sys.argv[1])
sys.stdin.readline()
held = []
while True:
    held.append(b"\\1" * step)
"""
TOUCHER = """
import sys, time
n, repeats = int(sys.argv[1]), int(sys.argv[2])
sys.stdin.readline()
t = time.process_time()
for _ in range(repeats):
    x = b"\\1" * n
    del x
print(time.process_time() - t, flush=True)
"""


def private_bytes(pid: int) -> int:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssShmem", "State"):
                fields[key] = rest.split()
    return (int(fields["RssAnon"][0]) + int(fields["RssShmem"][0])) * 1024


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def go(p: subprocess.Popen[str]) -> None:
    assert p.stdin is not None
    p.stdin.write("\n")
    p.stdin.flush()


def end(p: subprocess.Popen[str]) -> None:
    p.kill()
    p.wait()


def guard_reaction(source: EbpfSource, maps: GuardMaps, key: int, limit: int, step: int) -> int:
    records = []
    source.on_guard = records.append
    p = spawn(GROWER, str(step))
    try:
        source.watch(p.pid, key)
        maps.add_tool_call(key, GuardLimit(memory=limit, flags=GF_STOP_MEMORY), 1)
        go(p)
        deadline = time.monotonic() + 30
        while not records and time.monotonic() < deadline:
            time.sleep(0.005)
        assert records, "the guard never reported"
        while not stopped(p.pid) and time.monotonic() < deadline:
            time.sleep(0.001)
        return records[0].value - limit
    finally:
        end(p)
        maps.remove_tool_call(key)


def poll_and_stop(pid: int, limit: int, interval: float = 0.1) -> int:
    """The user-space alternative: read the process's private bytes every `interval`,
    SIGSTOP it once over `limit`; returns when it is stopped, with the CLOCK_BOOTTIME
    (the guard records' clock) of the SIGSTOP in ns."""
    while private_bytes(pid) <= limit:
        time.sleep(interval)
    sent_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    os.kill(pid, signal.SIGSTOP)
    while not stopped(pid):
        time.sleep(0.001)
    return sent_ns


def poll_reaction(limit: int, step: int, interval: float = 0.1) -> int:
    p = spawn(GROWER, str(step))
    try:
        go(p)
        poll_and_stop(p.pid, limit, interval)
        return private_bytes(p.pid) - limit
    finally:
        end(p)


def touch_cpu(
    source: EbpfSource | None, maps: GuardMaps | None, key: int, args: argparse.Namespace
) -> float:
    p = spawn(TOUCHER, str(args.touch_mib * MiB), str(args.repeats))
    try:
        if source is not None:
            source.watch(p.pid, key)
        if maps is not None:
            maps.add_tool_call(key, GuardLimit(memory=1 << 50, flags=GF_STOP_MEMORY), 1)
        go(p)
        out, _ = p.communicate(timeout=300)
        return float(out.strip())
    finally:
        if maps is not None:
            maps.remove_tool_call(key)


def spread(values: list[float], unit: str, scale: float = 1.0) -> str:
    v = [x / scale for x in values]
    return (
        f"median {statistics.median(v):.3f} {unit} (min {min(v):.3f}, max {max(v):.3f}, n={len(v)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--limit-mib", type=int, default=128)
    parser.add_argument("--step-kib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--touch-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/guard.py needs root (BPF)", file=sys.stderr)
        return 2
    print(f"load average before: {os.getloadavg()}")
    limit, step = args.limit_mib * MiB, args.step_kib * 1024

    # ---- reaction -----------------------------------------------------------------
    source = EbpfSource(guard=True)
    source.start(lambda ev: None)
    maps = GuardMaps(source)
    guard_over: list[float] = []
    poll_over: list[float] = []
    for run in range(args.runs):
        g = guard_reaction(source, maps, 1000 + run, limit, step)
        q = poll_reaction(limit, step)
        guard_over.append(g)
        poll_over.append(q)
        print(
            f"run {run}: guard +{g / 1024:.0f} KiB, poll(100 ms) +{q / MiB:.1f} MiB "
            f"over {args.limit_mib} MiB"
        )
    print(f"reaction, bytes over the limit at the stop (growing by {args.step_kib} KiB blocks):")
    print(f"  guard:          {spread(guard_over, 'KiB', 1024)}")
    print(f"  poll at 100 ms: {spread(poll_over, 'MiB', MiB)}")
    source.stop()

    # ---- cost ---------------------------------------------------------------------
    configs = ("none", "tracking", "guard")
    cpu: dict[str, list[float]] = {c: [] for c in configs}
    ratios: dict[str, list[float]] = {"guard/tracking": [], "guard/none": [], "tracking/none": []}
    for rnd in range(args.rounds):
        order = configs[rnd % 3 :] + configs[: rnd % 3]
        this: dict[str, float] = {}
        for config in order:
            src: EbpfSource | None = None
            m: GuardMaps | None = None
            if config != "none":
                src = EbpfSource(guard=config == "guard")
                src.start(lambda ev: None)
                m = GuardMaps(src) if config == "guard" else None
            try:
                this[config] = touch_cpu(src, m, 5000 + rnd, args)
            finally:
                if src is not None:
                    src.stop()
            cpu[config].append(this[config])
        ratios["guard/tracking"].append(this["guard"] / this["tracking"])
        ratios["guard/none"].append(this["guard"] / this["none"])
        ratios["tracking/none"].append(this["tracking"] / this["none"])
        print(
            f"round {rnd}: CPU s for {args.repeats} x {args.touch_mib} MiB: "
            + ", ".join(f"{c} {this[c]:.3f}" for c in configs)
        )
    print(
        f"cost, CPU seconds of the allocating process "
        f"({args.repeats} x {args.touch_mib} MiB touched):"
    )
    for c in configs:
        print(f"  {c:9s} {spread(cpu[c], 's')}")
    for name, values in ratios.items():
        print(f"  ratio {name}: {spread(values, '')}")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
