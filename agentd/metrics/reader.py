"""Re-reading kernel interface files cheaply.

The collector reads the same few files of every tracked group ten times a second.
For cgroupfs and /proc files the open() and close() cost more than the read, so the
files stay open and are re-read with pread(offset 0), which regenerates their content.
A read that fails (the group was removed, the process exited) closes the file and
raises OSError; the number of open files is bounded.

The read size matters: `os.pread(fd, n)` allocates an n-byte buffer first, and above
glibc's mmap threshold (128 KiB until glibc raises it dynamically) that is an mmap and
munmap per read: a 256 KiB read of a 100-byte PSI file cost ~25 us in a fresh process
against ~4 us for 64 KiB. So reads start at READ_SIZE and grow (per file, remembered)
only for a file that filled the buffer.
"""

from __future__ import annotations

import os
import threading

#: The first read size of a file (under glibc's 128 KiB mmap threshold); a file that
#: fills it is read again with a buffer four times larger, and keeps that size.
READ_SIZE = 65536


class CachedReader:
    def __init__(self, max_open: int = 2048) -> None:
        self._fds: dict[str, int] = {}
        self._sizes: dict[str, int] = {}  # files larger than READ_SIZE: their read size
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
                size = self._sizes.get(path, READ_SIZE)
                data = os.pread(fd, size, 0)
                while len(data) == size:  # maybe cut short: the whole file again
                    size *= 4
                    data = os.pread(fd, size, 0)
                if size > READ_SIZE:
                    self._sizes[path] = size
                return data.decode()
            except OSError:
                self._fds.pop(path, None)
                os.close(fd)
                raise

    def forget(self, prefix: str) -> None:
        """Close every file under `prefix` (a removed group, an exited process)."""
        with self._lock:
            for path in [p for p in self._fds if p.startswith(prefix)]:
                os.close(self._fds.pop(path))
                self._sizes.pop(path, None)

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
        self._sizes.clear()
