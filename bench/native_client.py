"""The native load clients of the API benchmarks (C++ gRPC, bench/native/): the
unary closed-loop client (unary_load.cc) and the event watchers (watch_load.cc),
built on demand into a cache directory, or a clear message saying which Debian
packages they need.

A scheduler's client is native (kube-scheduler extenders are Go): a Python load
generator costs ~0.4-0.5 ms of CPU per call on these two shared cores, as much as
the server it measures, so the benches report both. 100 Python watchers cost
~0.18 cores at 20 events/s (~87 us per message received), on the cores the server
needs.
"""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SOURCES = Path(__file__).resolve().parent / "native"
HEADER = SOURCES / "common.h"  # included by every client
CACHE = Path(tempfile.gettempdir()) / "agentd-bench-native"
PACKAGES = "g++ pkg-config libgrpc++-dev"


class NativeClientUnavailable(RuntimeError):
    pass


def build(name: str = "unary_load") -> Path:
    """The client binary bench/native/<name>.cc, compiled when its source changed;
    raises NativeClientUnavailable with what to install when the toolchain is missing."""
    source = SOURCES / f"{name}.cc"
    digest = hashlib.sha256(source.read_bytes() + HEADER.read_bytes()).hexdigest()[:12]
    binary = CACHE / f"{name}-{digest}"
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
        ["g++", "-O2", "-std=c++17", "-o", str(partial), str(source), *flags.stdout.split()],
        capture_output=True,
        text=True,
    )
    if compiled.returncode != 0:
        raise NativeClientUnavailable(f"compiling {source.name} failed:\n{compiled.stderr[-2000:]}")
    partial.rename(binary)
    return binary


def _command(
    binary: Path,
    address: str,
    certs: Path,
    client: str,
    method: str,
    request: bytes,
    workdir: Path,
) -> list[str]:
    """The arguments every native client begins with: where to connect, with which
    certificate, and the method and its request (written to a file in `workdir`)."""
    request_file = workdir / f"{method.rsplit('/', 1)[-1]}.req"
    request_file.write_bytes(request)
    return [
        str(binary),
        address,
        str(certs / "ca.pem"),
        str(certs / f"client-{client}.pem"),
        str(certs / f"client-{client}.key"),
        method,
        str(request_file),
    ]


@dataclass
class NativeResult:
    latencies: list[float]  # ms, one per successful call
    errors: int  # calls that ended with a non-OK status or an empty response
    cpu_seconds: float  # the client process's CPU over the window
    last_response: bytes  # for the caller to decode and check
    sent_ms: list[float]  # with `latencies`: when each was sent (or due), from the start
    connections: list[int]  # with `latencies`: each one's connection, 0..CONNECTIONS-1


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
    schedule whatever the answers do (`in_flight` is not used then), each timed
    from when it was due (unary_load.cc)."""
    return subprocess.Popen(
        [
            *_command(binary, address, certs, client, method, request, workdir),
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
    rows = [line.split() for line in (workdir / "native.lat").read_text().splitlines()]
    assert len(rows) == int(calls), "the native client's counts disagree"
    response = workdir / "native.resp"
    return NativeResult(
        [float(row[0]) for row in rows],
        int(errors),
        float(cpu),
        response.read_bytes() if response.exists() else b"",
        [float(row[1]) for row in rows],
        [int(row[2]) for row in rows],
    )


def wait_until(epoch: float) -> None:
    time.sleep(max(epoch - time.time(), 0))


# ---- event watchers (watch_load.cc) -----------------------------------------------------

CANCELLED = 1  # grpc.StatusCode.CANCELLED: how every stream ends at the stop


@dataclass
class WatchResult:
    messages: list[list[bytes]]  # per stream, every message received, in order
    statuses: list[tuple[int, str]]  # per stream: its final gRPC status code and details
    cpu_seconds: float  # the client's CPU from every stream started to the stop

    def failures(self) -> dict[int, str]:
        """The streams that ended by themselves with a non-OK status (not the stop's
        CANCELLED), by index: 'CODE_NAME: details'."""
        import grpc

        names = {code.value[0]: code.name for code in grpc.StatusCode}
        return {
            n: f"{names.get(code, code)}: {details}"
            for n, (code, details) in enumerate(self.statuses)
            if code not in (0, CANCELLED)
        }


class WatchClient:
    """`streams` server-streaming calls of `method`, each sending `request` (serialized),
    over one mutual-TLS channel from the native watcher client; returns once every
    stream has sent its request. `stop` cancels them and returns what each received."""

    def __init__(
        self,
        binary: Path,
        address: str,
        certs: Path,
        client: str,
        method: str,
        request: bytes,
        streams: int,
        workdir: Path,
        timeout: float = 60.0,
    ) -> None:
        self.out = workdir / "watch.out"
        self.log = workdir / "watch.err"
        with self.log.open("wb") as err:
            self.process = subprocess.Popen(
                [
                    *_command(binary, address, certs, client, method, request, workdir),
                    str(streams),
                    str(self.out),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise

    def _wait_ready(self, timeout: float) -> None:
        # Raw reads of the pipe, not the buffered file: `stop` reads the rest with
        # communicate(), which reads the descriptor and would miss a buffered tail.
        assert self.process.stdout is not None
        line = b""
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([self.process.stdout], [], [], max(remaining, 0))
            chunk = os.read(self.process.stdout.fileno(), 64) if readable else b""
            if not chunk:
                raise RuntimeError(
                    "the native watchers did not start"
                    + ("" if readable else f" within {timeout:g} s")
                    + f": {self.log.read_text().strip()}"
                )
            line += chunk
        if line != b"ready\n":
            raise RuntimeError(f"the native watchers said {line!r}, not 'ready'")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 60.0) -> WatchResult:
        """Close the client's stdin (its stop), wait for it and read its output."""
        out, _ = self.process.communicate(timeout=timeout)
        if self.process.returncode != 0:
            raise RuntimeError(
                f"the native watchers failed ({self.process.returncode}): "
                f"{self.log.read_text().strip()}"
            )
        streams, _, cpu = out.split()
        result = WatchResult([], [], float(cpu))
        data = memoryview(self.out.read_bytes())
        offset = 0

        def u32() -> int:
            nonlocal offset
            (value,) = struct.unpack_from("=I", data, offset)
            offset += 4
            return value

        def chunk() -> bytes:
            nonlocal offset
            size = u32()
            offset += size
            return bytes(data[offset - size : offset])

        for _ in range(int(streams)):
            code = u32()
            result.statuses.append((code, chunk().decode(errors="replace")))
            result.messages.append([chunk() for _ in range(u32())])
        if offset != len(data):
            raise RuntimeError(f"{self.out}: {len(data) - offset} bytes after the last stream")
        return result
