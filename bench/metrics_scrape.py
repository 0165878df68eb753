#!/usr/bin/env python3
"""What a Prometheus scrape of agentd costs, and how it grows with open sessions.

The metrics are collected at scrape time (docs/observability.md): each scrape reads
the node's and every open session's cgroup files and /proc/pressure. This measures,
interleaved in one loop so both see the same machine, a scrape of /metrics (HTTP,
all series) against a GetNodeStatus call (gRPC over the unix socket, the cheapest
call that reports node figures), with 0 and then more open sessions. Printed: p50
and p99 of each, their ratio, the daemon's CPU time per scrape, the spread of the
per-round ratio, and the load average. The machine is shared: quote the ratios and
their spread, not an absolute time.

    cd /tmp && sudo python /path/to/agentd/bench/metrics_scrape.py --sessions 0 16 64
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))

from toolcall_latency import Daemon, gc_paused, percentile

from agentd.sdk.client import Client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        return len(response.read())


def measure(url: str, client: Client, runs: int) -> tuple[list[float], list[float], int]:
    scrapes: list[float] = []
    calls: list[float] = []
    size = 0
    for i in range(runs):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for which in order:
            started = time.perf_counter()
            if which == 0:
                size = scrape(url)
                scrapes.append(time.perf_counter() - started)
            else:
                client.status()
                calls.append(time.perf_counter() - started)
    return scrapes, calls, size


def daemon_cpu_per_call(process: psutil.Process, call: object, runs: int) -> float:
    """The daemon's CPU seconds per call, over `runs` calls of one kind only."""
    before = sum(process.cpu_times()[:2])
    for _ in range(runs):
        call()  # type: ignore[operator]
    return (sum(process.cpu_times()[:2]) - before) / runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[0, 16, 64])
    parser.add_argument("--runs", type=int, default=200, help="pairs per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with tempfile.TemporaryDirectory(prefix="agentd-bench-") as tmp:
        daemon = Daemon(Path(tmp), backend=None)
        daemon.config.write_text(f'[prometheus]\nlisten = "127.0.0.1:{port}"\n')
        daemon.start()
        sessions = []
        left: list[str] = []
        try:
            assert daemon.process is not None
            process = psutil.Process(daemon.process.pid)
            print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            print(f"{os.cpu_count()} CPUs; {args.rounds} rounds x {args.runs} pairs per size\n")
            header = (
                f"{'sessions':>8}  {'series KiB':>10}  {'scrape p50':>10}  {'p99':>8}  "
                f"{'status p50':>10}  {'ratio p50':>9}  {'ratio min-max':>13}  "
                f"{'daemon CPU: scrape':>18}  {'status':>7}"
            )
            print(header)
            with Client(daemon.socket) as client:
                measure(url, client, 20)  # warm-up: imports, first connections
                for count in args.sessions:
                    while len(sessions) < count:
                        sessions.append(client.session(f"bench-{len(sessions)}", memory="64M"))
                    all_scrapes: list[float] = []
                    all_calls: list[float] = []
                    ratios = []
                    size = 0
                    for _ in range(args.rounds):
                        with gc_paused():
                            scrapes, calls, size = measure(url, client, args.runs)
                        all_scrapes += scrapes
                        all_calls += calls
                        ratios.append(statistics.median(scrapes) / statistics.median(calls))
                    cpu_scrape = daemon_cpu_per_call(process, lambda: scrape(url), args.runs)
                    cpu_status = daemon_cpu_per_call(process, client.status, args.runs)
                    s50 = statistics.median(all_scrapes)
                    c50 = statistics.median(all_calls)
                    print(
                        f"{count:>8}  {size / 1024:>10.1f}  {s50 * 1e3:>8.2f}ms  "
                        f"{percentile(all_scrapes, 99) * 1e3:>6.2f}ms  {c50 * 1e3:>8.2f}ms  "
                        f"{s50 / c50:>9.1f}  {min(ratios):>6.1f}-{max(ratios):<6.1f}  "
                        f"{cpu_scrape * 1e3:>16.2f}ms  {cpu_status * 1e3:>5.2f}ms"
                    )
                for session in sessions:
                    session.close()
                sessions.clear()
            print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        finally:
            print(daemon.stop())
            left = daemon.remove_cgroups()
    if left:
        print(f"left behind: {left}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
