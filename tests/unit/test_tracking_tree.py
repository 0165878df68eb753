"""ProcessTree and the netlink decoder, fed synthetic events (no privileges needed)."""

from __future__ import annotations

import ctypes
import os
import struct

from agentd.tracking.ebpf import EV_EXIT, F_CPU, F_EXIT_CODE, F_RSS, EbpfSource, _Header
from agentd.tracking.events import Kind, ProcEvent
from agentd.tracking.netlink import (
    _CN_MSG,
    _EV_HDR,
    _NLMSGHDR,
    PROC_EVENT_EXIT,
    PROC_EVENT_FORK,
    NetlinkSource,
)
from agentd.tracking.procinfo import ProcStat, read_usage
from agentd.tracking.tree import ProcessTree

K = 7


def _tree(max_nodes: int = 100) -> ProcessTree:
    tree = ProcessTree(K, "tc-x", max_nodes)
    tree.add_root(ProcStat(100, 1, "agentd-exec", 1_000, "S"), ("agentd-exec",), None)
    return tree


def test_fork_exec_exit_builds_links_and_status() -> None:
    tree = _tree()
    tree.apply(ProcEvent(Kind.EXEC, K, 100, 2_000, argv=("sh", "-c", "x"), exe="/bin/sh"))
    tree.apply(ProcEvent(Kind.FORK, K, 101, 3_000, ppid=100))
    child = tree.live[101]
    assert child.argv == ("sh", "-c", "x"), "a forked child runs its parent's program"
    tree.apply(ProcEvent(Kind.EXEC, K, 101, 4_000, argv=("true",), exe="/bin/true"))
    tree.apply(ProcEvent(Kind.EXIT, K, 101, 5_000, exit_code=0))
    tree.apply(ProcEvent(Kind.EXIT, K, 100, 6_000, signal=9))
    assert tree.root is not None and tree.root.children == [child]
    assert (child.argv, child.exit_code, child.parent_start_ns) == (("true",), 0, 1_000)
    assert (tree.root.exit_code, tree.root.signal) == (None, 9)
    assert not tree.live and tree.unmatched == 0


def test_orphan_keeps_its_parent_at_fork_and_its_tool_call() -> None:
    tree = _tree()
    tree.apply(ProcEvent(Kind.FORK, K, 101, 3_000, ppid=100))
    tree.apply(ProcEvent(Kind.FORK, K, 102, 3_500, ppid=101))
    tree.apply(ProcEvent(Kind.EXIT, K, 101, 4_000, exit_code=0))  # 102 is reparented
    tree.apply(ProcEvent(Kind.EXIT, K, 102, 9_000, exit_code=3))
    (orphan,) = tree.find(102)
    assert (orphan.ppid, orphan.exit_code) == (101, 3)


def test_pid_reuse_makes_two_processes() -> None:
    tree = _tree()
    tree.apply(ProcEvent(Kind.FORK, K, 101, 3_000, ppid=100))
    tree.apply(ProcEvent(Kind.EXIT, K, 101, 4_000, exit_code=1))
    tree.apply(ProcEvent(Kind.FORK, K, 101, 5_000, ppid=100))
    first, second = tree.find(101)
    assert first.identity != second.identity
    assert (first.exit_code, second.running) == (1, True)


def test_events_of_unknown_processes_are_counted() -> None:
    tree = _tree()
    tree.apply(ProcEvent(Kind.EXIT, K, 555, 4_000, exit_code=0))  # its fork was lost
    assert tree.unmatched == 1 and tree.find(555)[0].fork_seen is False


def test_memory_is_bounded() -> None:
    tree = _tree(max_nodes=10)
    for i in range(50):
        tree.apply(ProcEvent(Kind.FORK, K, 200 + i, 3_000 + i, ppid=100))
    assert len(tree.nodes) == 10 and tree.dropped == 41


