"""The native load client of the API benchmarks (bench/native/unary_load.cc, C++
gRPC): built on demand into a cache directory, or a clear message saying which
Debian packages it needs.

A scheduler's client is native (kube-scheduler extenders are Go): a Python load
generator costs ~0.4-0.5 ms of CPU per call on these two shared cores, as much as
the server it measures, so the benches report both.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "native" / "unary_load.cc"
CACHE = Path(tempfile.gettempdir()) / "agentd-bench-native"
PACKAGES = "g++ pkg-config libgrpc++-dev"


class NativeClientUnavailable(RuntimeError):
    pass


def build() -> Path:
    """The client binary, compiled when the source changed; raises
    NativeClientUnavailable with what to install when the toolchain is missing."""
    source = SOURCE.read_bytes()
    binary = CACHE / f"unary_load-{hashlib.sha256(source).hexdigest()[:12]}"
    if binary.exists():
        return binary
    if shutil.which("g++") is None or shutil.which("pkg-config") is None:
        raise NativeClientUnavailable(f"the native client needs: apt-get install {PACKAGES}")
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "grpc++"], capture_output=True, text=True
    )
    if flags.returncode != 0:
        raise NativeClientUnavailable(
            f"the native client needs gRPC C++ (pkg-config grpc++: {flags.stderr.strip()}): "
            f"apt-get install {PACKAGES}"
        )
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(".partial")
    compiled = subprocess.run(
        ["g++", "-O2", "-std=c++17", "-o", str(partial), str(SOURCE), *flags.stdout.split()],
        capture_output=True,
        text=True,
    )
    if compiled.returncode != 0:
        raise NativeClientUnavailable(f"compiling {SOURCE.name} failed:\n{compiled.stderr[-2000:]}")
    partial.rename(binary)
    return binary


@dataclass
class NativeResult:
    latencies: list[float]  # ms, one per successful call
    errors: int  # calls that ended with a non-OK status or an empty response
    cpu_seconds: float  # the client process's CPU over the window
    last_response: bytes  # for the caller to decode and check


def start(
    binary: Path,
    address: str,
    certs: Path,
    client: str,
    method: str,
    request: bytes,
    in_flight: int,
    connections: int,
    start_at: float,
    seconds: float,
    workdir: Path,
    rate: float = 0.0,
) -> subprocess.Popen[str]:
    """Start a closed-loop run of `in_flight` calls over `connections`
    connections, beginning at the epoch time `start_at`; `collect` its result.
    With `rate`, an open-loop run instead: `rate` calls a second on a fixed
    schedule, at most `in_flight` outstanding, each timed from when it was due
    (unary_load.cc)."""
    request_file = workdir / f"{method.rsplit('/', 1)[-1]}.req"
    request_file.write_bytes(request)
    return subprocess.Popen(
        [
            str(binary),
            address,
            str(certs / "ca.pem"),
            str(certs / f"client-{client}.pem"),
            str(certs / f"client-{client}.key"),
            method,
            str(request_file),
            str(in_flight),
            str(connections),
            f"{start_at:.6f}",
            f"{seconds:g}",
            str(workdir / "native"),
            *([f"{rate:g}"] if rate > 0 else []),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def collect(process: subprocess.Popen[str], workdir: Path, timeout: float) -> NativeResult:
    out, err = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"the native client failed ({process.returncode}): {err.strip()}")
    calls, errors, cpu = out.split()
    latencies = [float(x) for x in (workdir / "native.lat").read_text().split()]
    assert len(latencies) == int(calls), "the native client's counts disagree"
    response = workdir / "native.resp"
    return NativeResult(
        latencies,
        int(errors),
        float(cpu),
        response.read_bytes() if response.exists() else b"",
    )


def wait_until(epoch: float) -> None:
    time.sleep(max(epoch - time.time(), 0))
