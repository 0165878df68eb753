"""Enforcement: in-kernel guards, priority classes and the node pressure policy
(docs/enforcement.md, docs/pressure.md).

maps.py          the guard's BPF maps (bpf/tracker.c, -DGUARD): limits in, sums out
guard_policy.py  pure decisions: grant more memory, wait for room, or kill
feedback.py      Enforcement records and the suggestion an agent can act on
guard.py         the service: fills the maps per tool call, handles the kernel's records
metrics.py       Prometheus counters
priorities.py    priority class -> cgroup weights, protection and throttle thresholds
pressure.py      the pressure monitor and the policy's state machine
controller.py    runs the policy through agentd.control
"""
