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

Alternatives rejected: classic BPF (SO_ATTACH_REUSEPORT_CBPF) has no state, so it
can only choose at random or by a packet field, as uneven as the hash; bcc would
compile 20 instructions with clang at every start (seconds, and LLVM in memory);
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


def _program(counter_fd: int, sockets_fd: int, readers: int) -> bytes:
    """slot = counter++ % readers; select sockets[slot]; pass (an empty slot or a
    failed selection leaves the choice to the kernel's hash)."""
    return b"".join(
        [
            _insn(0xBF, dst=6, src=1),  # r6 = ctx
            _insn(0x62, dst=10, off=-4, imm=0),  # *(u32 *)(fp - 4) = 0: the counter's key
            _insn(0xBF, dst=2, src=10),  # r2 = fp
            _insn(0x07, dst=2, imm=-4),  # r2 += -4
            _insn(0x18, dst=1, src=_PSEUDO_MAP_FD, imm=counter_fd),  # r1 = counter map
            _insn(0x00),
            _insn(0x85, imm=_HELPER_MAP_LOOKUP_ELEM),  # r0 = &counter
            _insn(0x15, dst=0, off=11, imm=0),  # if r0 == 0 goto pass
            _insn(0xB7, dst=1, imm=1),  # r1 = 1
            _insn(0xC3, dst=0, src=1, imm=0x01),  # r1 = atomic_fetch_add(*(u32 *)r0, r1)
            _insn(0x94, dst=1, imm=readers),  # w1 %= readers
            _insn(0x63, dst=10, src=1, off=-8),  # *(u32 *)(fp - 8) = w1: the slot
            _insn(0xBF, dst=1, src=6),  # r1 = ctx
            _insn(0x18, dst=2, src=_PSEUDO_MAP_FD, imm=sockets_fd),  # r2 = sockets map
            _insn(0x00),
            _insn(0xBF, dst=3, src=10),  # r3 = fp
            _insn(0x07, dst=3, imm=-8),  # r3 += -8
            _insn(0xB7, dst=4, imm=0),  # r4 = 0 (flags)
            _insn(0x85, imm=_HELPER_SK_SELECT_REUSEPORT),
            _insn(0xB7, dst=0, imm=_SK_PASS),  # pass: r0 = SK_PASS
            _insn(0x95),  # exit
        ]
    )


def _create_map(map_type: int, value_size: int, entries: int) -> int:
    return _bpf(_BPF_MAP_CREATE, _MapCreate(map_type, 4, value_size, entries, 0))


@dataclass
class Balancer:
    """The daemon's side: the program and the sockets map, kept open for readers
    started later (a replacement registers at its slot)."""

    readers: int
    program_fd: int
    sockets_fd: int

    @classmethod
    def create(cls, readers: int) -> Balancer:
        """Raises BalanceUnavailable (no CAP_BPF, a kernel without SK_REUSEPORT)."""
        counter = _create_map(_BPF_MAP_TYPE_ARRAY, 4, 1)
        sockets = -1
        try:
            sockets = _create_map(_BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, 8, readers)
            code = _program(counter, sockets, readers)
            buffer = ctypes.create_string_buffer(code)
            license = ctypes.create_string_buffer(b"GPL")
            log = ctypes.create_string_buffer(4096)
            attr = _ProgLoad(
                prog_type=_BPF_PROG_TYPE_SK_REUSEPORT,
                insn_cnt=len(code) // 8,
                insns=ctypes.addressof(buffer),
                license=ctypes.addressof(license),
                log_level=1,
                log_size=len(log),
                log_buf=ctypes.addressof(log),
                prog_name=b"agentd_readers",
            )
            try:
                program = _bpf(_BPF_PROG_LOAD, attr)
            except BalanceUnavailable as e:
                verifier = log.value.decode(errors="replace").strip()
                raise BalanceUnavailable(e.errno, f"{e.strerror}; verifier: {verifier}") from None
        except BaseException:
            if sockets >= 0:
                os.close(sockets)
            raise
        finally:
            os.close(counter)  # the program holds it
        return cls(readers, program, sockets)

    @property
    def fds(self) -> tuple[int, int]:
        return self.program_fd, self.sockets_fd

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


def place(sockets_fd: int, slot: int, listener_fd: int) -> None:
    """Put the listening socket `listener_fd` at `slot` of the sockets map."""
    key = ctypes.c_uint32(slot)
    value = ctypes.c_uint64(listener_fd)
    update = _MapUpdate(
        map_fd=sockets_fd, key=ctypes.addressof(key), value=ctypes.addressof(value), flags=0
    )
    _bpf(_BPF_MAP_UPDATE_ELEM, update)


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
