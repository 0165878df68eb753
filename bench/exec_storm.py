"""Exec storm: N short processes inside a tool call, as fast as the machine spawns them,
captured by each tracking source.

    .venv/bin/python bench/exec_storm.py [--n 5000] [--workers 2] [--runs 3]
        [--sources ebpf,netlink,procfs]

The spawner is a small C program (vfork + execve of /bin/true, W workers) so the rate
is not limited by Python. For each run it prints captured/expected processes, the
spawn rate, events per second, the losses the source reported, and the daemon's CPU
seconds per 1,000 events (this process's user+system time while the events flowed).
Root is needed (cgroups, BPF, the proc connector). Print the load average with the
figures: another tenant of the machine changes them.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tracking_workload import launch, pids_group, wait_until

from agentd.tracking import Tracker

SPAWNER_C = r"""
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = atoi(argv[1]), w = atoi(argv[2]);
    char *args[] = {"/bin/true", NULL}, *env[] = {NULL};
    for (int i = 0; i < w; i++) {
        if (fork() == 0) {
            for (int j = 0; j < n / w; j++) {
                pid_t p = vfork();
                if (p == 0) { execve(args[0], args, env); _exit(127); }
                waitpid(p, NULL, 0);
            }
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {}
    return 0;
}
"""


def build_spawner(tmp: str) -> str:
    src, out = os.path.join(tmp, "spawner.c"), os.path.join(tmp, "spawner")
    Path(src).write_text(SPAWNER_C)
    subprocess.run(["cc", "-O2", "-o", out, src], check=True)
    return out


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def one_run(tracker: Tracker, spawner: str, n: int, workers: int, run: int) -> dict:
    tc = f"tc-storm-{tracker.source_name}-{run}"
    expected = 1 + workers + (n // workers) * workers
    lost0 = tracker.loss().lost
    with pids_group() as group:
        cpu0, t0 = cpu_seconds(), time.monotonic()
        launched = launch(
            f"exec {spawner} {n} {workers}", group,
            lambda pid: tracker.begin(tc, pid, group.procs_file),
        )  # fmt: skip
        launched.proc.wait(timeout=120)
        spawn_s = time.monotonic() - t0
        tree = tracker.tree(tc)
        assert tree is not None
        wait_until(lambda: not tree.live and tree.counts["exit"] >= expected, timeout=10)
        time.sleep(0.2)  # let the source catch up with stragglers
        cpu = cpu_seconds() - cpu0 - 0.0
        with tracker.locked():
            captured = len(tree.nodes)
            events = sum(tree.counts.values())
    tracker.end(tc, exit_code=0)
    return {
        "source": tracker.source_name,
        "run": run,
        "captured": captured,
        "expected": expected,
        "spawn_per_s": round((expected - 1) / spawn_s),
        "events": events,
        "events_per_s": round(events / spawn_s),
        "lost_reported": tracker.loss().lost - lost0,
        "cpu_s_per_1k_events": round(cpu / max(events, 1) * 1000, 4),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sources", default="ebpf,netlink,procfs")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}, cpus: {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        spawner = build_spawner(tmp)
        for name in args.sources.split(","):
            rss0 = int(Path("/proc/self/statm").read_text().split()[1]) * 4096 >> 20
            t0 = time.monotonic()
            tracker = Tracker.start(name, max_nodes=args.n + 100)
            start_s = time.monotonic() - t0
            rss1 = int(Path("/proc/self/statm").read_text().split()[1]) * 4096 >> 20
            print(f"{name}: start {start_s:.2f} s, RSS {rss0} -> {rss1} MiB ({tracker.reason})")
            try:
                for run in range(args.runs):
                    print("  ", one_run(tracker, spawner, args.n, args.workers, run))
            finally:
                tracker.stop()
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
