"""The filesystem seam both cgroup backends go through.

Backends never call `os` directly: unit tests plug in a fake tree that behaves like
cgroupfs, and the real implementation stays a thin, fast layer over syscalls (tool-call
creation is on the latency-critical path, so no method does a read or stat it does not
need).
"""

from __future__ import annotations

import errno as errno_mod
import os

from agentd.cgroups.base import CgroupError


class FsError(CgroupError):
    """A failed cgroupfs syscall. `errno` lets backends tell ENOENT/EEXIST/EBUSY apart."""

    def __init__(self, op: str, path: str, err: int) -> None:
        super().__init__(f"{op} {path}: {os.strerror(err)}")
        self.op = op
        self.path = path
        self.errno = err


class CgroupFs:
    """Real cgroupfs access; every OSError becomes an `FsError` naming the file."""

    def read_text(self, path: str) -> str:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise FsError("read", path, e.errno or errno_mod.EIO) from None
        try:
            # Interface files are small (cgroup.procs of a big group is the exception),
            # so read in large chunks until EOF rather than stat-ing for a size.
            chunks = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as e:
            raise FsError("read", path, e.errno or errno_mod.EIO) from None
        finally:
            os.close(fd)
        return b"".join(chunks).decode()

    def write_text(self, path: str, value: str) -> None:
        # cgroupfs parses each write(2) as one value: a single os.write on an O_WRONLY fd
        # (no O_TRUNC, no buffering that could split the value).
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            raise FsError("write", path, e.errno or errno_mod.EIO) from None
        try:
            os.write(fd, value.encode())
        except OSError as e:
            raise FsError("write", path, e.errno or errno_mod.EIO) from None
        finally:
            os.close(fd)

    def mkdir(self, path: str) -> None:
        try:
            os.mkdir(path)
        except OSError as e:
            raise FsError("mkdir", path, e.errno or errno_mod.EIO) from None

    def rmdir(self, path: str) -> None:
        try:
            os.rmdir(path)
        except OSError as e:
            raise FsError("rmdir", path, e.errno or errno_mod.EIO) from None

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def listdir(self, path: str) -> list[str]:
        try:
            return os.listdir(path)
        except OSError as e:
            raise FsError("list", path, e.errno or errno_mod.EIO) from None

    def subdirs(self, path: str) -> list[str]:
        """Names of the child directories (child groups) of `path`.

        scandir gives d_type for free, which avoids one stat per interface file
        (a v1 memory group has ~30 of them).
        """
        try:
            with os.scandir(path) as it:
                return [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except OSError as e:
            raise FsError("list", path, e.errno or errno_mod.EIO) from None
