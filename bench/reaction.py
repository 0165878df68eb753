"""Time from crossing a memory limit to the action, for the in-kernel guard and for
user-space polling at 100 ms, in the same run; and whether the allocation that crossed
had returned to the program before the action.

    sudo .venv/bin/python bench/reaction.py [--runs 10] [--limit-mib 128] [--step-kib 1024]
        [--interval-ms 100] [--json FILE]

A Python process grows by `--step-kib` blocks whose pages it writes (bytes * n); for
each block it logs, unbuffered, the CLOCK_BOOTTIME before the allocation and after it
returned, and its private bytes (/proc/self/statm resident - shared) after it. The same
clock stamps the guard's ring-buffer records (bpf_ktime_get_boot_ns), so kernel and
program times compare directly. `--runs` times each, interleaved:

  guard: bpf/tracker.c with -DGUARD watches it with the limit. The kernel SIGSTOPs it in
         the rss_stat event of the page fault that crosses; its record carries the time
         it found the limit crossed (before the signal) and the time after the signal:
         the action time. Once stopped, the limit is raised (as a grant would) and the
         process continued: its next logged block is the one the stop interrupted
         (checked: it began before the action).
  poll:  no eBPF; bench/guard.py's poller reads /proc/PID/status every `--interval-ms`
         and SIGSTOPs the process when over; the action time is the SIGSTOP's. The
         crossing block is the first logged over the limit.

Per run: the reaction, crossing to action: for the guard measured in the kernel; for
the poller bounded by the crossing block (the crossing lies between its start and its
return: at least action - return, at most action - start). The same comparable figure
for both: action - start of the crossing block (which includes the process's own time
in that block, preemption too). Whether the crossing block returned before the action,
and how many blocks returned over the limit before the process stopped.
Printed: the per-run figures, median and min-max, the poll/guard ratio per run, the
block time (a scale: how long one allocation takes here now) and the load average with
every run. Target (issue 5): the guard acts before the crossing allocation returns.
Root needed (BPF).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from guard import MiB, end, go, poll_and_stop, spawn, spread, stopped

from agentd.enforcement.maps import GF_STOP_MEMORY, GuardLimit, GuardMaps
from agentd.tracking.ebpf import EbpfSource

TIMED_GROWER = """
import os, sys, time
step, log = int(sys.argv[1]), os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND)
statm, page = os.open("/proc/self/statm", os.O_RDONLY), os.sysconf("SC_PAGE_SIZE")
clock = time.CLOCK_BOOTTIME
sys.stdin.readline()
held = []
while True:
    t0 = time.clock_gettime_ns(clock)
    held.append(b"\\1" * step)
    t1 = time.clock_gettime_ns(clock)
    resident, shared = os.pread(statm, 128, 0).split()[1:3]
    os.write(log, b"%d %d %d\\n" % (t0, t1, (int(resident) - int(shared)) * page))
"""


@dataclass(frozen=True)
class Block:
    start_ns: int
    return_ns: int
    private_bytes: int


@dataclass(frozen=True)
class Reaction:
    mode: str
    reaction_us: float  # crossing -> action: guard exact (kernel), poll at least this
    from_block_start_us: float  # action - start of the crossing block (both alike)
    crossing_returned_first: bool  # the crossing block returned before the action
    over_limit_returns: int  # blocks returned over the limit before the stop
    block_us: float  # median time of one block in this run (a scale)
    loadavg: float


def read_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    return [Block(*map(int, line.split())) for line in lines if line.count(" ") == 2]


def next_block(path: Path, after: int, timeout: float = 10.0) -> Block:
    """Wait for the block logged after the first `after` ones."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        blocks = read_blocks(path)
        if len(blocks) > after:
            return blocks[after]
        time.sleep(0.002)
    raise TimeoutError("the continued process logged no block")


