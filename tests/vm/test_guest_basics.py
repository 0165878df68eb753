"""The guest is what production looks like: systemd as PID 1, a pure cgroup v2 with the
controllers agentd needs, bcc working against headers that match the kernel, and systemd
delegating a cgroup subtree to a service. If one of these fails, every later VM test would
fail for a reason that is not agentd's: these say so first.

Runs inside the VM only (tests/vm/conftest.py); there, nothing here skips.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
NEEDED_CONTROLLERS = {"memory", "cpu", "pids"}


def _mounts() -> list[list[str]]:
    return [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]


def test_pid1_is_systemd() -> None:
    assert Path("/proc/1/comm").read_text().strip() == "systemd"
    assert os.path.basename(os.readlink("/proc/1/exe")) == "systemd"
    # What sd_booted() checks: systemd, not merely a binary of that name, is running.
    assert Path("/run/systemd/system").is_dir()
    state = subprocess.run(
        ["systemctl", "is-system-running"], capture_output=True, text=True, check=False
    ).stdout.strip()
    # "starting": our own oneshot unit is still running when this test runs.
    assert state in {"running", "degraded", "starting"}, state


def test_cgroup_is_pure_v2_with_needed_controllers() -> None:
    mounts = _mounts()
    at_root = [m[2] for m in mounts if m[1] == str(CGROUP_ROOT)]
    assert at_root == ["cgroup2"], f"{CGROUP_ROOT} is mounted as {at_root}"
    v1 = [m[1] for m in mounts if m[2] == "cgroup"]
    assert not v1, f"cgroup v1 hierarchies are mounted: {v1}"
    controllers = set((CGROUP_ROOT / "cgroup.controllers").read_text().split())
    assert controllers >= NEEDED_CONTROLLERS, controllers


def test_agentd_is_installed_and_detects_v2() -> None:
    # Installed by scripts/setup into /opt/agentd/.venv, which runs this test.
    import agentd
    import agentd.v1.agent_pb2_grpc
    from agentd.cgroups.detect import detect_layout

    assert "site-packages" in agentd.__file__, agentd.__file__
    assert detect_layout().mode == "v2"


# Records, per exec'd pid, the pid of its parent as the kernel struct says it. Reading
# task->real_parent is exactly what goes wrong with mismatched headers (it read 0 on the
# dev machines, whose headers belong to another kernel): in the guest it must be right.
BPF_EXEC = r"""
#include <linux/sched.h>

BPF_HASH(execs, u32, u32);

TRACEPOINT_PROBE(sched, sched_process_exec) {
    u32 pid = args->pid;
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    u32 ppid = task->real_parent->tgid;
    execs.update(&pid, &ppid);
    return 0;
}
"""


def test_bcc_tracepoint_sees_exec_with_matching_headers() -> None:
    release = os.uname().release
    build = Path(f"/lib/modules/{release}/build").resolve()
    assert build.name == f"linux-headers-{release}", f"headers for another kernel: {build}"

    from bcc import BPF  # linked into the venv by scripts/setup

    started = time.monotonic()
    bpf = BPF(text=BPF_EXEC.encode())
    print(f"bcc: compiled and loaded in {time.monotonic() - started:.2f} s")
    try:
        pids = []
        for _ in range(3):
            proc = subprocess.Popen(["/bin/true"])
            assert proc.wait() == 0
            pids.append(proc.pid)
        seen = {k.value: v.value for k, v in bpf[b"execs"].items()}
        for pid in pids:
            assert pid in seen, f"exec of pid {pid} not seen ({len(seen)} execs seen)"
            assert seen[pid] == os.getpid(), f"real_parent->tgid read {seen[pid]}"
    finally:
        bpf.cleanup()


# Runs inside the transient service: what agentd will do with its delegated cgroup. The
# service's processes first move into a leaf (no processes in a group that enables
# controllers for its children), then enable the controllers one level down.
DELEGATE_SCRIPT = r"""
set -eu
cg=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)
echo "controllers=$(cat "$cg/cgroup.controllers")"
echo "memory.max=$(cat "$cg/memory.max")"
mkdir "$cg/leaf"
echo 0 > "$cg/leaf/cgroup.procs"  # 0: the writing process, this shell
echo "+memory +cpu +pids" > "$cg/cgroup.subtree_control"
mkdir "$cg/child"
echo "child.controllers=$(cat "$cg/child/cgroup.controllers")"
echo 32M > "$cg/child/memory.max"
echo "child.memory.max=$(cat "$cg/child/memory.max")"
rmdir "$cg/child"
"""


def test_systemd_run_delegates_controllers(tmp_path: Path) -> None:
    unit = f"agentd-vmtest-delegate-{uuid.uuid4().hex[:8]}"
    # From a file: on a command line systemd would expand $VAR and "$$" itself.
    script = tmp_path / "delegate.sh"
    script.write_text(DELEGATE_SCRIPT)
    result = subprocess.run(
        ["systemd-run", "--quiet", "--wait", "--pipe", "--collect", f"--unit={unit}",
         "-p", "Delegate=yes", "-p", "MemoryMax=64M",
         "/bin/sh", str(script)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert set(out["controllers"].split()) >= NEEDED_CONTROLLERS, out
    assert out["memory.max"] == str(64 * 1024 * 1024)
    assert set(out["child.controllers"].split()) >= NEEDED_CONTROLLERS, out
    assert out["child.memory.max"] == str(32 * 1024 * 1024)
