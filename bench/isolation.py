"""Isolation of a high-priority agent session from noisy low-priority neighbours.

Replays agent traces (memory as recorded, CPU recovered by differencing the trace's
running average) as one high-priority and two low-priority sessions, each one tool
call, under a node memory budget smaller than their summed peaks, for each strategy:

- none:   no isolation: every session normal priority, each may use the whole budget;
- static: static per-session limits: the budget split in three, priority CPU weights;
- agentd: priority classes (CPU weight, memory protection, batch cpu.idle next to an
          interactive session), the in-kernel guard and the pressure policy
          (throttle, then freeze the low sessions under pressure, resume after).

and the high session alone (same daemon as `none`), interleaved in the same loop, run
after run, so that each ratio compares figures measured minutes apart at most. The
high session alone runs twice per run (`alone again`, shuffled in like a strategy):
the second against the first is the noise floor of the ratio on this machine.
`--strategies` runs a subset, or adds `agentd-weights` (agentd with `[priorities]
batch_cpu_idle = false`: an A/B of batch cpu.idle in the same run).

Per allocation the replayer reads its thread's schedstat around it: time on a CPU, in
a run queue, and the rest (blocked); the report splits the high session's slowest
tenth of allocations that way, and prints the p95 over all runs' allocations pooled
next to the median of the per-run ratios, and the daemon's CPU per run.

Per strategy it prints the high session's completion time and p95 allocation latency
relative to the same session alone (median and min-max over the runs), OOM kills and
guard kills per session (both failures: the work should be slowed or paused instead),
the low sessions' completion times, and whether the high session's slow allocations
(over alone's p90) coincide with the low sessions' allocations more than its other
ones do; with --json FILE it writes {"strategies": {NAME: {"high_p95_latency_ratio",
"high_completion_ratio", "oom_kills", "guard_kills", "low_completion_seconds", ...}}}
and the load average after each run.

    sudo .venv/bin/python bench/isolation.py --runs 10 --json /tmp/isolation.json
    sudo .venv/bin/python bench/isolation.py --traces /nowhere   # synthetic traces

Traces: --traces DIR (default ../shared/traces/agentcgroup-haiku next to the repo): one
folder per task with resources.json; read in place, never copied. Without the folder,
a synthetic generator of the same shape (a ~190 MB plateau with bursts) is used.
Internally, `--worker SPEC RESULT` is the replayer each tool call runs.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
#: ../shared/traces/ of the repository; a git worktree sits one level deeper (wt/NAME).
DEFAULT_TRACES = next(
    (
        p / "shared" / "traces" / "agentcgroup-haiku"
        for p in REPO.parents
        if (p / "shared" / "traces" / "agentcgroup-haiku").is_dir()
    ),
    REPO.parent / "shared" / "traces" / "agentcgroup-haiku",
)
MiB = 1 << 20
CHUNK = 4 * MiB
STRATEGIES = ("none", "static", "agentd")
#: The high session alone a second time in each run: its ratio to the first is the noise.
AGAIN = "alone-again"
#: agentd without batch cpu.idle (the class weights alone): an A/B of that policy.
WEIGHTS = "agentd-weights"
#: Default tasks: a high session with a long ~480 MB phase, two lows with 1-1.8 GB bursts.
HIGH_TASK = "NVIDIA__nv-ingest-71"
LOW_TASKS = ("pre-commit__pre-commit-2524", "tobymao__sqlglot-4014")


# ---- the replayer (runs as a tool call) ------------------------------------------


def worker(spec_path: str, result_path: str) -> None:
    """Replay steps of (memory MB, CPU fraction): per step, grow or shrink the resident
    memory to the target (timing each 4 MiB allocation), do the step's CPU work, and
    sleep out the rest of the step if ahead. Slowed down, it simply finishes later."""
    spec = json.loads(Path(spec_path).read_text())
    step_s, units_per_s = spec["step_seconds"], spec["units_per_second"]
    chunks: list[bytes] = []
    latencies: list[float] = []
    at: list[float] = []  # seconds since start of each allocation, to line up with events
    #: per allocation, from the thread's schedstat around it: time on a CPU and time
    #: waiting in a run queue (runnable, not running); the rest of the latency is time
    #: off the run queue (blocked: reclaim I/O, a throttle, a stop signal)
    on_cpu: list[float] = []
    runq: list[float] = []
    first = schedstat()
    start = time.monotonic()
    for i, (mem_mb, cpu) in enumerate(spec["steps"]):
        want = int(mem_mb * MiB) // CHUNK
        while len(chunks) < want:
            before = schedstat()
            t0 = time.perf_counter()
            chunks.append(b"x" * CHUNK)  # written: resident, charged to the group
            latencies.append((time.perf_counter() - t0) * 1e6)
            after = schedstat()
            on_cpu.append((after[0] - before[0]) / 1e3)
            runq.append((after[1] - before[1]) / 1e3)
            at.append(time.monotonic() - start)
        del chunks[want:]
        for _ in range(int(cpu * step_s * units_per_s)):
            sum(range(500))
        ahead = start + (i + 1) * step_s - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    result = {
        "completion_seconds": time.monotonic() - start,
        "alloc_latencies_us": latencies,
        "alloc_at_seconds": at,
        "alloc_on_cpu_us": on_cpu,
        "alloc_runq_us": runq,
        "runq_seconds": (schedstat()[1] - first[1]) / 1e9,
        "pid": os.getpid(),
        "started_monotonic": start,
    }
    Path(result_path).write_text(json.dumps(result))


def schedstat() -> tuple[int, int]:
    """This thread's (ns on a CPU, ns waiting in a run queue) so far."""
    with open("/proc/thread-self/schedstat") as f:
        on_cpu, waited, _ = f.read().split()
    return int(on_cpu), int(waited)


