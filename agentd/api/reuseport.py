"""Connections spread evenly over the reader processes (docs/node-api.md).

The readers share the TCP port with SO_REUSEPORT, and the kernel picks a listener by
a hash of the connection's addresses. Schedulers hold a few long-lived HTTP/2
connections, so a hash leaves the readers uneven as often as not: api_load's four
client connections and the watchers' one were 4:1 on two readers, one reader (one
Python process, so one core at most) saturated while the other idled, capping
ScorePlacement near one core's worth of calls. Here the group gets a tiny eBPF
program (SK_REUSEPORT) that picks the readers in turn instead: a counter in an
array map, each reader's listening socket at its slot of a REUSEPORT_SOCKARRAY. A
slot whose reader died is empty (the kernel removes a closed socket from the map);
the program then passes without choosing and the kernel hashes, as before.

Readers serving event streams are skipped (with three readers or more). A reader
writes its mark in a third array map while it serves any WatchNodeEvents stream.
Sending one event to 100 watchers costs that reader's event loop ~7 ms (~70 us of
grpc.aio per message, measured with a bare grpc.aio server too). Every call on its
other connections waits behind that fan-out: api_load's slow calls (over 10 ms)
came in bursts, every ~110 ms (its session churn), on that reader's connections
only. A connection is steered once, when it opens: calls multiplexed on a
connection that also carries streams still share its reader.

Alternatives rejected: classic BPF (SO_ATTACH_REUSEPORT_CBPF) has no state, so it
can only choose at random or by a packet field, as uneven as the hash; bcc would
compile a few dozen instructions with clang at every start (seconds, and LLVM in
memory);
one shared accept queue needs grpc to serve on a listening socket it did not
create, which grpcio cannot do.

Raw bpf(2) calls through ctypes: the daemon creates the maps and the program
(`Balancer.create`), the readers inherit their descriptors and register themselves
(`register`).
"""

from __future__ import annotations

import ctypes
import os
import platform
import socket
import struct
from dataclasses import dataclass

_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_MAP_CREATE = 0
_BPF_MAP_UPDATE_ELEM = 2
_BPF_PROG_LOAD = 5
_BPF_MAP_TYPE_ARRAY = 2
_BPF_MAP_TYPE_REUSEPORT_SOCKARRAY = 20
_BPF_PROG_TYPE_SK_REUSEPORT = 21
_SO_ATTACH_REUSEPORT_EBPF = 52
_SK_PASS = 1
_HELPER_MAP_LOOKUP_ELEM = 1
_HELPER_SK_SELECT_REUSEPORT = 82
_PSEUDO_MAP_FD = 1


class BalanceUnavailable(OSError):
    """The kernel refused the program or its maps: the kernel's hash spreads the
    connections instead."""


class _MapCreate(ctypes.Structure):
    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
    ]


