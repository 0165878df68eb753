"""The eBPF source: bpf/tracker.c loaded with bcc, its ring buffer polled on a thread.

Attribution happens in the kernel (see bpf/tracker.c); this module turns ring buffer
records into ProcEvents, pairs each exec with the argv read at execve() entry, and
sums the kernel's loss counters.
"""

from __future__ import annotations

import ctypes as ct
import logging
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentd.tracking.events import GuardRecord, Kind, LossReport, ProcEvent
from agentd.tracking.procinfo import read_argv, read_usage
from agentd.tracking.source import Sink, SourceUnavailable

EV_FORK, EV_EXEC, EV_EXIT, EV_ARGS, EV_GUARD, EV_OOM = 1, 2, 3, 4, 5, 6
F_EXIT_CODE, F_EXIT_SIGNAL, F_TRUNCATED, F_CPU, F_RSS = 1, 2, 4, 8, 16
F_EXECUTOR = 512
_EXIT_FIGURES = struct.Struct("=Qq")  # struct exit_event after the header: cpu_ns, peak_rss
# struct guard_event after the header: value, limit, session_value, session_limit, procs,
# reason, action, crossed_ns
_GUARD_FIGURES = struct.Struct("=qqqqqIIQ")
COUNTERS = ("ringbuf_lost", "map_full", "argv_truncated", "emitted", "held", "runq_map_full")
# The run-queue latency programs (RUNQ_LATENCY in tracker.c): raw tracepoint -> program.
RUNQ_PROGRAMS = (
    ("sched_wakeup", "runq_wakeup"),
    ("sched_wakeup_new", "runq_wakeup_new"),
    ("sched_switch", "runq_switch"),
    ("sched_process_exit", "runq_exit"),
)
# Map sizes: pointers of tasks seen / waiting (LRU), histogram buckets, tool calls.
RUNQ_CFLAGS = [
    "-DRUNQ_LATENCY",
    "-DRUNQ_TASKS=16384",
    "-DRUNQ_HIST_ENTRIES=32768",
    "-DRUNQ_KEYS=4096",
]
TRACEFS = "/sys/kernel/tracing"
_PENDING_ARGS_MAX = 4096

log = logging.getLogger("agentd.tracking")


