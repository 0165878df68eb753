"""A real agentd daemon in a subprocess, for integration tests and benchmarks.

Each instance has its own socket, state directory and cgroup root
(`agentd-test-<random>`), so tests never touch a production hierarchy and can
run side by side.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from agentd.cgroups.base import CgroupError
from agentd.cgroups.detect import choose_backend, detect_layout
from agentd.metrics.dataset import Dataset, Record
from agentd.sdk import Client
from agentd.sdk.client import wait_for_socket


class AgentdProcess:
    def __init__(
        self,
        workdir: Path | None = None,
        config: str = "",
        root: str = "",
        log_level: str = "debug",
    ) -> None:
        """`log_level`: debug for tests (their failures print the log); benchmarks
        pass the production default, info, since debug records cost CPU per call."""
        self.log_level = log_level
        # Under /tmp with 0755 so that an unprivileged test client can reach the socket.
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="agentd-test-"))
        self.workdir.chmod(0o755)
        self.socket = str(self.workdir / "run" / "agentd.sock")
        self.state_dir = str(self.workdir / "state")
        self.cgroup_root = root or f"agentd-test-{uuid.uuid4().hex[:8]}"
        self.config_path = self.workdir / "agentd.toml"
        self.config_path.write_text(config)
        self.log_path = self.workdir / "agentd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0, env: dict[str, str] | None = None) -> None:
        # 60 s: bcc compiles the tracker at start, 7-15 s here when the machine is busy.
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agentd.daemon",
                "--config",
                str(self.config_path),
                "--socket",
                self.socket,
                "--state-dir",
                self.state_dir,
                "--cgroup-root",
                self.cgroup_root,
                "--log-format",
                "json",
                "--log-level",
                self.log_level,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,  # not the repo: import the installed package
            env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket + ".cred"):
            if self.process.poll() is not None:
                raise RuntimeError(f"agentd exited {self.process.returncode}:\n{self.logs()}")
            if time.monotonic() > deadline:
                # Not left running (with its cgroup root) behind a failed fixture.
                self.cleanup()
                raise RuntimeError(f"agentd did not start within {timeout}s:\n{self.logs()}")
            time.sleep(0.02)
        wait_for_socket(self.socket, timeout=timeout)

    def client(self) -> Client:
        return Client(self.socket)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cleanup(self) -> list[str]:
        """Stop the daemon and remove its whole cgroup root; returns what was left behind
        (group paths) so that a test can assert that nothing was."""
        self.exit_status: int | None = None
        if self.running():
            with contextlib.suppress(Exception):
                self.exit_status = self.stop()
        backend = choose_backend(detect_layout(), "auto", self.cgroup_root)
        leftovers: list[str] = []
        if backend.exists(""):
            for session in backend.children("sessions"):
                leftovers.append(backend.path_of(f"sessions/{session}"))
            with contextlib.suppress(CgroupError):
                backend.kill("")
            backend.remove("")
        return leftovers


def wait_for_records(daemon: AgentdProcess, count: int = 1, timeout: float = 10.0) -> list[Record]:
    """The daemon's dataset records once there are `count` of them (or what there is
    at the timeout): the collector writes them shortly after a tool call ends."""
    path = Path(daemon.state_dir) / "dataset.sqlite"
    deadline = time.monotonic() + timeout
    records: list[Record] = []
    while time.monotonic() < deadline and len(records) < count:
        time.sleep(0.2)
        if path.exists():
            ds = Dataset(path)
            records = ds.records()
            ds.close()
    return records
