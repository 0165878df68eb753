"""The netlink proc connector source: fork/exec/exit of every process on the host.

A plain AF_NETLINK reader (pyroute2's ProcEventSocket lost a quarter of the exits at
~1.6k spawns/s here, silently). Losses are counted two ways: ENOBUFS from recv (the
socket overflowed) and gaps in the per-CPU sequence numbers the kernel stamps on
every message (cn_proc's proc_event_counts), which give the exact number missed.

Attribution is in user space (pid -> key, inherited at fork), so a lost fork loses
the child's subtree: that is why the gaps are counted, never hidden.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import threading

from agentd.tracking.events import Kind, LossReport, ProcEvent
from agentd.tracking.procinfo import monotonic_to_boot_offset_ns, read_argv, read_exe
from agentd.tracking.source import Sink, SourceUnavailable

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
NLMSG_DONE = 3
SO_RCVBUFFORCE = 33

PROC_EVENT_NONE = 0
PROC_EVENT_FORK = 0x1
PROC_EVENT_EXEC = 0x2
PROC_EVENT_EXIT = 0x80000000

_NLMSGHDR = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
_EV_HDR = struct.Struct("=IIQ")  # what, cpu, timestamp_ns (CLOCK_MONOTONIC)
_FORK = struct.Struct("=iiii")  # parent pid, parent tgid, child pid, child tgid
_EXEC = struct.Struct("=ii")
_EXIT = struct.Struct("=iiII")  # pid, tgid, exit_code (wait status), exit_signal
_EVENT_OFF = _NLMSGHDR.size + _CN_MSG.size
_DATA_OFF = _EVENT_OFF + _EV_HDR.size


def _listen_message(op: int) -> bytes:
    body = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, 4, 0) + struct.pack("=I", op)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), NLMSG_DONE, 0, 0, 0) + body


class NetlinkSource:
    name = "netlink"
    lossless = True  # in the sense that every loss is counted

    def __init__(self, rcvbuf: int = 32 << 20, read_argv_at_exec: bool = True) -> None:
        self.rcvbuf = rcvbuf
        # Reading /proc/<pid>/cmdline at each exec costs ~30 us on the reader thread and
        # races the process's exit; without it exec events carry no argv.
        self.read_argv_at_exec = read_argv_at_exec
        self._sock: socket.socket | None = None
        self._sink: Sink | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._keys: dict[int, int] = {}  # tgid -> key
        self._lock = threading.Lock()
        self._seq: dict[int, int] = {}  # cpu -> last sequence number seen
        self.seq_gaps = 0  # messages missed, from sequence numbers
        self.enobufs = 0  # overflows reported by the kernel
        self.messages = 0
        self._offset_ns = monotonic_to_boot_offset_ns()

    def start(self, sink: Sink) -> None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.bind((0, CN_IDX_PROC))
            sock.send(_listen_message(PROC_CN_MCAST_LISTEN))
        except OSError as e:
            raise SourceUnavailable(f"proc connector: {e}") from e
        sock.settimeout(0.1)
        self._sock, self._sink = sock, sink
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="agentd-netlink", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.send(_listen_message(PROC_CN_MCAST_IGNORE))
            self._sock.close()
            self._sock = None

    def watch(self, pid: int, key: int, cgroup_procs: str | None = None) -> None:
        with self._lock:
            self._keys[pid] = key

    def unwatch(self, key: int) -> None:
        with self._lock:
            for pid in [p for p, k in self._keys.items() if k == key]:
                del self._keys[pid]

    def lost_events(self) -> int:
        return self.seq_gaps

    def loss(self) -> LossReport:
        # After an ENOBUFS the sequence gap tells how many; if the overflow happened
        # before the first message of a CPU, only the ENOBUFS count shows it.
        return LossReport(
            source=self.name,
            lost=max(self.seq_gaps, self.enobufs),
            exact=True,
            detail={"seq_gaps": self.seq_gaps, "enobufs": self.enobufs, "messages": self.messages},
        )

    def _run(self) -> None:
        assert self._sock is not None
        buf = bytearray(1 << 16)
        view = memoryview(buf)
        while not self._stop.is_set():
            try:
                n = self._sock.recv_into(buf)
            except TimeoutError:
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.enobufs += 1
                    continue
                if self._stop.is_set():
                    return
                raise
            off = 0
            while off + _NLMSGHDR.size <= n:
                length = _NLMSGHDR.unpack_from(view, off)[0]
                if length < _NLMSGHDR.size:
                    break
                self._message(view[off : off + length])
                off += (length + 3) & ~3

    def _message(self, msg: memoryview) -> None:
        if len(msg) < _DATA_OFF:
            return
        seq = _CN_MSG.unpack_from(msg, _NLMSGHDR.size)[2]
        what, cpu, ts = _EV_HDR.unpack_from(msg, _EVENT_OFF)
        if what == PROC_EVENT_NONE:
            return  # the kernel's ack of our listen request, outside the sequence
        self.messages += 1
        last = self._seq.get(cpu)
        if last is not None and seq > last + 1:
            self.seq_gaps += seq - last - 1
        self._seq[cpu] = seq
        ts += self._offset_ns
        if what == PROC_EVENT_FORK:
            _ppid, ptgid, cpid, ctgid = _FORK.unpack_from(msg, _DATA_OFF)
            if cpid != ctgid:
                return  # a new thread
            key = self._keys.get(ptgid)
            if key is None:
                return
            with self._lock:
                self._keys[cpid] = key
            self._emit(ProcEvent(Kind.FORK, key, cpid, ts, ppid=ptgid))
        elif what == PROC_EVENT_EXEC:
            pid, tgid = _EXEC.unpack_from(msg, _DATA_OFF)
            key = self._keys.get(tgid)
            if key is None:
                return
            argv = read_argv(tgid) if self.read_argv_at_exec else None
            exe = read_exe(tgid) if self.read_argv_at_exec else None
            self._emit(ProcEvent(Kind.EXEC, key, tgid, ts, exe=exe, argv=argv))
        elif what == PROC_EVENT_EXIT:
            pid, tgid, status, _sig = _EXIT.unpack_from(msg, _DATA_OFF)
            if pid != tgid:
                return  # a thread
            with self._lock:
                key = self._keys.pop(tgid, None)
            if key is None:
                return
            code, signo = (status >> 8) & 0xFF, status & 0x7F
            self._emit(
                ProcEvent(
                    Kind.EXIT, key, tgid, ts,
                    exit_code=None if signo else code, signal=signo or None,
                )
            )  # fmt: skip

    def _emit(self, ev: ProcEvent) -> None:
        assert self._sink is not None
        self._sink(ev)