def wait_stopped(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not stopped(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {pid} was never stopped")
        time.sleep(0.001)


def median_block_us(blocks: list[Block]) -> float:
    return statistics.median((b.return_ns - b.start_ns) / 1e3 for b in blocks)


def guard_run(
    source: EbpfSource, maps: GuardMaps, key: int, limit: int, step: int, log: Path
) -> Reaction:
    records: list = []
    source.on_guard = records.append
    log.write_text("")
    p = spawn(TIMED_GROWER, str(step), str(log))
    try:
        source.watch(p.pid, key)
        maps.add_tool_call(key, GuardLimit(memory=limit, flags=GF_STOP_MEMORY), 1)
        go(p)
        wait_stopped(p.pid)
        deadline = time.monotonic() + 5
        while not records and time.monotonic() < deadline:
            time.sleep(0.001)
        assert records, "stopped, but the guard never reported"
        action_ns = records[0].time_ns
        time.sleep(0.02)  # anything logged before the stop is in the file by now
        before = read_blocks(log)
        # A grant: the limit out of reach, then continue; the interrupted block returns.
        maps.set_limit(key, GuardLimit(memory=1 << 50, flags=GF_STOP_MEMORY))
        os.kill(p.pid, signal.SIGCONT)
        crossing = next_block(log, len(before))
        assert crossing.start_ns < action_ns, "the stop did not interrupt a block"
        return Reaction(
            mode="guard",
            reaction_us=(action_ns - records[0].crossed_ns) / 1e3,
            from_block_start_us=(action_ns - crossing.start_ns) / 1e3,
            crossing_returned_first=crossing.return_ns < action_ns,
            over_limit_returns=sum(1 for b in before if b.private_bytes > limit),
            block_us=median_block_us(before),
            loadavg=os.getloadavg()[0],
        )
    finally:
        end(p)
        maps.remove_tool_call(key)


def poll_run(limit: int, step: int, interval: float, log: Path) -> Reaction:
    log.write_text("")
    p = spawn(TIMED_GROWER, str(step), str(log))
    try:
        go(p)
        action_ns = poll_and_stop(p.pid, limit, interval)
        time.sleep(0.02)
        before = read_blocks(log)
        over = [b for b in before if b.private_bytes > limit]
        if over:
            crossing = over[0]
        else:  # the poll caught it inside the crossing block itself
            os.kill(p.pid, signal.SIGCONT)
            crossing = next_block(log, len(before))
        return Reaction(
            mode="poll",
            reaction_us=max(action_ns - crossing.return_ns, 0) / 1e3,
            from_block_start_us=(action_ns - crossing.start_ns) / 1e3,
            crossing_returned_first=crossing.return_ns < action_ns,
            over_limit_returns=sum(1 for b in over if b.return_ns < action_ns),
            block_us=median_block_us(before),
            loadavg=os.getloadavg()[0],
        )
    finally:
        end(p)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--limit-mib", type=int, default=128)
    parser.add_argument("--step-kib", type=int, default=1024)
    parser.add_argument("--interval-ms", type=float, default=100.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/reaction.py needs root (BPF)", file=sys.stderr)
        return 2
    load_start = os.getloadavg()
    print(f"load average before: {load_start}, cpus: {os.cpu_count()}")
    limit, step, interval = args.limit_mib * MiB, args.step_kib * 1024, args.interval_ms / 1e3
    source = EbpfSource(guard=True)
    source.start(lambda ev: None)
    maps = GuardMaps(source)
    results: dict[str, list[Reaction]] = {"guard": [], "poll": []}
    ratios: list[float] = []
    log = Path(tempfile.mkdtemp(prefix="agentd-reaction-")) / "blocks"
    try:
        for run in range(args.runs):
            # Alternate which goes first, so that a drift of the load hits both alike.
            order = ("guard", "poll") if run % 2 == 0 else ("poll", "guard")
            this = {}
            for mode in order:
                if mode == "guard":
                    this[mode] = guard_run(source, maps, 1000 + run, limit, step, log)
                else:
                    this[mode] = poll_run(limit, step, interval, log)
                results[mode].append(this[mode])
            g, q = this["guard"], this["poll"]
            ratios.append(q.from_block_start_us / g.from_block_start_us)
            print(
                f"run {run}: guard {g.reaction_us:.1f} us in the kernel, "
                f"{g.from_block_start_us:.0f} us from the block's start (crossing block "
                f"returned first: {g.crossing_returned_first}, {g.over_limit_returns} blocks "
                f"over); poll({args.interval_ms:g} ms) >= {q.reaction_us / 1e3:.1f} ms, "
                f"{q.from_block_start_us / 1e3:.1f} ms from the block's start "
                f"({q.crossing_returned_first}, {q.over_limit_returns} blocks over); "
                f"block {g.block_us:.0f}/{q.block_us:.0f} us; load {g.loadavg:.1f}",
                flush=True,
            )
    finally:
        source.stop()
        log.unlink(missing_ok=True)
        log.parent.rmdir()
    load_end = os.getloadavg()
    print(f"reaction, limit {args.limit_mib} MiB, {args.step_kib} KiB blocks:")
    for mode, label in (("guard", "guard (eBPF)"), ("poll", f"poll at {args.interval_ms:g} ms")):
        rs = results[mode]
        first = sum(r.crossing_returned_first for r in rs)
        how = "crossing -> signal, in the kernel" if mode == "guard" else "at least (after it)"
        print(f"  {label:16s} {how}: {spread([r.reaction_us for r in rs], 'us')}")
        print(
            f"  {'':16s} action - start of the crossing block: "
            f"{spread([r.from_block_start_us for r in rs], 'us')}"
        )
        print(
            f"  {'':16s} crossing block returned before the action in {first}/{len(rs)} runs; "
            f"blocks returned over the limit: {spread([r.over_limit_returns for r in rs], '')}"
        )
        print(f"  {'':16s} one block takes {spread([r.block_us for r in rs], 'us')}")
    print(f"  ratio poll/guard of action - start of the crossing block: {spread(ratios, '')}")
    met = not any(r.crossing_returned_first for r in results["guard"])
    print(f"target (the guard acts before the crossing allocation returns): {met}")
    print(f"load average after: {load_end}")
    if args.json:
        report = {
            "runs": {m: [asdict(r) for r in rs] for m, rs in results.items()},
            "ratio_poll_over_guard": ratios,
            "target_met": met,
            "loadavg_start": load_start,
            "loadavg_end": load_end,
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
