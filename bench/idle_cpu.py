#!/usr/bin/env python3
"""What the daemon costs while nothing happens: CPU per second of an idle agentd with
no session, one idle session and ten idle sessions (each has run one tool call, so
its launchers are placed ahead and waiting, as between an agent's tool calls).

Two daemons run side by side and are measured in alternating windows of the same
rounds, so that both see the same machine:

- **A**: the installed agentd with the default configuration;
- **B**, the baseline: by default the same code with `[collector] period_ms = 1000`
  (`--baseline collector-1s`), or another build of agentd (`--baseline-pythonpath
  DIR`, e.g. the previous commit installed with `pip install --target DIR --no-deps .`)
  with the default configuration: an A/B of two versions in one run.

CPU is the sum over the daemon's threads *and its child processes* (the launchers
placed ahead, any helper) of the kernel's run time (`/proc/PID/task/TID/schedstat`,
nanoseconds), so work moved out of the daemon's process still counts. Per window:
CPU milliseconds per wall second. Printed: each scenario's median and min-max over
the rounds for A and B, the ratio A/B, the load average; then A's and B's heaviest
threads side by side (named with `py-spy dump` when py-spy is installed).

    sudo .venv/bin/python bench/idle_cpu.py --rounds 5 --seconds 3
    sudo .venv/bin/python bench/idle_cpu.py --baseline-pythonpath /tmp/agentd-prev
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from threadcpu import delta, label, snapshot, thread_names
from toolcall_latency import NOISE_CAVEAT, Daemon

from agentd.sdk.client import Client, Session

SCENARIOS = (0, 1, 10)


def open_idle_sessions(client: Client, sessions: list[Session], count: int) -> None:
    """Up to `count` sessions, each after one tool call with its launchers placed."""
    while len(sessions) < count:
        session = client.session(f"idle-{secrets.token_hex(4)}")
        session.run(["/bin/true"])
        session.settle()
        sessions.append(session)


def measure(pid: int, seconds: float) -> tuple[float, dict]:
    before = snapshot(pid)
    started = time.monotonic()
    time.sleep(seconds)
    after = snapshot(pid)
    wall = time.monotonic() - started
    per_task = delta(before, after)
    return sum(per_task.values()) / 1e6 / wall, {k: v / 1e6 / wall for k, v in per_task.items()}


def run(args: argparse.Namespace, a: Daemon, b: Daemon) -> int:
    assert a.process is not None and b.process is not None
    daemons = {"A": a, "B": b}
    results: dict[tuple[int, str], list[float]] = defaultdict(list)
    loads: dict[int, list[float]] = defaultdict(list)
    # (sessions, daemon) -> thread -> ms CPU/s per round
    threads: dict[tuple[int, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with Client(a.socket) as ca, Client(b.socket) as cb:
        clients = {"A": ca, "B": cb}
        opened: dict[str, list[Session]] = {"A": [], "B": []}
        try:
            for count in args.sessions:
                for name in ("A", "B"):
                    open_idle_sessions(clients[name], opened[name], count)
                time.sleep(args.settle)
                names = {n: thread_names(d.process.pid) for n, d in daemons.items()}  # type: ignore[union-attr]
                for number in range(args.rounds):
                    order = ("A", "B") if number % 2 == 0 else ("B", "A")
                    for name in order:
                        pid = daemons[name].process.pid  # type: ignore[union-attr]
                        total, per_task = measure(pid, args.seconds)
                        results[(count, name)].append(total)
                        by_name: dict[str, float] = defaultdict(float)
                        for key, ms in per_task.items():
                            by_name[label(pid, key, names[name])] += ms
                        for thread, ms in by_name.items():
                            threads[(count, name)][thread].append(ms)
                    loads[count].append(os.getloadavg()[0])
                    print(
                        f"{count:>2} sessions, round {number + 1}/{args.rounds}: "
                        f"A {results[(count, 'A')][-1]:6.1f} ms/s  "
                        f"B {results[(count, 'B')][-1]:6.1f} ms/s  "
                        f"load {loads[count][-1]:.2f}",
                        flush=True,
                    )
        finally:
            for name in ("A", "B"):
                for session in opened[name]:
                    with contextlib.suppress(Exception):
                        session.close()
    print()
    print(f"A: this agentd, default config; B: {args.baseline_text}")
    print("sessions |  A ms CPU/s median (min-max) |  B ms CPU/s median (min-max) | A/B | load")
    for count in args.sessions:
        ra, rb = results[(count, "A")], results[(count, "B")]
        ratio = statistics.median(ra) / statistics.median(rb) if statistics.median(rb) else 0
        print(
            f"{count:>8} | {statistics.median(ra):8.1f} ({min(ra):6.1f}-{max(ra):6.1f})     "
            f"| {statistics.median(rb):8.1f} ({min(rb):6.1f}-{max(rb):6.1f})     "
            f"| {ratio:4.2f} | {min(loads[count]):.2f}-{max(loads[count]):.2f}"
        )
    for count in args.sessions:
        print(f"\nthreads with {count} sessions (ms CPU/s, median of rounds):   A |      B")
        median = {
            name: {
                t: statistics.median(v + [0.0] * (args.rounds - len(v)))
                for t, v in threads[(count, name)].items()
            }
            for name in ("A", "B")
        }
        top = sorted(set(median["A"]) | set(median["B"]), key=lambda t: -max(
            median["A"].get(t, 0.0), median["B"].get(t, 0.0)))  # fmt: skip
        for thread in top[: args.top]:
            a_ms, b_ms = median["A"].get(thread, 0.0), median["B"].get(thread, 0.0)
            print(f"  {thread:<40} {a_ms:7.2f} | {b_ms:7.2f}")
    print(f"\nnote: {NOISE_CAVEAT}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="windows per daemon and scenario")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one window")
    parser.add_argument("--settle", type=float, default=1.0, help="pause after opening sessions")
    parser.add_argument(
        "--sessions",
        type=lambda s: [int(x) for x in s.split(",")],
        default=list(SCENARIOS),
        help="idle session counts, ascending (default 0,1,10)",
    )
    parser.add_argument(
        "--baseline",
        choices=("collector-1s", "same"),
        default="collector-1s",
        help="B's configuration: collector period 1 s, or the same as A",
    )
    parser.add_argument("--baseline-pythonpath", help="B runs the agentd installed in DIR")
    parser.add_argument("--top", type=int, default=8, help="threads listed per scenario")
    parser.add_argument("--cgroup-backend", choices=("auto", "v1", "v2"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("idle_cpu: needs root (agentd creates cgroups)", file=sys.stderr)
        return 2
    if args.sessions != sorted(args.sessions):
        parser.error("--sessions must be ascending (sessions are opened, never closed)")
    baseline_config = "[collector]\nperiod_ms = 1000\n" if args.baseline == "collector-1s" else ""
    args.baseline_text = (
        f"agentd from {args.baseline_pythonpath}" if args.baseline_pythonpath else "this agentd"
    ) + (", [collector] period_ms = 1000" if baseline_config else ", default config")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    work_a = Path(tempfile.mkdtemp(prefix="agentd-idle-a-"))
    work_b = Path(tempfile.mkdtemp(prefix="agentd-idle-b-"))
    a = Daemon(work_a, args.cgroup_backend)
    b = Daemon(work_b, args.cgroup_backend, baseline_config, args.baseline_pythonpath)
    print(f"load at start {os.getloadavg()[0]:.2f}; note: {NOISE_CAVEAT}", flush=True)
    status = 0
    try:
        a.start()
        b.start()
        status = run(args, a, b)
    except KeyboardInterrupt:
        status = 130
    except RuntimeError as e:
        print(f"idle_cpu: {e}", file=sys.stderr)
        status = 1
    finally:
        for daemon, work in ((a, work_a), (b, work_b)):
            print(f"daemon {daemon.root}: {daemon.stop()}")
            left = daemon.remove_cgroups()
            if left:
                print(f"error: cgroups left behind: {', '.join(left)}", file=sys.stderr)
                status = status or 1
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