def test_root_status_from_the_waiter_survives_an_unknowing_source() -> None:
    tree = _tree()
    tree.set_root_exit(4, None)
    tree.apply(ProcEvent(Kind.EXIT, K, 100, 6_000))  # procfs: no status
    assert tree.root is not None and tree.root.exit_code == 4


def _nl(seq: int, cpu: int, what: int, data: bytes) -> bytes:
    body = _CN_MSG.pack(1, 1, seq, 0, _EV_HDR.size + len(data), 0)
    body += _EV_HDR.pack(what, cpu, 123) + data
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), 3, 0, 0, 0) + body


def test_netlink_decodes_and_counts_sequence_gaps() -> None:
    src = NetlinkSource()
    got: list[ProcEvent] = []
    src._sink = got.append
    src.watch(100, K)
    src._message(memoryview(_nl(10, 0, PROC_EVENT_FORK, struct.pack("=iiii", 100, 100, 101, 101))))
    src._message(memoryview(_nl(11, 0, PROC_EVENT_FORK, struct.pack("=iiii", 100, 100, 102, 100))))
    src._message(memoryview(_nl(15, 0, PROC_EVENT_EXIT, struct.pack("=iiII", 101, 101, 9, 17))))
    src._message(memoryview(_nl(3, 1, PROC_EVENT_EXIT, struct.pack("=iiII", 9, 9, 0, 17))))
    assert [e.kind for e in got] == [Kind.FORK, Kind.EXIT]  # thread 102 and pid 9 ignored
    assert (got[1].pid, got[1].exit_code, got[1].signal) == (101, None, 9)
    assert src.seq_gaps == 3 and src.loss().lost == 3


def test_exit_figures_reach_the_node_and_its_dict() -> None:
    tree = _tree()
    tree.apply(ProcEvent(Kind.FORK, K, 101, 3_000, ppid=100))
    tree.apply(ProcEvent(Kind.EXIT, K, 101, 5_000, exit_code=0, cpu_ns=250_000_000,
                         peak_rss_bytes=3 << 20))  # fmt: skip
    tree.apply(ProcEvent(Kind.EXIT, K, 100, 6_000, exit_code=0))  # a source without figures
    (child,) = tree.find(101)
    d = child.as_dict()
    assert (d["cpu_seconds"], d["peak_rss_bytes"]) == (0.25, 3 << 20)
    assert tree.root is not None
    root = tree.root.as_dict()
    assert (root["cpu_seconds"], root["peak_rss_bytes"]) == (None, None)


def _exit_record(flags: int, cpu_ns: int, peak: int) -> ctypes.Array[ctypes.c_char]:
    h = _Header(key=K, ts=9_000, type=EV_EXIT, pid=101, flags=flags, code=3, len=16, comm=b"x")
    return ctypes.create_string_buffer(bytes(h) + struct.pack("=Qq", cpu_ns, peak))


def test_ebpf_exit_record_decodes_cpu_and_peak_rss() -> None:
    got: list[ProcEvent] = []
    source = EbpfSource()
    source._sink = got.append
    for flags in (F_EXIT_CODE | F_CPU | F_RSS, F_EXIT_CODE | F_CPU, F_EXIT_CODE):
        buf = _exit_record(flags, 1_500_000, 4096 * 300)
        source._on_record(None, ctypes.addressof(buf), len(buf))
    assert [(e.exit_code, e.cpu_ns, e.peak_rss_bytes) for e in got] == [
        (3, 1_500_000, 4096 * 300),
        (3, 1_500_000, None),  # no rss_stat event: unknown, not 0
        (3, None, None),  # usage=False
    ]


def test_read_usage_of_this_process() -> None:
    usage = read_usage(os.getpid())
    assert usage is not None
    assert usage.cpu_ns > 0 and usage.hwm_bytes >= usage.rss_bytes > 0
    assert read_usage(2**22 + 1) is None  # above any pid_max: no such process