class _MapUpdate(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _ProgLoad(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
    ]


def _bpf(command: int, attr: ctypes.Structure) -> int:
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise BalanceUnavailable(0, f"no bpf(2) number known for {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.syscall(number, command, ctypes.byref(attr), ctypes.sizeof(attr))
    if result < 0:
        error = ctypes.get_errno()
        raise BalanceUnavailable(error, f"bpf command {command}: {os.strerror(error)}")
    return int(result)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


class _Jump:
    """A conditional jump to a label, resolved once the program is laid out."""

    def __init__(self, code: int, dst: int, imm: int, label: str) -> None:
        self.code, self.dst, self.imm, self.label = code, dst, imm, label


def _assemble(parts: list[bytes | _Jump | str]) -> bytes:
    """Lay out instructions, jumps and labels (str): a jump's offset counts the
    instructions between it and its label."""
    where: dict[str, int] = {}
    position = 0
    for part in parts:
        if isinstance(part, str):
            where[part] = position
        else:
            position += 1 if isinstance(part, _Jump) else len(part) // 8
    code = []
    position = 0
    for part in parts:
        if isinstance(part, str):
            continue
        if isinstance(part, _Jump):
            position += 1
            code.append(
                _insn(part.code, dst=part.dst, off=where[part.label] - position, imm=part.imm)
            )
        else:
            position += len(part) // 8
            code.append(part)
    return b"".join(code)


def _ld_map(dst: int, map_fd: int) -> bytes:
    return _insn(0x18, dst=dst, src=_PSEUDO_MAP_FD, imm=map_fd) + _insn(0x00)


# Readers from which new connections avoid those serving event streams. With two,
# avoiding one puts every new connection on the other: api_load, closed loop, 100
# watchers, alternated (2026-11-29 05:46): 2,141-2,236 ScorePlacement/s skipping,
# 2,668-3,042/s not, for a p99 1-2 ms lower.
AVOID_STREAMING_FROM = 3


def _program(counter_fd: int, sockets_fd: int, streaming_fd: int, readers: int) -> bytes:
    """The first of the slots next, next+1, ... (mod readers) whose reader serves no
    event streams (from AVOID_STREAMING_FROM readers; with fewer, none is skipped),
    else next % readers; next = that slot + 1; select sockets[slot];
    pass (an empty slot or a failed selection leaves the choice to the kernel's
    hash). `next` advancing past the slot chosen, not by one, spreads a skipped
    reader's turns over all the others. Two connections handled at once on two CPUs
    may take the same slot: a turn off, no more. The search is unrolled, one block
    per reader: no loop for the verifier to bound."""
    parts: list[bytes | _Jump | str] = [
        _insn(0xBF, dst=6, src=1),  # r6 = ctx
        _insn(0x62, dst=10, off=-4, imm=0),  # *(u32 *)(fp - 4) = 0: the counter's key
        _insn(0xBF, dst=2, src=10),  # r2 = fp
        _insn(0x07, dst=2, imm=-4),  # r2 += -4
        _ld_map(1, counter_fd),  # r1 = counter map
        _insn(0x85, imm=_HELPER_MAP_LOOKUP_ELEM),  # r0 = &next
        _Jump(0x15, dst=0, imm=0, label="pass"),  # if r0 == 0 goto pass
        _insn(0xBF, dst=8, src=0),  # r8 = &next
        _insn(0x61, dst=7, src=8),  # w7 = next
    ]
    for step in range(readers if readers >= AVOID_STREAMING_FROM else 0):
        parts += [
            _insn(0xBC, dst=1, src=7),  # w1 = w7
            _insn(0x04, dst=1, imm=step),  # w1 += step
            _insn(0x94, dst=1, imm=readers),  # w1 %= readers
            _insn(0x63, dst=10, src=1, off=-8),  # *(u32 *)(fp - 8) = w1: the slot
            _insn(0xBF, dst=2, src=10),  # r2 = fp
            _insn(0x07, dst=2, imm=-8),  # r2 += -8
            _ld_map(1, streaming_fd),  # r1 = streaming map
            _insn(0x85, imm=_HELPER_MAP_LOOKUP_ELEM),  # r0 = &streaming[slot]
            _Jump(0x15, dst=0, imm=0, label="pass"),  # if r0 == 0 goto pass
            _insn(0x61, dst=1, src=0),  # w1 = *(u32 *)r0
            _Jump(0x15, dst=1, imm=0, label="select"),  # if w1 == 0 goto select
        ]
    parts += [
        _insn(0xBC, dst=1, src=7),  # every reader streams (or none is skipped): w1 = w7
        _insn(0x94, dst=1, imm=readers),  # w1 %= readers
        _insn(0x63, dst=10, src=1, off=-8),  # *(u32 *)(fp - 8) = w1: the slot
        "select",
        _insn(0x61, dst=1, src=10, off=-8),  # w1 = the slot
        _insn(0x04, dst=1, imm=1),  # w1 += 1
        _insn(0x63, dst=8, src=1),  # next = w1
        _insn(0xBF, dst=1, src=6),  # r1 = ctx
        _ld_map(2, sockets_fd),  # r2 = sockets map
        _insn(0xBF, dst=3, src=10),  # r3 = fp
        _insn(0x07, dst=3, imm=-8),  # r3 += -8
        _insn(0xB7, dst=4, imm=0),  # r4 = 0 (flags)
        _insn(0x85, imm=_HELPER_SK_SELECT_REUSEPORT),
        "pass",
        _insn(0xB7, dst=0, imm=_SK_PASS),  # r0 = SK_PASS
        _insn(0x95),  # exit
    ]
    return _assemble(parts)


def _load(code: bytes) -> int:
    """Load the program; on a refusal, load it again with the verifier's log (only
    then: a log that overflows its buffer fails the load, ENOSPC, however good the
    program) and say what it said."""
    buffer = ctypes.create_string_buffer(code)
    license = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoad(
        prog_type=_BPF_PROG_TYPE_SK_REUSEPORT,
        insn_cnt=len(code) // 8,
        insns=ctypes.addressof(buffer),
        license=ctypes.addressof(license),
        prog_name=b"agentd_readers",
    )
    try:
        return _bpf(_BPF_PROG_LOAD, attr)
    except BalanceUnavailable as refused:
        log = ctypes.create_string_buffer(1 << 20)
        attr.log_level, attr.log_size, attr.log_buf = 1, len(log), ctypes.addressof(log)
        try:
            return _bpf(_BPF_PROG_LOAD, attr)  # it may pass now: a transient refusal
        except BalanceUnavailable:
            verifier = log.value.decode(errors="replace").strip()[-2000:]
            raise BalanceUnavailable(
                refused.errno, f"{refused.strerror}; verifier: {verifier}"
            ) from None


def _create_map(map_type: int, value_size: int, entries: int) -> int:
    return _bpf(_BPF_MAP_CREATE, _MapCreate(map_type, 4, value_size, entries, 0))


@dataclass
class Balancer:
    """The daemon's side: the program and the sockets map, kept open for readers
    started later (a replacement registers at its slot)."""

    readers: int
    program_fd: int
    sockets_fd: int
    streaming_fd: int  # streaming[slot] != 0: that reader serves event streams

    @classmethod
    def create(cls, readers: int) -> Balancer:
        """Raises BalanceUnavailable (no CAP_BPF, a kernel without SK_REUSEPORT)."""
        counter = _create_map(_BPF_MAP_TYPE_ARRAY, 4, 1)
        sockets = streaming = -1
        try:
            sockets = _create_map(_BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, 8, readers)
            streaming = _create_map(_BPF_MAP_TYPE_ARRAY, 4, readers)
            program = _load(_program(counter, sockets, streaming, readers))
        except BaseException:
            for fd in (sockets, streaming):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            os.close(counter)  # the program holds it
        return cls(readers, program, sockets, streaming)

    @property
    def fds(self) -> tuple[int, int, int]:
        return self.program_fd, self.sockets_fd, self.streaming_fd

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def listening_sockets(port: int) -> list[int]:
    """This process's listening TCP sockets on `port` (grpc made them: found by
    their descriptors)."""
    found = []
    for name in sorted(os.listdir("/proc/self/fd"), key=int):
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            probe = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with probe:
            if (
                probe.type == socket.SOCK_STREAM
                and probe.family in (socket.AF_INET, socket.AF_INET6)
                and probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                and probe.getsockname()[1] == port
            ):
                found.append(fd)
    return found


def _update(map_fd: int, slot: int, value: ctypes.c_uint32 | ctypes.c_uint64) -> None:
    key = ctypes.c_uint32(slot)
    update = _MapUpdate(
        map_fd=map_fd, key=ctypes.addressof(key), value=ctypes.addressof(value), flags=0
    )
    _bpf(_BPF_MAP_UPDATE_ELEM, update)


def place(sockets_fd: int, slot: int, listener_fd: int) -> None:
    """Put the listening socket `listener_fd` at `slot` of the sockets map."""
    _update(sockets_fd, slot, ctypes.c_uint64(listener_fd))


def mark_streaming(streaming_fd: int, slot: int, streaming: bool) -> None:
    """Say whether the reader at `slot` serves event streams: new connections go
    to a reader that does not while there is one. Raises BalanceUnavailable."""
    _update(streaming_fd, slot, ctypes.c_uint32(1 if streaming else 0))


def attach(program_fd: int, listener_fd: int) -> None:
    """Make the program choose for `listener_fd`'s whole reuseport group."""
    with socket.socket(fileno=os.dup(listener_fd)) as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_EBPF, program_fd)
        except OSError as e:
            raise BalanceUnavailable(e.errno, f"attaching the program: {e.strerror}") from None


def register(program_fd: int, sockets_fd: int, slot: int, port: int) -> int:
    """Put this reader's listening socket at `slot` and attach the program to its
    reuseport group (again: the group may be new when every reader restarted).
    Returns the socket's descriptor; raises BalanceUnavailable."""
    listeners = listening_sockets(port)
    if not listeners:
        raise BalanceUnavailable(0, f"no listening socket on port {port} in this process")
    # One group per address family; the first (grpc's only one, for one address) is
    # balanced, another would keep the kernel's hash.
    listener = listeners[0]
    place(sockets_fd, slot, listener)
    attach(program_fd, listener)
    return listener