class _Header(ct.Structure):
    # Mirrors `struct event` in bpf/tracker.c.
    _fields_ = [
        ("key", ct.c_uint64),
        ("ts", ct.c_uint64),
        ("type", ct.c_uint32),
        ("pid", ct.c_uint32),
        ("ppid", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("code", ct.c_int32),
        ("len", ct.c_uint32),
        ("comm", ct.c_char * 16),
    ]


_HEADER_SIZE = ct.sizeof(_Header)


def bpf_source_path() -> Path:
    """tracker.c: installed next to the package (setup.py copies bpf/ into agentd/bpf/),
    or the repository's bpf/ when running from a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "bpf" / "tracker.c", here.parent.parent / "bpf" / "tracker.c"):
        if candidate.is_file():
            return candidate
    raise SourceUnavailable("bpf/tracker.c not found next to the agentd package")


def ensure_tracefs() -> None:
    """bcc reads tracepoint formats from tracefs, which is not mounted at boot here."""
    if os.path.isdir(f"{TRACEFS}/events/sched"):
        return
    rc = os.system(f"mount -t tracefs nodev {TRACEFS} 2>/dev/null")
    if rc != 0 or not os.path.isdir(f"{TRACEFS}/events/sched"):
        raise SourceUnavailable(f"tracefs is not mounted at {TRACEFS} and mounting it failed")


class EbpfSource:
    name = "ebpf"
    lossless = True
    #: an executor's children can be held at their first system call until placed
    can_hold_children = True

    def __init__(
        self,
        ringbuf_pages: int = 2048,
        max_procs: int = 65536,
        usage: bool = True,
        guard: bool = False,
        runq: bool = True,
    ) -> None:
        # 2048 pages = 8 MiB: ~150k fork/exit records or ~2k full argv records of slack
        # while the consumer thread is descheduled.
        self.ringbuf_pages = ringbuf_pages
        self.max_procs = max_procs
        # CPU time and peak RSS per process: two programs on host-wide hot paths (every
        # context switch, every RSS counter change); False leaves them out, and exits
        # then carry None for both (docs/tracking.md has their cost).
        self.usage = usage
        # The in-kernel guards (agentd/enforcement, docs/enforcement.md): their maps and
        # programs are compiled in, records go to `on_guard` (set before start()).
        self.guard = guard
        self.on_guard: Callable[[GuardRecord], None] | None = None
        # The run-queue latency programs are compiled in (maps and programs) but only
        # attached by enable_runq(): they cost every wake-up and context switch.
        self.runq = runq
        self._runq_links: list[int] = []
        self.load_seconds = 0.0
        self._bpf: Any = None
        self._sink: Sink | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._pending_args: dict[int, tuple[tuple[str, ...], bool]] = {}
        self.events_received = 0
        self._holding: set[int] = set()  # keys of executors whose children are held
        self._hold_lock = threading.Lock()

    # ---- lifecycle --------------------------------------------------------------

    def start(self, sink: Sink) -> None:
        try:
            import bcc
        except ImportError as e:
            raise SourceUnavailable(f"bcc is not importable: {e}") from e
        ensure_tracefs()
        text = bpf_source_path().read_bytes()
        t0 = time.monotonic()
        try:
            self._bpf = self._compile(bcc, text)
        except Exception as e:
            if not self.guard:
                raise SourceUnavailable(f"bcc could not compile or load tracker.c: {e}") from e
            # Process trees matter more than the guards: without them, not at all.
            log.warning("the eBPF guards did not load (%s); tracking without them", e)
            self.guard = False
            try:
                self._bpf = self._compile(bcc, text)
            except Exception as e2:
                raise SourceUnavailable(f"bcc could not compile or load tracker.c: {e2}") from e2
        self.load_seconds = time.monotonic() - t0
        self._sink = sink
        self._bpf[b"events"].open_ring_buffer(self._on_record)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="agentd-ebpf", daemon=True)
        self._thread.start()

    def _compile(self, bcc: Any, text: bytes) -> Any:
        try:
            return bcc.BPF(text=text, cflags=self._cflags())
        except Exception as e:
            if not self.runq:
                raise
            # The run-queue histogram is an extra: tracking goes on without it.
            log.warning("the run-queue latency programs did not compile (%s); without them", e)
            self.runq = False
            return bcc.BPF(text=text, cflags=self._cflags())

    def _cflags(self) -> list[str]:
        return [
            f"-DRINGBUF_PAGES={self.ringbuf_pages}",
            f"-DMAX_PROCS={self.max_procs}",
            *(["-DTRACK_USAGE"] if self.usage else []),
            *(["-DHAVE_GROUP_DEAD"] if _exit_has_group_dead() else []),
            *(["-DGUARD", f"-DMAX_GUARDS={self.max_procs // 4}"] if self.guard else []),
            *(["-DOOM_HAS_RSS"] if self.guard and _oom_has_rss() else []),
            *(RUNQ_CFLAGS if self.runq else []),
            "-Wno-macro-redefined",
        ]

    def stop(self) -> None:
        self.disable_runq()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def _run(self) -> None:
        bpf = self._bpf
        while not self._stop.is_set():
            # The callback runs on this thread; the GIL is released while polling.
            bpf.ring_buffer_poll(100)
        bpf.ring_buffer_consume()

    # ---- attribution --------------------------------------------------------------

    def watch(
        self, pid: int, key: int, cgroup_procs: str | None = None, hold_children: bool = False
    ) -> None:
        procs = self._bpf[b"procs"]
        leaf = procs.Leaf()
        leaf.key = key
        if hold_children:
            leaf.flags = F_EXECUTOR
            self._hold(key)
        # The kernel counts from now on; what the process used before (a launcher that
        # already ran, a seeded process) comes from /proc, so the figures at exit cover
        # its whole life. Sizes seeded here belong to its current mm (mm_id 0 = adopt).
        usage = read_usage(pid) if self.usage else None
        if usage is not None:
            leaf.cpu_ns = usage.cpu_ns
            leaf.peak_rss = usage.hwm_bytes
            leaf.rss[0], leaf.rss[1], leaf.rss[2], leaf.rss[3] = (
                usage.file_bytes, usage.anon_bytes, usage.swap_bytes, usage.shmem_bytes,
            )  # fmt: skip
        procs[procs.Key(pid)] = leaf

    def unwatch(self, key: int) -> None:
        procs = self._bpf[b"procs"]
        for k, v in list(procs.items()):
            if v.key == key:
                procs.pop(k, None)
        self._unhold(key)

    # ---- run-queue latency (RUNQ_LATENCY in tracker.c, read by agentd.metrics.runqlat) ----

    def enable_runq(self) -> None:
        """Attach the run-queue latency programs. bcc attaches one program per raw
        tracepoint name and the usage program already holds sched_switch, so these are
        attached through libbcc and their link descriptors kept here."""
        if not self.runq or self._bpf is None:
            raise SourceUnavailable("the run-queue latency programs are not loaded")
        if self._runq_links:
            return
        from bcc import BPF
        from bcc.libbcc import lib

        try:
            for tp, fn_name in RUNQ_PROGRAMS:
                fn = self._bpf.load_func(fn_name.encode(), BPF.RAW_TRACEPOINT)
                fd = lib.bpf_attach_raw_tracepoint(fn.fd, tp.encode())
                if fd < 0:
                    raise SourceUnavailable(f"attaching {fn_name} to {tp} failed")
                self._runq_links.append(fd)
        except Exception:
            self.disable_runq()
            raise

    def disable_runq(self) -> None:
        """Detach them (closing a raw tracepoint link detaches its program)."""
        links, self._runq_links = self._runq_links, []
        for fd in links:
            os.close(fd)
        if links:
            # Waits begun while attached would never be consumed: clear them.
            self._bpf[b"runq_start"].clear()

    @property
    def runq_enabled(self) -> bool:
        return bool(self._runq_links)

    def program_fd(self, fn_name: str) -> int:
        """The fd of a loaded program (its fdinfo has the kernel's run count and time
        when kernel.bpf_stats_enabled is on: bench/runqlat_cost.py)."""
        from bcc import BPF

        return int(self._bpf.load_func(fn_name.encode(), BPF.RAW_TRACEPOINT).fd)

    # ---- holding executors' children (see hold_at_first_syscall in tracker.c) --------

    def _hold(self, key: int) -> None:
        with self._hold_lock:
            if not self._holding:
                # Only while an executor exists: every system call on the host pays for it.
                self._bpf.attach_raw_tracepoint(tp=b"sys_enter", fn_name=b"hold_at_first_syscall")
            self._holding.add(key)

    def _unhold(self, key: int) -> None:
        with self._hold_lock:
            if key not in self._holding:
                return
            self._holding.discard(key)
            if not self._holding:
                self._bpf.detach_raw_tracepoint(tp=b"sys_enter")

    @property
    def holding(self) -> bool:
        return bool(self._holding)

    def release_held(self, pid: int) -> bool:
        """Take `pid` off the hold list. True when the kernel got there first: the child
        is (or is about to be) stopped and needs a SIGCONT."""
        held = self._bpf[b"held"]
        try:
            del held[held.Key(pid)]
        except KeyError:
            return True
        return False

    def table(self, name: str) -> Any:
        """A BPF map of the loaded program (the guard's maps: agentd.enforcement.maps)."""
        return self._bpf[name.encode()]

    def watched(self) -> dict[int, int]:
        """pid -> key, as the kernel has it now."""
        return {k.value: v.key for k, v in self._bpf[b"procs"].items()}

    # ---- losses ------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        table = self._bpf[b"counters"]
        return {name: int(table.sum(table.Key(i)).value) for i, name in enumerate(COUNTERS)}

    def lost_events(self) -> int:
        """Events the kernel could not write into the ring buffer."""
        return self.counters()["ringbuf_lost"]

    def loss(self) -> LossReport:
        c = self.counters()
        # A full procs map loses attribution of a whole subtree: that is loss too.
        return LossReport(
            source=self.name, lost=c["ringbuf_lost"] + c["map_full"], exact=True, detail=c
        )

    # ---- decoding ------------------------------------------------------------------

    def _on_record(self, _ctx: Any, data: int, size: int) -> int:
        self.events_received += 1
        h = _Header.from_address(data)
        payload = ct.string_at(data + _HEADER_SIZE, h.len) if h.len else b""
        comm = h.comm.decode(errors="replace")
        if h.type == EV_ARGS:
            if len(self._pending_args) >= _PENDING_ARGS_MAX:
                self._pending_args.clear()  # only failed execs of vanished threads pile up
            argv = tuple(a.decode(errors="replace") for a in payload.rstrip(b"\0").split(b"\0"))
            self._pending_args[h.ppid] = (argv, bool(h.flags & F_TRUNCATED))
            return 0
        if h.type in (EV_GUARD, EV_OOM):
            self._guard_record(h, payload, comm)
            return 0
        if h.type == EV_FORK:
            ev = ProcEvent(Kind.FORK, h.key, h.pid, h.ts, ppid=h.ppid, comm=comm)
        elif h.type == EV_EXEC:
            argv, truncated = self._pending_args.pop(h.ppid, (None, False))
            if argv is None or truncated:
                argv = read_argv(h.pid) or argv  # still alive, maybe: the full argv
            exe = payload.rstrip(b"\0").decode(errors="replace")
            ev = ProcEvent(
                Kind.EXEC, h.key, h.pid, h.ts, comm=comm, exe=exe, argv=argv,
                argv_truncated=truncated,
            )  # fmt: skip
        elif h.type == EV_EXIT:
            self._pending_args.pop(h.pid, None)
            cpu_ns = peak_rss = None
            if len(payload) >= _EXIT_FIGURES.size:
                cpu, rss = _EXIT_FIGURES.unpack_from(payload)
                cpu_ns = cpu if h.flags & F_CPU else None
                peak_rss = rss if h.flags & F_RSS else None
            ev = ProcEvent(
                Kind.EXIT, h.key, h.pid, h.ts, comm=comm,
                exit_code=h.code if h.flags & F_EXIT_CODE else None,
                signal=h.code if h.flags & F_EXIT_SIGNAL else None,
                cpu_ns=cpu_ns, peak_rss_bytes=peak_rss,
            )  # fmt: skip
        else:
            return 0
        assert self._sink is not None
        self._sink(ev)
        return 0

    def _guard_record(self, h: _Header, payload: bytes, comm: str) -> None:
        if self.on_guard is None or len(payload) < _GUARD_FIGURES.size:
            return
        value, limit, s_value, s_limit, procs, reason, action, crossed_ns = (
            _GUARD_FIGURES.unpack_from(payload)
        )
        self.on_guard(
            GuardRecord(
                kind="guard" if h.type == EV_GUARD else "oom",
                key=h.key, pid=h.pid, time_ns=h.ts, comm=comm, value=value, limit=limit,
                session_value=s_value, session_limit=s_limit, processes=procs,
                reason=reason, action=action, trigger_pid=h.ppid, crossed_ns=crossed_ns,
            )
        )  # fmt: skip


def _tracepoint_format(event: str) -> str:
    for base in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        try:
            return Path(base, "events", event, "format").read_text()
        except OSError:
            continue
    return ""


def _oom_has_rss() -> bool:
    """oom:mark_victim gained comm and the victim's RSS in 6.8; 6.1 reports the pid only."""
    return "anon_rss" in _tracepoint_format("oom/mark_victim")


def _exit_has_group_dead() -> bool:
    """sched_process_exit gained `group_dead` (last thread of its process) after 6.1;
    the BPF program falls back to the thread-group leader's exit without it."""
    return "group_dead" in _tracepoint_format("sched/sched_process_exit")
