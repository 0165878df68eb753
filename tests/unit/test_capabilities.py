from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from agentd import capabilities
from agentd.capabilities import TRACEPOINTS, detect_capabilities, ensure_tracefs

EXPECTED_KEYS = {
    "bcc",
    "kernel_headers",
    "btf",
    "tracefs",
    *(f"tracepoint:{name}" for name in TRACEPOINTS),
    "psi",
    "bpf_privileges",
}


@pytest.fixture(scope="module")
def caps() -> capabilities.Capabilities:
    # Without the import: the suite's interpreter may not see Debian's bcc, and
    # whether it does is checked separately below.
    return detect_capabilities(import_bcc=False)


def test_summary_has_every_capability_and_nothing_else(caps: capabilities.Capabilities) -> None:
    summary = caps.summary()
    assert set(summary) == EXPECTED_KEYS
    for name, value in summary.items():
        assert value == "available" or value.startswith("missing: "), (name, value)
        assert value != "missing: ", name  # a reason is always given


def test_psi_is_available_here(caps: capabilities.Capabilities) -> None:
    # Every machine of this kind (and the VM) has live /proc/pressure.
    assert caps.summary()["psi"] == "available"


def test_btf_matches_the_file(caps: capabilities.Capabilities) -> None:
    assert caps.btf.available == os.access("/sys/kernel/btf/vmlinux", os.R_OK)


def test_headers_match_lib_modules(caps: capabilities.Capabilities) -> None:
    build = Path("/lib/modules", os.uname().release, "build", "include")
    assert caps.kernel_headers.available == build.is_dir()
    if not caps.kernel_headers.available:
        assert str(build.parent) in caps.kernel_headers.reason


def test_tracefs_and_tracepoints_follow_the_mount(caps: capabilities.Capabilities) -> None:
    mounted = any(
        Path(p, "events").is_dir() for p in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
    )
    assert caps.tracefs.available == mounted
    if not mounted:
        assert all(not c.available for c in caps.tracepoints.values())
        assert "ensure_tracefs" in caps.tracefs.reason


def test_root_has_bpf_privileges(caps: capabilities.Capabilities) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    assert caps.bpf_privileges.available


def test_bcc_check_agrees_with_the_import_system() -> None:
    caps = detect_capabilities(import_bcc=True)
    if importlib.util.find_spec("bcc") is None:
        assert not caps.bcc.available
        assert "python3-bpfcc" in caps.bcc.reason
    else:
        # Present as a module: it must also import (libbcc is installed with it).
        assert caps.bcc.available, caps.bcc.reason


def test_missing_tracepoint_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    events = tmp_path / "tracing" / "events"
    (events / "sched" / "sched_process_fork").mkdir(parents=True)
    (events / "sched" / "sched_process_fork" / "format").write_text("name: sched_process_fork\n")
    monkeypatch.setattr(capabilities, "DEBUGFS_TRACING", tmp_path / "absent")
    monkeypatch.setattr(capabilities, "TRACEFS", tmp_path / "tracing")
    caps = detect_capabilities(import_bcc=False)
    summary = caps.summary()
    assert summary["tracefs"] == "available"
    assert summary["tracepoint:sched:sched_process_fork"] == "available"
    assert (
        summary["tracepoint:oom:mark_victim"] == "missing: kernel has no tracepoint oom:mark_victim"
    )
    assert caps.has_tracepoints("sched:sched_process_fork")
    assert not caps.has_tracepoints("sched:sched_process_fork", "kmem:rss_stat")


def test_ensure_tracefs_leaves_a_mounted_one_alone(tmp_path: Path) -> None:
    (tmp_path / "events").mkdir()
    assert ensure_tracefs(tmp_path) is None


def test_ensure_tracefs_reports_why_it_failed(tmp_path: Path) -> None:
    error = ensure_tracefs(tmp_path / "no-such-dir")
    assert error is not None
    assert "no-such-dir" in error
    assert "ENOENT" in error or "EPERM" in error
