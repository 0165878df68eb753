"""Whom the high session waited behind in `bench/isolation.py`: a scheduler trace read.

Record the scheduler while the bench runs, then attribute each wait of every high
replayer in a run queue (from its wake-up, or its preemption, to its next switch-in) to
the tasks that ran on that CPU meanwhile, grouped as the bench's own roles (its lows,
each daemon, the bench process) and everything else on the machine:

    perf record -e sched:sched_switch -e sched:sched_wakeup -e sched:sched_wakeup_new \\
        -a -m 4096 -o /tmp/sched.data &
    sudo .venv/bin/python bench/isolation.py --runs 2 --json /tmp/iso.json
    kill -INT %1
    perf script -i /tmp/sched.data -F comm,pid,tid,cpu,time,event,trace > /tmp/sched.txt
    python3 bench/isolation_waits.py /tmp/sched.txt /tmp/iso.json

The pids come from the JSON (`environment.pids_per_run`). Approximate: a queued task's
migration is not followed (its wait is charged to the CPU it was queued on), and time
that CPU spent idle (`swapper`) during a wake-up counts under "other". Findings:
docs/enforcement.md, "The high-priority session's allocation latency".
"""

from __future__ import annotations

import collections
import json
import re
import sys

LINE = re.compile(r"^\s*(\S.*?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s+(.*)$")
FIELD = re.compile(r"(\w+)=(\S+)")


def roles_of(report: dict) -> dict[int, str]:
    roles: dict[int, str] = {}
    for run in report["environment"]["pids_per_run"]:
        for name, pid in run["daemons"].items():
            roles[pid] = f"daemon:{name}"
        roles[run["bench"]] = "bench"
        roles[run["alone"]] = "alone:high"
        for strategy, got in run.items():
            if isinstance(got, dict) and strategy != "daemons":
                roles |= {pid: f"{strategy}:{role}" for role, pid in got.items()}
    return roles


def attribute(lines: list[str], roles: dict[int, str]) -> dict[int, tuple[list, dict]]:
    """Per high replayer: its waits (s) and the seconds each role ran during them."""
    targets = {pid for pid, r in roles.items() if r.endswith(":high")}
    tgid: dict[int, int] = {}  # thread -> process, from each event's current task
    comm: dict[int, str] = {}
    current: dict[int, tuple[int, float]] = {}  # cpu -> (task, since)
    waiting: dict[int, tuple[float, int]] = {}  # target -> (since, cpu queued on)
    waits: dict[int, list[float]] = {t: [] for t in targets}
    behind: dict[int, collections.Counter] = {t: collections.Counter() for t in targets}
    for line in lines:
        m = LINE.match(line)
        if not m:
            continue
        _, pid, tid, cpu_s, t_s, event, rest = m.groups()
        cpu, t = int(cpu_s), float(t_s)
        tgid[int(tid)] = int(pid)
        f = dict(FIELD.findall(rest))
        if event.endswith("sched_switch"):
            prev, nxt = int(f["prev_pid"]), int(f["next_pid"])
            comm[nxt] = f["next_comm"]
            if cpu in current:
                ran, since = current[cpu]
                for target, (start, queued) in waiting.items():
                    if queued == cpu and ran != target and t > max(since, start):
                        role = roles.get(tgid.get(ran, ran), "other:" + comm.get(ran, "?"))
                        behind[target][role] += t - max(since, start)
            current[cpu] = (nxt, t)
            if prev in targets and f["prev_state"].startswith("R"):
                waiting.setdefault(prev, (t, cpu))
            if nxt in waiting:
                waits[nxt].append(t - waiting.pop(nxt)[0])
        elif "sched_wakeup" in event and int(f["pid"]) in targets:
            waiting.setdefault(int(f["pid"]), (t, int(f["target_cpu"])))
    return {t: (waits[t], behind[t]) for t in targets}


def main() -> int:
    trace, bench_json = sys.argv[1:3]
    with open(bench_json) as f:
        roles = roles_of(json.load(f))
    with open(trace) as f:
        found = attribute(f.readlines(), roles)
    for target, (waits, behind) in found.items():
        if not waits:
            continue
        total, ordered = sum(waits), sorted(waits)
        print(
            f"{roles[target]} pid {target}: {len(waits)} waits, {total * 1e3:.0f} ms in all, "
            f"p99 {ordered[int(0.99 * (len(ordered) - 1))] * 1e3:.2f} ms, "
            f"max {ordered[-1] * 1e3:.1f} ms"
        )
        groups: collections.Counter = collections.Counter()
        for role, seconds in behind.items():
            groups[role.split(":")[0] if role.startswith("other:") else role] += seconds
        for role, seconds in groups.most_common():
            print(f"    behind {role}: {seconds * 1e3:.0f} ms ({100 * seconds / total:.0f}%)")
        others = [(r[6:], s) for r, s in behind.most_common() if r.startswith("other:")][:8]
        print("    other, by name (ms): " + ", ".join(f"{n} {s * 1e3:.0f}" for n, s in others))
    return 0


if __name__ == "__main__":
    sys.exit(main())
