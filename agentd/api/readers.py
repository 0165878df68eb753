"""The reader processes of the TCP listener (reader.py), from the daemon's side:
start `[api] readers` of them on the listener's port, restart one that dies, and stop
every one at shutdown.

A reader that dies takes its own connections with it (their clients reconnect, and
the kernel gives them to the readers still listening: SO_REUSEPORT only spreads
connections over live sockets); the pool starts another within RESTART_SECONDS.
Readers also die with the daemon (PR_SET_PDEATHSIG), so none outlives it.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import structlog
from prometheus_client import multiprocess

from agentd.api.reader import ReaderSpec

log = structlog.get_logger("agentd.api.readers")

START_TIMEOUT_SECONDS = 60.0
#: How often the pool looks for a dead reader, and the least time between two
#: starts of the same one (a reader that cannot start must not spin).
RESTART_SECONDS = 1.0
STOP_GRACE_SECONDS = 5.0


class ReaderStartError(RuntimeError):
    pass


class ReaderPool:
    def __init__(
        self,
        count: int,
        spec: Callable[[int, int], ReaderSpec],
        inherited_fds: tuple[int, ...] = (),
        metrics_dir: str = "",
    ) -> None:
        """`spec(ready_fd, slot)`: the spec of the reader at `slot` that writes to
        `ready_fd` once listening; `inherited_fds`: descriptors every reader gets
        (reuseport.py's program and maps); `metrics_dir`: the readers'
        PROMETHEUS_MULTIPROC_DIR ("": none)."""
        self.count = count
        self.spec = spec
        self.inherited_fds = inherited_fds
        self.metrics_dir = metrics_dir
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * count
        self.restarts = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="agentd-readers", daemon=True)

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self.processes if p is not None and p.poll() is None]

    def start(self) -> None:
        """Start every reader and wait until each listens; raises ReaderStartError
        (the readers started so far are stopped)."""
        try:
            for slot in range(self.count):
                self._start(slot)
        except ReaderStartError:
            self.stop()
            raise
        self._thread.start()

    def _start(self, slot: int) -> None:
        ready_read, ready_write = os.pipe()
        try:
            spec = self.spec(ready_write, slot)
            environment = dict(os.environ)
            if self.metrics_dir:
                # prometheus_client reads it at import: the reader's metrics go to files.
                environment["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
            process = subprocess.Popen(
                [sys.executable, "-m", "agentd.api.reader", spec.to_json()],
                pass_fds=(ready_write, *self.inherited_fds),
                stdin=subprocess.DEVNULL,
                env=environment,
            )
            os.close(ready_write)
            ready_write = -1
            with self._lock:
                self.processes[slot] = process
            readable, _, _ = select.select([ready_read], [], [], START_TIMEOUT_SECONDS)
            if not readable or os.read(ready_read, 1) != b"1":
                process.kill()
                process.wait()
                raise ReaderStartError(
                    f"reader {slot} did not start listening on {spec.address} "
                    f"(exit status {process.returncode}); see its log lines"
                )
            log.info("readers.started", slot=slot, pid=process.pid)
        finally:
            os.close(ready_read)
            if ready_write >= 0:
                os.close(ready_write)

    def _supervise(self) -> None:
        while not self._stop.wait(RESTART_SECONDS):
            for slot in range(self.count):
                with self._lock:
                    process = self.processes[slot]
                if process is None or process.poll() is None or self._stop.is_set():
                    continue
                log.warning("readers.died", slot=slot, pid=process.pid, status=process.returncode)
                self._forget_streams(process.pid)
                try:
                    self._start(slot)
                    self.restarts += 1
                except (ReaderStartError, OSError) as e:
                    log.error("readers.restart_failed", slot=slot, error=str(e))

    def _forget_streams(self, pid: int) -> None:
        """A dead reader's open streams leave the daemon's gauge (its counts stay)."""
        if self.metrics_dir:
            multiprocess.mark_process_dead(pid, self.metrics_dir)

    def stop(self) -> None:
        """SIGTERM every reader (it closes its listener and its calls), SIGKILL the
        ones still alive after STOP_GRACE_SECONDS, and reap them all."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=RESTART_SECONDS + START_TIMEOUT_SECONDS)
        with self._lock:
            processes = [p for p in self.processes if p is not None]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("readers.killed", pid=process.pid)
                process.kill()
                process.wait()
            self._forget_streams(process.pid)
