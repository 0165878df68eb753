"""What eBPF and the kernel's monitoring interfaces can do on this host.

Checked once at start, cheaply: files, one import, /proc/self/status. Nothing is
compiled or loaded here; the daemon uses the result to choose its event sources
(eBPF or the netlink proc connector) and to say in its logs why one is missing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

TRACEFS = Path("/sys/kernel/tracing")
# bcc 0.26 looks here first and uses /sys/kernel/tracing only when this is absent.
DEBUGFS_TRACING = Path("/sys/kernel/debug/tracing")
BTF = Path("/sys/kernel/btf/vmlinux")
PSI_MEMORY = Path("/proc/pressure/memory")
DEBIAN_BCC = Path("/usr/lib/python3/dist-packages/bcc")

TRACEPOINTS = (
    "sched:sched_process_fork",
    "sched:sched_process_exec",
    "sched:sched_process_exit",
    "kmem:rss_stat",
    "oom:mark_victim",
)

# linux/capability.h
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


@dataclass(frozen=True)
class Check:
    available: bool
    reason: str = ""  # why not, when unavailable

    def describe(self) -> str:
        return "available" if self.available else f"missing: {self.reason}"


@dataclass(frozen=True)
class Capabilities:
    bcc: Check
    kernel_headers: Check
    btf: Check
    tracefs: Check
    tracepoints: dict[str, Check]  # "sched:sched_process_fork" -> check
    psi: Check
    bpf_privileges: Check

    def summary(self) -> dict[str, str]:
        """capability -> "available" or "missing: <reason>", for logs and agentctl."""
        result = {
            "bcc": self.bcc.describe(),
            "kernel_headers": self.kernel_headers.describe(),
            "btf": self.btf.describe(),
            "tracefs": self.tracefs.describe(),
        }
        for name, check in self.tracepoints.items():
            result[f"tracepoint:{name}"] = check.describe()
        result["psi"] = self.psi.describe()
        result["bpf_privileges"] = self.bpf_privileges.describe()
        return result

    @property
    def can_compile_bpf(self) -> bool:
        """bcc can compile and load a program (tracepoints aside)."""
        return (
            self.bcc.available and self.kernel_headers.available and self.bpf_privileges.available
        )

    def has_tracepoints(self, *names: str) -> bool:
        return all(self.tracepoints.get(n, Check(False)).available for n in names)


def detect_capabilities(*, import_bcc: bool = True) -> Capabilities:
    """Probe the host. `import_bcc=False` skips the import (~60 MB of libbcc and
    LLVM) and only looks for the module, for callers that will not trace."""
    tracing = _tracing_dir()
    return Capabilities(
        bcc=_check_bcc(import_bcc),
        kernel_headers=_check_headers(os.uname().release),
        btf=_check_readable(BTF, "no BTF (kernel built without CONFIG_DEBUG_INFO_BTF)"),
        tracefs=(
            Check(True)
            if tracing
            else Check(False, f"tracefs not mounted at {TRACEFS} (ensure_tracefs() mounts it)")
        ),
        tracepoints={name: _check_tracepoint(tracing, name) for name in TRACEPOINTS},
        psi=_check_psi(),
        bpf_privileges=_check_privileges(),
    )


def ensure_tracefs(path: Path = TRACEFS) -> str | None:
    """Mount tracefs at `path` unless it is there; None on success, else why not.

    bcc reads tracepoint formats and attaches through tracefs, which this kind of
    machine does not mount at boot.
    """
    if (path / "events").is_dir() or (path == TRACEFS and (DEBUGFS_TRACING / "events").is_dir()):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    mount = libc.mount
    mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_void_p,
    ]
    # nodev, nosuid, noexec as systemd's sys-kernel-tracing.mount does.
    flags = 0x4 | 0x2 | 0x8  # MS_NODEV | MS_NOSUID | MS_NOEXEC
    if mount(b"tracefs", os.fsencode(path), b"tracefs", flags, None) != 0:
        err = ctypes.get_errno()
        return f"mount -t tracefs {path}: {os.strerror(err)} ({errno.errorcode.get(err, err)})"
    if not (path / "events").is_dir():
        return f"mounted tracefs at {path} but it has no events/ directory"
    return None


def _tracing_dir() -> Path | None:
    for candidate in (DEBUGFS_TRACING, TRACEFS):
        if (candidate / "events").is_dir():
            return candidate
    return None


def _check_bcc(do_import: bool) -> Check:
    hint = (
        f"install python3-bpfcc; a venv needs {DEBIAN_BCC} linked into its site-packages "
        "(scripts/setup does it)"
    )
    if "bcc" in sys.modules:
        return Check(True)
    if importlib.util.find_spec("bcc") is None:
        return Check(False, f"no module named 'bcc' for {sys.executable}: {hint}")
    if not do_import:
        return Check(True)
    try:
        importlib.import_module("bcc")
    except Exception as e:  # bcc raises OSError when libbcc.so is missing, not ImportError
        return Check(False, f"import bcc failed: {type(e).__name__}: {e}")
    return Check(True)


def _check_headers(release: str) -> Check:
    build = Path("/lib/modules", release, "build")
    if not (build / "include").is_dir():
        return Check(
            False,
            f"no kernel headers at {build} (install linux-headers-{release}, "
            "or scripts/setup links Debian's generic ones)",
        )
    return Check(True)


def _check_readable(path: Path, missing: str) -> Check:
    if not path.exists():
        return Check(False, missing)
    if not os.access(path, os.R_OK):
        return Check(False, f"{path} is not readable")
    return Check(True)


def _check_tracepoint(tracing: Path | None, name: str) -> Check:
    if tracing is None:
        return Check(False, "tracefs not mounted")
    category, event = name.split(":", 1)
    if not (tracing / "events" / category / event / "format").exists():
        return Check(False, f"kernel has no tracepoint {name}")
    return Check(True)


def _check_psi() -> Check:
    try:
        PSI_MEMORY.read_text()
    except FileNotFoundError:
        return Check(False, f"no {PSI_MEMORY} (kernel without CONFIG_PSI)")
    except OSError as e:
        # EOPNOTSUPP when the kernel was booted with psi=0.
        return Check(False, f"{PSI_MEMORY}: {e.strerror or e}")
    return Check(True)


def _check_privileges() -> Check:
    effective = _effective_capabilities()
    if effective is None:
        return Check(False, "cannot read CapEff from /proc/self/status")

    def has(cap: int) -> bool:
        return bool(effective >> cap & 1)

    # Since 5.8, CAP_BPF + CAP_PERFMON suffice for tracing programs; before, SYS_ADMIN.
    if has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON)):
        return Check(True)
    lacking = [n for n, c in (("CAP_BPF", CAP_BPF), ("CAP_PERFMON", CAP_PERFMON)) if not has(c)]
    return Check(
        False,
        f"euid {os.geteuid()} lacks {' and '.join(lacking)} (and CAP_SYS_ADMIN)",
    )


def _effective_capabilities() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        return None
    return None
