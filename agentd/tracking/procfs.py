"""The procfs source: periodic scans of /proc (psutil's pid list) and of cgroup.procs.

Lossy by nature and says so: a process that starts and ends between two scans leaves
no trace, exit codes of processes that are not our children are unknowable from
/proc, and a parent that died before a scan is replaced by whoever adopted the child.
Its LossReport is therefore never `exact`; `lost` counts only the losses it can
prove (a process found through its cgroup whose parent was never seen).
"""

from __future__ import annotations

import threading

import psutil

from agentd.tracking.events import Kind, LossReport, ProcEvent
from agentd.tracking.procinfo import ProcStat, boottime_ns, read_argv, read_exe, read_stat
from agentd.tracking.source import Sink


def _read_pids(path: str) -> set[int]:
    try:
        with open(path) as f:
            return {int(line) for line in f if line.strip()}
    except OSError:
        return set()


class ProcfsSource:
    name = "procfs"
    lossless = False

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self._sink: Sink | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._roots: dict[int, int] = {}  # pid -> key, handed to watch() and not yet seen
        self._cgroups: dict[str, int] = {}  # cgroup.procs path -> key
        self._tracked: dict[int, tuple[int, int]] = {}  # pid -> (key, start_ns)
        self._argv: dict[int, tuple[str, ...] | None] = {}
        self._foreign: dict[int, int] = {}  # pid -> start_ns of processes not ours
        self.missed_parents = 0
        self.scans = 0

    def start(self, sink: Sink) -> None:
        self._sink = sink
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="agentd-procfs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def watch(self, pid: int, key: int, cgroup_procs: str | None = None) -> None:
        with self._lock:
            st = read_stat(pid)
            if st is not None:
                self._tracked[pid] = (key, st.start_ns)
                self._argv[pid] = read_argv(pid)
                self._foreign.pop(pid, None)
            if cgroup_procs:
                self._cgroups[cgroup_procs] = key

    def unwatch(self, key: int) -> None:
        with self._lock:
            for pid in [p for p, (k, _) in self._tracked.items() if k == key]:
                del self._tracked[pid]
            for path in [p for p, k in self._cgroups.items() if k == key]:
                del self._cgroups[path]

    def lost_events(self) -> int:
        return self.missed_parents

    def loss(self) -> LossReport:
        return LossReport(
            source=self.name,
            lost=self.missed_parents,
            exact=False,
            detail={"missed_parents": self.missed_parents, "scans": self.scans},
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                self.scan()

    def scan(self) -> None:
        """One pass: new processes (parents first), exec changes, exits."""
        self.scans += 1
        in_cgroup: dict[int, int] = {}
        for path, key in self._cgroups.items():
            for pid in _read_pids(path):
                in_cgroup[pid] = key
        pids = set(psutil.pids())
        new: list[ProcStat] = []
        for pid in pids:
            known = self._tracked.get(pid)
            st = read_stat(pid) if known is not None or pid not in self._foreign else None
            if known is not None:
                if st is not None and st.start_ns == known[1]:
                    self._exec_check(pid, known[0])
                    continue
                self._exit(pid)  # gone, and the pid already reused
            if st is not None:
                new.append(st)
        for pid in [p for p in self._tracked if p not in pids]:
            self._exit(pid)
        for pid in [p for p in self._foreign if p not in pids]:
            del self._foreign[pid]
        for st in sorted(new, key=lambda s: s.start_ns):
            parent = self._tracked.get(st.ppid)
            key = parent[0] if parent else in_cgroup.get(st.pid)
            if key is None:
                self._foreign[st.pid] = st.start_ns
                continue
            if parent is None:
                self.missed_parents += 1  # its parent lived and died between two scans
            self._tracked[st.pid] = (key, st.start_ns)
            argv = read_argv(st.pid)
            self._argv[st.pid] = argv
            self._emit(ProcEvent(Kind.FORK, key, st.pid, st.start_ns, ppid=st.ppid, comm=st.comm))
            self._emit(
                ProcEvent(
                    Kind.EXEC, key, st.pid, st.start_ns, comm=st.comm, exe=read_exe(st.pid),
                    argv=argv,
                )
            )  # fmt: skip

    def _exec_check(self, pid: int, key: int) -> None:
        argv = read_argv(pid)
        if argv is not None and argv != self._argv.get(pid):
            self._argv[pid] = argv
            self._emit(ProcEvent(Kind.EXEC, key, pid, boottime_ns(), exe=read_exe(pid), argv=argv))

    def _exit(self, pid: int) -> None:
        key, _ = self._tracked.pop(pid)
        self._argv.pop(pid, None)
        self._emit(ProcEvent(Kind.EXIT, key, pid, boottime_ns()))

    def _emit(self, ev: ProcEvent) -> None:
        assert self._sink is not None
        self._sink(ev)