def calibrate(seconds: float = 0.5) -> float:
    """Work units per second of one core now (the bench's own process)."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(100):
            sum(range(500))
        n += 100
    return n / (time.perf_counter() - t0)


# ---- traces ----------------------------------------------------------------------

_UNITS = {"B": 1e-6, "kB": 1e-3, "KB": 1e-3, "KiB": 1.024e-3, "MB": 1.0, "MiB": 1.048576}
_UNITS |= {"GB": 1e3, "GiB": 1073.741824}


def _mb(text: str) -> float:
    match = re.match(r"\s*([\d.]+)\s*([A-Za-z]+)", text.split("/")[0])
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"unreadable memory figure {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def load_trace(folder: Path) -> list[tuple[float, float]]:
    """(memory MB, CPU cores) per sample; CPU from the running average by differencing
    (cpu_i = (avg_i (t_i - t0) - avg_{i-1} (t_{i-1} - t0)) / (t_i - t_{i-1}))."""
    samples = json.loads((folder / "resources.json").read_text())["samples"]
    t0 = samples[0]["epoch"] - 0.5
    out = []
    prev_t, prev_avg = t0, 0.0
    for s in samples:
        t, avg = s["epoch"], float(s["cpu_percent"].rstrip("%")) / 100
        dt = max(t - prev_t, 1e-3)
        cpu = (avg * (t - t0) - prev_avg * (prev_t - t0)) / dt
        out.append((_mb(s["mem_usage"]), min(max(cpu, 0.0), 1.0)))
        prev_t, prev_avg = t, avg
    return out


def synthetic_trace(
    seed: int, samples: int, bursts: int, burst_mb: float
) -> list[tuple[float, float]]:
    """The traces' shape without the traces: a ~190 MB plateau (the agent and its
    tools), a few one-sample bursts, and CPU mostly idle with busy stretches."""
    rng = random.Random(seed)
    at = set(rng.sample(range(samples // 10, samples), bursts))
    out = []
    for i in range(samples):
        mem = 185 + 15 * rng.random() + (burst_mb * rng.uniform(0.6, 1.0) if i in at else 0)
        cpu = rng.choice((0.05, 0.1, 0.2, 0.9)) if rng.random() < 0.7 else 1.0
        out.append((mem, cpu))
    return out


def traces(folder: Path) -> tuple[str, dict[str, list[tuple[float, float]]]]:
    names = (HIGH_TASK, *LOW_TASKS)
    if all((folder / n / "resources.json").exists() for n in names):
        return f"traces from {folder}", {n: load_trace(folder / n) for n in names}
    return "synthetic traces (no trace folder)", {
        HIGH_TASK: synthetic_trace(1, 330, 2, 300),
        LOW_TASKS[0]: synthetic_trace(2, 310, 6, 1200),
        LOW_TASKS[1]: synthetic_trace(3, 280, 6, 1600),
    }


def to_steps(
    trace: list[tuple[float, float]], baseline_mb: float, scale: float, cpu_scale: float
) -> list[tuple[float, float]]:
    """Tool-call memory: the recorded figure minus the agent's own baseline, scaled;
    CPU scaled too (the replay compresses time, and this 2-core machine is shared)."""
    return [(max(mem - baseline_mb, 0.0) * scale, cpu * cpu_scale) for mem, cpu in trace]


# ---- the daemons and one run --------------------------------------------------------


def strategy_config(strategy: str, total: int, budget: int) -> str:
    node = f"[node]\nreserved_memory = {total - budget}\n"
    if strategy == WEIGHTS:
        node += "[priorities]\nbatch_cpu_idle = false\n"
    if strategy not in ("agentd", WEIGHTS):
        # The baselines are the cgroup limits alone: no policy, no in-kernel guard.
        return node + "[pressure]\nenabled = false\n[guard]\nenabled = false\n"
    # Node PSI is off here: the machine is shared and other people's load is not this
    # bench's pressure; agentd's own usage against the budget (and v2 group PSI) is.
    return node + (
        "[pressure]\ninterval_seconds = 0.2\nmemory_psi_enter = 0\nmemory_psi_exit = 0\n"
        "usage_enter = 0.7\nusage_exit = 0.5\ndwell_seconds = 1\n"
        "min_rewrite_interval_seconds = 0.5\nguard_window_seconds = 5\n"
    )


@dataclass
class Outcome:
    completion: float | None  # None: killed
    p95_latency_us: float | None
    oom_kills: int
    guard_kills: int  # killed by agentd's guard (records "killed"): a failure too
    #: (monotonic time, latency in us) of each allocation, to line sessions up
    allocs: list[tuple[float, float]] = field(default_factory=list)
    #: (latency, on a CPU, in a run queue) in us of each allocation
    split: list[tuple[float, float, float]] = field(default_factory=list)
    runq_seconds: float = 0.0  # the session's whole wait in run queues
    pid: int = 0  # the replayer's, to find it in a scheduler trace


@dataclass
class Runs:
    high_completion_ratio: list[float] = field(default_factory=list)
    high_p95_latency_ratio: list[float] = field(default_factory=list)
    oom_kills: dict[str, int] = field(default_factory=lambda: {"high": 0, "low1": 0, "low2": 0})
    guard_kills: dict[str, int] = field(default_factory=lambda: {"high": 0, "low1": 0, "low2": 0})
    low_completion_seconds: list[float | None] = field(default_factory=list)
    high_killed_runs: int = 0
    #: the high session's allocations slower than alone's p90, and of those how many had
    #: a low session allocating within OVERLAP_SECONDS; the same for the faster ones
    slow: list[int] = field(default_factory=lambda: [0, 0])
    fast: list[int] = field(default_factory=lambda: [0, 0])
    #: the high session's slowest tenth of allocations per run, summed: latency, time
    #: on a CPU, time in a run queue (us); the rest was off the run queue
    tail: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    high_runq_seconds: list[float] = field(default_factory=list)
    high_p95_us: list[float] = field(default_factory=list)  # per run, absolute
    daemon_cpu_seconds: list[float] = field(default_factory=list)  # the daemon's, per run
    latencies: list[float] = field(default_factory=list)  # the high's, every run's

    def pooled_ratio(self, alone: Runs) -> float | None:
        """p95 over every run's allocations against alone's over every run's: the
        session's p95 from ~45 x runs allocations instead of ~45 (its 3rd slowest)."""
        mine, base = p95(self.latencies), p95(alone.latencies)
        return mine / base if mine and base else None

    def add_tail(self, outcome: Outcome) -> None:
        self.latencies += [lat for lat, _, _ in outcome.split]
        if outcome.p95_latency_us:
            self.high_p95_us.append(outcome.p95_latency_us)
        ordered = sorted(outcome.split, reverse=True)
        for lat, on_cpu, runq in ordered[: max(1, len(ordered) // 10)]:
            self.tail[0] += lat
            self.tail[1] += on_cpu
            self.tail[2] += runq
        self.high_runq_seconds.append(outcome.runq_seconds)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def run_sessions(
    daemon: Any, plan: list[tuple[str, str, int, list]], workdir: Path, common: dict
) -> dict[str, Outcome]:
    """Start one tool call per (role, priority, memory budget, steps) at once; wait."""
    from agentd.sdk import Client

    out: dict[str, Outcome] = {}
    with Client(daemon.socket, timeout=60) as client:
        sessions, procs = {}, {}
        try:
            for role, priority, memory, steps in plan:
                spec = workdir / f"{role}.spec.json"
                spec.write_text(json.dumps({**common, "steps": steps}))
                result = workdir / f"{role}.result.json"
                result.unlink(missing_ok=True)
                session = client.session(f"iso-{role}", memory=memory, priority=priority)
                sessions[role] = session
                procs[role] = (
                    session.start([sys.executable, str(HERE), "--worker", str(spec), str(result)]),
                    result,
                )
            for role, (proc, result) in procs.items():
                done = proc.wait(600)
                data = json.loads(result.read_text()) if result.exists() else None
                out[role] = Outcome(
                    completion=data["completion_seconds"] if data else None,
                    p95_latency_us=p95(data["alloc_latencies_us"]) if data else None,
                    oom_kills=done.usage.oom_kills,
                    guard_kills=sum(1 for e in done.enforcements if e.action == "killed"),
                    allocs=[
                        (data["started_monotonic"] + t, lat)
                        for t, lat in zip(
                            data["alloc_at_seconds"], data["alloc_latencies_us"], strict=True
                        )
                    ]
                    if data
                    else [],
                    split=list(
                        zip(
                            data["alloc_latencies_us"],
                            data["alloc_on_cpu_us"],
                            data["alloc_runq_us"],
                            strict=True,
                        )
                    )
                    if data
                    else [],
                    runq_seconds=data["runq_seconds"] if data else 0.0,
                    pid=data["pid"] if data else 0,
                )
        finally:
            for proc, _ in procs.values():
                with contextlib.suppress(Exception):
                    proc.kill()
            for session in sessions.values():
                with contextlib.suppress(Exception):
                    session.close()
    return out


OVERLAP_SECONDS = 0.1


def attribute(r: Runs, alone: Outcome, got: dict[str, Outcome]) -> None:
    """Whether the high session's slow allocations (over alone's p90) coincide with the
    low sessions' allocations (their bursts: page faults, zeroing, the node's reclaim)
    more often than its other allocations do. If not, their cause is elsewhere (CPU
    shared with other work on the machine, the high session's own burst)."""
    if not alone.allocs or not got["high"].allocs:
        return
    ordered = sorted(lat for _, lat in alone.allocs)
    threshold = ordered[int(0.9 * (len(ordered) - 1))]
    lows = sorted(t for k in ("low1", "low2") for t, _ in got[k].allocs)
    for t, lat in got["high"].allocs:
        near = bisect.bisect_right(lows, t + OVERLAP_SECONDS) > bisect.bisect_left(
            lows, t - OVERLAP_SECONDS
        )
        tally = r.slow if lat > threshold else r.fast
        tally[0] += 1
        tally[1] += near


def tail_split(r: Runs) -> str:
    lat, on_cpu, runq = r.tail
    if not lat:
        return "n/a"
    other = lat - on_cpu - runq
    return (
        f"{lat / 1e3:.0f} ms: on a CPU {100 * on_cpu / lat:.0f}%, in a run queue "
        f"{100 * runq / lat:.0f}%, off the run queue {100 * other / lat:.0f}%; whole-run "
        f"run-queue wait {spread(r.high_runq_seconds)} s"
    )


def share(tally: list[int]) -> str:
    return f"{tally[1]}/{tally[0]} ({100 * tally[1] / tally[0]:.0f}%)" if tally[0] else "n/a"


def spread(values: list[float]) -> str:
    if not values:
        return "n/a (no run completed)"
    return (
        f"{statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f}, "
        f"n={len(values)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", nargs=2, metavar=("SPEC", "RESULT"), help=argparse.SUPPRESS)
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--step-seconds", type=float, default=0.05,
                        help="replay time of one trace sample (recorded: ~1 s)")  # fmt: skip
    parser.add_argument("--memory-scale", type=float, default=0.25)
    parser.add_argument("--cpu-scale", type=float, default=0.2)
    parser.add_argument("--baseline-mb", type=float, default=150.0,
                        help="the agent's own memory in the traces, not a tool call's")  # fmt: skip
    # 0.7: the largest low burst (482 MB) fits next to the other's plateau one at a time
    # (bench/README.md); under 0.6 it cannot without swap, whatever pauses.
    parser.add_argument("--budget-fraction", type=float, default=0.7,
                        help="node budget as a fraction of the summed peaks")  # fmt: skip
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help="comma-separated subset to run (default: all)")  # fmt: skip
    parser.add_argument("--no-noise-floor", dest="noise_floor", action="store_false",
                        help="skip the second alone run per run (the noise floor)")  # fmt: skip
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return 0
    if os.geteuid() != 0:
        print("isolation.py needs root (agentd creates cgroups)", file=sys.stderr)
        return 2

    import psutil

    sys.path.insert(0, str(REPO / "tests"))
    from agentd_process import AgentdProcess

    source, raw = traces(args.traces)
    high = to_steps(raw[HIGH_TASK], args.baseline_mb, args.memory_scale, args.cpu_scale)
    lows = [
        to_steps(raw[n], args.baseline_mb, args.memory_scale, args.cpu_scale) for n in LOW_TASKS
    ]
    peaks = [max(m for m, _ in s) for s in (high, *lows)]
    budget = int(sum(peaks) * args.budget_fraction * MiB)
    if budget < peaks[0] * MiB * 1.5:
        budget = int(peaks[0] * MiB * 1.5)  # the high session alone must fit with room
    total = psutil.virtual_memory().total
    common = {"step_seconds": args.step_seconds, "units_per_second": calibrate()}
    third = budget // 3
    plans = {
        "alone": [("high", "normal", budget, high)],
        "none": [("high", "normal", budget, high)]
        + [(f"low{i + 1}", "normal", budget, s) for i, s in enumerate(lows)],
        "static": [("high", "interactive", third, high)]
        + [(f"low{i + 1}", "batch", third, s) for i, s in enumerate(lows)],
        "agentd": [("high", "interactive", budget, high)]
        + [(f"low{i + 1}", "batch", budget, s) for i, s in enumerate(lows)],
    }
    plans[WEIGHTS] = plans["agentd"]
    print(f"{source}: high {HIGH_TASK} ({len(high)} steps), lows {', '.join(LOW_TASKS)}")
    print(
        f"peaks (MB, after -{args.baseline_mb:g} MB and x{args.memory_scale:g}): "
        f"{', '.join(f'{p:.0f}' for p in peaks)}; node budget {budget / MiB:.0f} MB "
        f"(sum of peaks {sum(peaks):.0f}); step {args.step_seconds:g} s; "
        f"{common['units_per_second']:.0f} work units/s"
    )
    load_start = os.getloadavg()
    print(f"load average at start: {load_start}, cpus: {os.cpu_count()}")
    strategies = [s for s in args.strategies.split(",") if s]
    if unknown := set(strategies) - {*STRATEGIES, WEIGHTS}:
        parser.error(f"unknown strategies {sorted(unknown)}; known: {', '.join(STRATEGIES)}, "
                     f"{WEIGHTS}")  # fmt: skip
    daemons = {}
    results = {s: Runs() for s in strategies}
    alone_runs = Runs()
    floor = Runs()  # the high session alone a second time, against the first: noise
    try:
        for strategy in {"none", *strategies}:  # alone runs on the `none` daemon
            daemon = AgentdProcess(config=strategy_config(strategy, total, budget))
            daemon.start(timeout=60)
            daemons[strategy] = daemon
        loads: list[float] = []  # 1-minute load average after each run
        #: per run, the pids of the daemons and replayers (to read a `perf sched` trace)
        pids: list[dict[str, Any]] = []
        workdir = Path(tempfile.mkdtemp(prefix="agentd-isolation-"))
        workdir.chmod(0o755)
        for run in range(args.runs):
            order = [*strategies, AGAIN] if args.noise_floor else list(strategies)
            random.Random(run).shuffle(order)
            alone = run_sessions(daemons["none"], plans["alone"], workdir, common)["high"]
            alone_runs.add_tail(alone)
            pids.append({"daemons": {k: d.process.pid for k, d in daemons.items()},
                         "bench": os.getpid(), "alone": alone.pid})  # fmt: skip
            line = [f"run {run + 1}: alone {alone.completion or 0:.2f} s"]
            for strategy in order:
                if strategy == AGAIN:
                    again = run_sessions(daemons["none"], plans["alone"], workdir, common)
                    floor.add_tail(again["high"])
                    if again["high"].p95_latency_us and alone.p95_latency_us:
                        ratio = again["high"].p95_latency_us / alone.p95_latency_us
                        floor.high_p95_latency_ratio.append(ratio)
                    line.append(f"alone again {again['high'].completion or 0:.2f} s")
                    continue
                cpu0 = process_cpu_seconds(daemons[strategy].process.pid)
                got = run_sessions(daemons[strategy], plans[strategy], workdir, common)
                r = results[strategy]
                r.daemon_cpu_seconds.append(
                    process_cpu_seconds(daemons[strategy].process.pid) - cpu0
                )
                for role, outcome in got.items():
                    r.oom_kills[role] += outcome.oom_kills
                    r.guard_kills[role] += outcome.guard_kills
                h = got["high"]
                if h.completion is None or alone.completion is None:
                    r.high_killed_runs += 1
                else:
                    r.high_completion_ratio.append(h.completion / alone.completion)
                    if h.p95_latency_us and alone.p95_latency_us:
                        r.high_p95_latency_ratio.append(h.p95_latency_us / alone.p95_latency_us)
                r.low_completion_seconds += [got[k].completion for k in ("low1", "low2")]
                attribute(r, alone, got)
                r.add_tail(h)
                pids[-1][strategy] = {role: o.pid for role, o in got.items()}
                kills = sum(o.oom_kills for o in got.values())
                guard = sum(o.guard_kills for o in got.values())
                line.append(f"{strategy} {h.completion or 0:.2f} s ({kills} OOM, {guard} guard)")
            loads.append(os.getloadavg()[0])
            print(", ".join(line) + f"; load {loads[-1]:.1f}", flush=True)
    finally:
        for daemon in daemons.values():
            with contextlib.suppress(Exception):
                daemon.cleanup()
    load_end = os.getloadavg()
    print(f"load average at end: {load_end}")
    print("\nper strategy: high session vs alone (median, min, max over runs); OOM kills")
    print(f"  alone: slowest tenth of allocations {tail_split(alone_runs)}")
    if args.noise_floor:
        print(
            f"  alone again (noise floor: the same session alone twice in a run): high p95 "
            f"alloc latency {spread(floor.high_p95_latency_ratio)}, pooled "
            f"{floor.pooled_ratio(alone_runs) or 0:.3f}; slowest tenth "
            f"{tail_split(floor)}"
        )
    report: dict[str, Any] = {"strategies": {}}
    for strategy in strategies:
        r = results[strategy]
        lows_done = [x for x in r.low_completion_seconds if x is not None]
        print(f"  {strategy}:")
        print(f"    high completion ratio  {spread(r.high_completion_ratio)}")
        print(f"    high p95 alloc latency {spread(r.high_p95_latency_ratio)}")
        pooled = r.pooled_ratio(alone_runs)
        print(f"    high p95 alloc latency, all runs pooled: {pooled or 0:.3f}")
        print(
            f"    high killed in {r.high_killed_runs}/{args.runs} runs; OOM kills "
            f"{r.oom_kills}; guard kills {r.guard_kills}"
        )
        print(
            f"    high allocations slower than alone's p90 with a low one allocating within "
            f"{OVERLAP_SECONDS:g} s: {share(r.slow)}; of the faster ones: {share(r.fast)}"
        )
        print(f"    high slowest tenth of allocations {tail_split(r)}")
        print(f"    daemon CPU seconds per run {spread(r.daemon_cpu_seconds)}")
        print(
            f"    low completion seconds {spread(lows_done)}; "
            f"{len(r.low_completion_seconds) - len(lows_done)} low tool calls killed"
        )
        report["strategies"][strategy] = {
            "high_p95_latency_ratio": statistics.median(r.high_p95_latency_ratio)
            if r.high_p95_latency_ratio
            else None,
            "high_completion_ratio": statistics.median(r.high_completion_ratio)
            if r.high_completion_ratio
            else None,
            "oom_kills": r.oom_kills,
            "guard_kills": r.guard_kills,
            "low_completion_seconds": r.low_completion_seconds,
            "high_p95_latency_ratio_runs": r.high_p95_latency_ratio,
            "high_p95_latency_ratio_pooled": pooled,
            "high_completion_ratio_runs": r.high_completion_ratio,
            "high_killed_runs": r.high_killed_runs,
            "high_slow_allocations_near_low_ones": r.slow,
            "high_other_allocations_near_low_ones": r.fast,
            "high_p95_us_runs": r.high_p95_us,
            "high_slowest_tenth_us": dict(zip(("latency", "on_cpu", "runq"), r.tail, strict=True)),
            "high_runq_seconds_runs": r.high_runq_seconds,
            "daemon_cpu_seconds_runs": r.daemon_cpu_seconds,
        }
    report["alone"] = {
        "high_p95_us_runs": alone_runs.high_p95_us,
        "high_slowest_tenth_us": dict(
            zip(("latency", "on_cpu", "runq"), alone_runs.tail, strict=True)
        ),
        "high_runq_seconds_runs": alone_runs.high_runq_seconds,
        "again_p95_latency_ratio_runs": floor.high_p95_latency_ratio,
        "again_p95_latency_ratio_pooled": floor.pooled_ratio(alone_runs),
    }
    report["environment"] = {
        "source": source,
        "runs": args.runs,
        "budget_bytes": budget,
        "peaks_mb": peaks,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "loadavg_per_run": loads,
        "pids_per_run": pids,
        "cpus": os.cpu_count(),
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
