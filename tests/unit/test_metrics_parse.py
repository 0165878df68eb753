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
