"""Re-reading kernel interface files cheaply.

The collector reads the same few files of every tracked group ten times a second.
For cgroupfs and /proc files the open() and close() cost more than the read, so the
files stay open and are re-read with pread(offset 0), which regenerates their content.
A read that fails (the group was removed, the process exited) closes the file and
raises OSError; the number of open files is bounded.
"""

from __future__ import annotations

import os
import threading


class CachedReader:
    def __init__(self, max_open: int = 2048) -> None:
        self._fds: dict[str, int] = {}
        self._max_open = max_open
        self._lock = threading.Lock()

    def read(self, path: str) -> str:
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                if len(self._fds) >= self._max_open:
                    self._close_all()
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                self._fds[path] = fd
            try:
                return os.pread(fd, 262144, 0).decode()
            except OSError:
                self._fds.pop(path, None)
                os.close(fd)
                raise

    def forget(self, prefix: str) -> None:
        """Close every file under `prefix` (a removed group, an exited process)."""
        with self._lock:
            for path in [p for p in self._fds if p.startswith(prefix)]:
                os.close(self._fds.pop(path))

    def open_files(self) -> int:
        return len(self._fds)

    def paths(self) -> list[str]:
        with self._lock:
            return list(self._fds)

    def close(self) -> None:
        with self._lock:
            self._close_all()

    def _close_all(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
