"""In-kernel guards and what the daemon decides when one trips (docs/enforcement.md).

maps.py          the guard's BPF maps (bpf/tracker.c, -DGUARD): limits in, sums out
guard_policy.py  pure decisions: grant more memory, wait for room, or kill
feedback.py      Enforcement records and the suggestion an agent can act on
guard.py         the service: fills the maps per tool call, handles the kernel's records
metrics.py       Prometheus counters
"""
