"""The contract every tracking source implements, and the automatic choice among them.

Order of preference: ebpf (lossless in practice, attribution in the kernel, losses
counted), netlink proc connector (every host event crosses into user space, losses
counted from sequence numbers), procfs scanning (lossy by nature, says so).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Protocol

from agentd.tracking.events import LossReport, ProcEvent

log = logging.getLogger("agentd.tracking")

Sink = Callable[[ProcEvent], None]
SOURCE_NAMES = ("ebpf", "netlink", "procfs")


class EventSource(Protocol):
    #: "ebpf", "netlink" or "procfs"
    name: str
    #: whether the source sees every event it does not count as lost
    lossless: bool

    def start(self, sink: Sink) -> None:
        """Begin delivering events to `sink`, on the source's own thread."""
        ...

    def stop(self) -> None: ...

    def watch(self, pid: int, key: int, cgroup_procs: str | None = None) -> None:
        """Attribute process `pid` and everything it forks from now on to `key`.

        `cgroup_procs` (a cgroup.procs file) lets sources that cannot see forks
        (procfs) find processes whose parent they missed."""
        ...

    def unwatch(self, key: int) -> None:
        """Stop attributing anything to `key` (processes still alive are forgotten)."""
        ...

    def loss(self) -> LossReport: ...


class SourceUnavailable(Exception):
    """A source cannot run here; the message says why."""


def make_source(name: str, process_usage: bool = True, guard: bool = False) -> EventSource:
    """`process_usage`: per-process CPU time and peak RSS (eBPF only; costs every
    context switch and RSS change on the host ~150-250 ns, see docs/tracking.md).
    `guard`: compile the in-kernel guards in (eBPF only; docs/enforcement.md)."""
    if name == "ebpf":
        from agentd.tracking.ebpf import EbpfSource

        return EbpfSource(usage=process_usage, guard=guard)
    if name == "netlink":
        from agentd.tracking.netlink import NetlinkSource

        return NetlinkSource()
    if name == "procfs":
        from agentd.tracking.procfs import ProcfsSource

        return ProcfsSource()
    raise ValueError(f"unknown tracking source {name!r}; expected one of {SOURCE_NAMES}")


def choose_source(
    sink: Sink, prefer: str = "auto", process_usage: bool = True, guard: bool = False
) -> tuple[EventSource, str]:
    """Start the best source that works here; returns it and the reason for the choice.

    `prefer` names a source to use (no fallback: a misconfiguration should fail
    loudly) or "auto"."""
    if prefer != "auto":
        source = make_source(prefer, process_usage, guard)
        source.start(sink)
        return source, f"{prefer}: configured"
    why_not: list[str] = []
    for name in SOURCE_NAMES:
        if name != "procfs" and os.geteuid() != 0:
            why_not.append(f"{name}: needs root")
            continue
        try:
            source = make_source(name, process_usage, guard)
            source.start(sink)
        except Exception as e:
            # Anything a source raises while starting means "not here"; say what.
            why_not.append(f"{name}: {type(e).__name__}: {e}")
            log.warning("tracking source %s unavailable: %s", name, e)
            continue
        reason = name if not why_not else f"{name} (" + "; ".join(why_not) + ")"
        return source, reason
    raise SourceUnavailable("; ".join(why_not))
