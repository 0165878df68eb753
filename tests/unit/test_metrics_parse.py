"""The collector's parsers on fixtures of both cgroup versions and /proc."""

from __future__ import annotations

import pytest

from agentd.metrics import parse

PSI = (
    "some avg10=12.50 avg60=3.00 avg300=1.00 total=123456\n"
    "full avg10=0.50 avg60=0.10 avg300=0.00 total=789\n"
)


def test_pressure_keeps_avg10_and_total_of_some_and_full() -> None:
    assert parse.parse_pressure(PSI) == {
        "some_avg10": 12.5,
        "some_total_us": 123456.0,
        "full_avg10": 0.5,
        "full_total_us": 789.0,
    }


def test_pressure_of_cpu_without_full_line() -> None:
    # Before 5.13 /proc/pressure/cpu had no "full" line.
    assert parse.parse_pressure("some avg10=1.00 avg60=0 avg300=0 total=5\n") == {
        "some_avg10": 1.0,
        "some_total_us": 5.0,
    }


def test_schedstat_fields_and_bad_input() -> None:
    assert parse.parse_schedstat("259928 108483 2\n") == (259928, 108483, 2)
    with pytest.raises(ValueError, match="schedstat"):
        parse.parse_schedstat("12\n")


def test_proc_stat_busy_excludes_idle_and_iowait_and_guest() -> None:
    text = (
        "cpu  100 10 50 800 40 5 5 20 7 0\n"
        "cpu0 50 5 25 400 20 2 3 10 0 0\n"
        "ctxt 5000\nprocesses 77\nprocs_running 3\nprocs_blocked 1\n"
    )
    out = parse.parse_proc_stat(text)
    assert out["cpu_total_jiffies"] == 100 + 10 + 50 + 800 + 40 + 5 + 5 + 20
    assert out["cpu_busy_jiffies"] == out["cpu_total_jiffies"] - 840
    assert out["cpu_iowait_jiffies"] == 40
    assert out["cpu_steal_jiffies"] == 20
    assert (out["ctxt"], out["forks"], out["procs_running"], out["procs_blocked"]) == (
        5000,
        77,
        3,
        1,
    )


def test_vmstat_keeps_faults_reclaim_refaults_only() -> None:
    text = (
        "nr_free_pages 10\npgfault 900\npgmajfault 9\nworkingset_refault_file 4\npgscan_direct 3\n"
    )
    assert parse.parse_vmstat(text) == {
        "pgfault": 900,
        "pgmajfault": 9,
        "workingset_refault_file": 4,
        "pgscan_direct": 3,
    }


def test_meminfo_in_bytes() -> None:
    out = parse.parse_meminfo("MemTotal: 1000 kB\nMemFree: 10 kB\nMemAvailable: 500 kB\n")
    assert out == {"MemTotal": 1024000.0, "MemAvailable": 512000.0}


@pytest.mark.parametrize(
    ("name", "whole"),
    [
        ("vda", True),
        ("sda", True),
        ("sda1", False),
        ("nvme0n1", True),
        ("nvme0n1p2", False),
        ("mmcblk0", True),
        ("mmcblk0p1", False),
        ("loop0", False),
        ("zram0", False),
        ("dm-0", False),
    ],
)
def test_whole_disks_only(name: str, whole: bool) -> None:
    assert parse.is_whole_disk(name) is whole


def test_diskstats_sums_whole_disks_without_partitions() -> None:
    text = (
        " 254 0 vda 10 0 100 0 20 0 200 0 0 30 0 0 0 0 0\n"
        " 254 1 vda1 10 0 100 0 20 0 200 0 0 30 0 0 0 0 0\n"
        "   7 0 loop0 1 0 999 0 1 0 999 0 0 999 0 0 0 0 0\n"
        " 259 0 nvme0n1 1 0 5 0 1 0 7 0 0 11 0 0 0 0 0\n"
    )
    assert parse.parse_diskstats(text) == {
        "disk_read_sectors": 105.0,
        "disk_write_sectors": 207.0,
        "disk_busy_ms": 41.0,
    }


def test_net_dev_skips_loopback() -> None:
    text = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes\n"
        "    lo: 5000 10 0 0 0 0 0 0 5000 10 0 0 0 0 0 0\n"
        "  eth0: 1000 10 0 0 0 0 0 0 300 3 0 0 0 0 0 0\n"
    )
    assert parse.parse_net_dev(text) == {"net_rx_bytes": 1000.0, "net_tx_bytes": 300.0}


V1_MEMORY_STAT = (
    "cache 4096\nrss 8192\npgfault 10\npgmajfault 1\n"
    "total_cache 40960\ntotal_rss 81920\ntotal_pgfault 100\ntotal_pgmajfault 7\n"
    "total_pgpgin 5\ntotal_pgpgout 6\n"
)
V2_MEMORY_STAT = (
    "anon 81920\nfile 40960\npgfault 100\npgmajfault 7\nworkingset_refault_anon 2\n"
    "workingset_refault_file 3\npgscan 11\npgsteal 9\n"
)


def test_memory_stat_v1_uses_hierarchical_totals() -> None:
    assert parse.parse_memory_stat(V1_MEMORY_STAT, "v1") == {
        "pgfault": 100,
        "pgmajfault": 7,
        "anon_bytes": 81920,
        "file_bytes": 40960,
        "pgpgin": 5,
        "pgpgout": 6,
    }


