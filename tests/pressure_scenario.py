"""The "low priority throttled, frozen, resumed while high priority keeps running"
scenario, shared by the host test (cgroup v1) and the VM test (cgroup v2 + systemd).

Two sessions under a small node allocatable: interactive and batch, each with a
CPU-bound and a memory-growing tool call (tests/pressure_workload.py). Together they
push agentd's sessions group over [pressure] usage_enter; the policy throttles the
batch session, then freezes it; the interactive memory tool call then ends (the load
goes away), and the batch session must be resumed. Everything observed is returned
for the test to assert on; the knobs are read from cgroupfs by a `Knobs` of the
cgroup version at hand.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agentd.sdk import Client

WORKLOAD = str(Path(__file__).resolve().parent / "pressure_workload.py")
MiB = 1 << 20

#: The node allocatable the scenario's config gives agentd, and what each session takes.
ALLOCATABLE_MB = 600
SESSION_MB = 280
GROW_MB = 200

#: The [pressure] and [node] tables of the scenario (node PSI off: this host is shared,
#: other people's load must not decide the test; the signal is agentd's own usage).
PRESSURE_TABLES = """
[pressure]
interval_seconds = 0.25
memory_psi_enter = 0
memory_psi_exit = 0
cpu_psi_enter = 0
usage_enter = 0.6
usage_exit = 0.5
guard_window_seconds = 0
dwell_seconds = 2
min_rewrite_interval_seconds = 1
"""


def config(total_memory: int) -> str:
    reserved = total_memory - ALLOCATABLE_MB * MiB
    # No process tracking: not what is tested, and compiling the eBPF programs takes
    # minutes in the emulated VM.
    tracking = '[tracking]\nsource = "off"\n'
    return f"[node]\nreserved_memory = {reserved}\n{tracking}{PRESSURE_TABLES}"


@dataclass
class Knobs:
    """How to read one session group's knobs on this cgroup version."""

    cpu_quota: Callable[[str], str]  # the CPU limit file's content
    memory_high: Callable[[str], str]  # memory.high (v2) / soft limit (v1)
    frozen: Callable[[str], bool]
    cpu_idle: Callable[[str], str]  # cpu.idle of the session group


@dataclass
class Observed:
    interactive_knobs: set[tuple[str, str, bool]] = field(default_factory=set)
    batch_initial: tuple[str, str] = ("", "")
    #: cpu.idle of the batch and the interactive session groups, both open
    cpu_idle: tuple[str, str] = ("", "")
    batch_throttled: tuple[str, str] | None = None
    throttled_after: float | None = None  # seconds after the batch load started
    frozen_after: float | None = None
    resumed_after: float | None = None  # seconds after the interactive load went away
    batch_after_resume: tuple[str, str, bool] | None = None
    interactive_rate_alone: float = 0.0  # work units / s
    interactive_rate_under_pressure: float = 0.0  # while batch frozen
    batch_progress_while_frozen: int = -1
    batch_progress_after_resume: int = 0
    notes: list[str] = field(default_factory=list)


def read_progress(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def rate(path: Path, seconds: float) -> float:
    start, t0 = read_progress(path), time.monotonic()
    time.sleep(seconds)
    return (read_progress(path) - start) / (time.monotonic() - t0)


def wait_for(pred: Callable[[], bool], timeout: float, every: Callable[[], None]) -> float | None:
    """Seconds until `pred` held (calling `every` each poll), None on timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        every()
        if pred():
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def run(socket: str, knobs: Knobs, workdir: Path, timeout: float = 60.0) -> Observed:
    obs = Observed()
    py = sys.executable
    progress = {n: workdir / f"{n}.progress" for n in ("ia-cpu", "ia-mem", "ba-cpu", "ba-mem")}
    with Client(socket) as client:
        ia = client.session("pressure-ia", memory=SESSION_MB * MiB, priority="interactive")
        ba = client.session("pressure-ba", memory=SESSION_MB * MiB, priority="batch")
        procs = []
        try:

            def watch_interactive() -> None:
                obs.interactive_knobs.add(
                    (knobs.cpu_quota(ia.id), knobs.memory_high(ia.id), knobs.frozen(ia.id))
                )

            procs.append(ia.start([py, WORKLOAD, "cpu", str(progress["ia-cpu"])]))
            ia_mem = ia.start([py, WORKLOAD, "mem", str(progress["ia-mem"]), str(GROW_MB)])
            procs.append(ia_mem)
            time.sleep(timeout / 20)  # grown (200 MB at 20 MB / 0.1 s), pythons started
            obs.interactive_rate_alone = rate(progress["ia-cpu"], timeout / 20)
            watch_interactive()
            obs.batch_initial = (knobs.cpu_quota(ba.id), knobs.memory_high(ba.id))
            obs.cpu_idle = (knobs.cpu_idle(ba.id), knobs.cpu_idle(ia.id))

            procs.append(ba.start([py, WORKLOAD, "cpu", str(progress["ba-cpu"])]))
            procs.append(ba.start([py, WORKLOAD, "mem", str(progress["ba-mem"]), str(GROW_MB)]))

            def throttled() -> bool:
                # Both knobs: Control writes memory high, then the CPU limit, so a read
                # between the two writes sees only the first (seen in the VM run).
                now = (knobs.cpu_quota(ba.id), knobs.memory_high(ba.id))
                if all(a != b for a, b in zip(now, obs.batch_initial, strict=True)):
                    obs.batch_throttled = now
                    return True
                return False

            obs.throttled_after = wait_for(throttled, timeout, watch_interactive)
            if obs.throttled_after is None:
                obs.notes.append("batch never throttled")
                return obs
            frozen_in = wait_for(lambda: knobs.frozen(ba.id), timeout, watch_interactive)
            if frozen_in is None:
                obs.notes.append("batch never frozen")
                return obs
            obs.frozen_after = obs.throttled_after + frozen_in
            before = read_progress(progress["ba-cpu"])
            obs.interactive_rate_under_pressure = rate(progress["ia-cpu"], timeout / 20)
            watch_interactive()
            still_frozen = knobs.frozen(ba.id)
            obs.batch_progress_while_frozen = read_progress(progress["ba-cpu"]) - before
            if not still_frozen:
                obs.notes.append("batch thawed during the frozen window")

            # The load goes away: the interactive session's memory tool call ends.
            ia_mem.kill()
            ia_mem.wait(30)
            procs.remove(ia_mem)
            obs.resumed_after = wait_for(
                lambda: (
                    not knobs.frozen(ba.id)
                    and (knobs.cpu_quota(ba.id), knobs.memory_high(ba.id)) == obs.batch_initial
                ),
                timeout,
                watch_interactive,
            )
            obs.batch_after_resume = (
                knobs.cpu_quota(ba.id),
                knobs.memory_high(ba.id),
                knobs.frozen(ba.id),
            )
            before = read_progress(progress["ba-cpu"])
            time.sleep(timeout / 30)
            obs.batch_progress_after_resume = read_progress(progress["ba-cpu"]) - before
            return obs
        finally:
            for proc in procs:
                with contextlib.suppress(Exception):
                    proc.kill()
                    proc.wait(30)
            for session in (ia, ba):
                with contextlib.suppress(Exception):
                    session.close()