def test_memory_stat_v2_has_refaults_and_reclaim() -> None:
    out = parse.parse_memory_stat(V2_MEMORY_STAT, "v2")
    assert out["refault_anon"] == 2 and out["refault_file"] == 3
    assert out["pgscan"] == 11 and out["pgsteal"] == 9
    assert out["anon_bytes"] == 81920 and out["pgmajfault"] == 7


def test_cpu_stat_v1_converts_ns_to_us() -> None:
    out = parse.parse_cpu_stat_v1(
        "nr_periods 10\nnr_throttled 4\nthrottled_time 2000000\n", "7000000\n"
    )
    assert out == {
        "cpu_usage_us": 7000.0,
        "cpu_nr_periods": 10.0,
        "cpu_nr_throttled": 4.0,
        "cpu_throttled_us": 2000.0,
    }


def test_cpu_stat_v2_already_in_us() -> None:
    out = parse.parse_cpu_stat_v2(
        "usage_usec 7000\nuser_usec 5000\nsystem_usec 2000\nnr_periods 10\n"
        "nr_throttled 4\nthrottled_usec 2000\n"
    )
    assert out["cpu_usage_us"] == 7000 and out["cpu_throttled_us"] == 2000
    assert out["cpu_nr_throttled"] == 4


def test_memory_events_v1_from_failcnt_and_oom_control() -> None:
    out = parse.parse_memory_events_v1("12\n", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert out == {"mem_limit_hits": 12.0, "mem_oom_kills": 2.0, "mem_under_oom": 0.0}


def test_memory_events_v2() -> None:
    out = parse.parse_memory_events_v2("low 0\nhigh 5\nmax 3\noom 1\noom_kill 1\n")
    assert out == {"mem_high_events": 5.0, "mem_limit_hits": 3.0, "mem_oom_kills": 1.0}


def _proc_stat_reference(text: str) -> dict[str, float]:
    """The parse before it was bounded (every line split): the bounded one must agree."""
    out: dict[str, float] = {}
    names = {"ctxt": "ctxt", "processes": "forks", "procs_running": "procs_running",
             "procs_blocked": "procs_blocked"}  # fmt: skip
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(v) for v in fields[1:]]
            total = sum(values[:8])
            out["cpu_total_jiffies"] = float(total)
            out["cpu_busy_jiffies"] = float(total - values[3] - values[4])
            out["cpu_iowait_jiffies"] = float(values[4])
            out["cpu_steal_jiffies"] = float(values[7])
        elif fields and fields[0] in names:
            out[names[fields[0]]] = float(fields[1])
    return out


def test_proc_stat_bounded_parse_agrees_with_splitting_every_line() -> None:
    """This host's /proc/stat, and a large machine's (256 CPUs, 4,000 interrupts): the
    bounded parse skips the per-CPU and intr lines and finds the same numbers."""
    with open("/proc/stat") as f:
        here = f.read()
    cpus = "".join(f"cpu{i} 50 5 25 400 20 2 3 10 0 0\n" for i in range(256))
    large = (
        "cpu  100 10 50 800 40 5 5 20 7 0\n" + cpus
        + "intr 123456 " + " ".join(str(i % 7) for i in range(4000)) + "\n"
        + "ctxt 98765\nbtime 1700000000\nprocesses 4321\nprocs_running 17\n"
        + "procs_blocked 2\nsoftirq 1 2 3 4 5 6 7 8 9 10 11\n"
    )  # fmt: skip
    for text in (here, large):
        assert parse.parse_proc_stat(text) == _proc_stat_reference(text)
    out = parse.parse_proc_stat(large)
    assert (out["ctxt"], out["forks"], out["procs_running"], out["procs_blocked"]) == (
        98765, 4321, 17, 2,
    )  # fmt: skip
    assert set(parse.parse_proc_stat(here)) == {
        "cpu_total_jiffies", "cpu_busy_jiffies", "cpu_iowait_jiffies", "cpu_steal_jiffies",
        "ctxt", "forks", "procs_running", "procs_blocked",
    }  # fmt: skip


def test_proc_stat_without_cpu_or_counts_lines() -> None:
    assert parse.parse_proc_stat("ctxt 5\n") == {"ctxt": 5.0}
    assert parse.parse_proc_stat("cpu  1 0 1 8 0 0 0 0 0 0\n")["cpu_total_jiffies"] == 10.0
    assert parse.parse_proc_stat("") == {}


def test_cached_reader_reads_a_file_larger_than_its_first_read_whole(tmp_path) -> None:
    """Reads start under glibc's mmap threshold (docs/metrics.md, "What it costs"); a
    file that fills the buffer is read again, whole, and keeps its larger size."""
    from agentd.metrics.reader import READ_SIZE, CachedReader

    big = tmp_path / "big"
    big.write_text("x" * (READ_SIZE * 5 + 3))
    small = tmp_path / "small"
    small.write_text("some avg10=1.00 avg60=0 avg300=0 total=5\n")
    exact = tmp_path / "exact"
    exact.write_text("y" * READ_SIZE)  # fills the first buffer exactly
    reader = CachedReader()
    assert reader.read(str(big)) == big.read_text()
    assert reader.read(str(big)) == big.read_text()  # the remembered size
    assert reader.read(str(small)) == small.read_text()
    assert reader.read(str(exact)) == exact.read_text()
    reader.close()
