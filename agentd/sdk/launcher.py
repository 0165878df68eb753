"""Starting a command so that it executes only once it is inside its cgroup.

The launcher binary (agentd/native/agentd_exec.c, built with the package) waits
for one byte on a pipe before it executes the command; see its header comment.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any


def launcher_path() -> str:
    """The compiled launcher shipped inside the package (AGENTD_EXEC overrides it)."""
    override = os.environ.get("AGENTD_EXEC")
    if override:
        return override
    path = Path(str(resources.files("agentd") / "_bin" / "agentd-exec"))
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"agentd's launcher is missing at {path}: reinstall agentd with `pip install .` "
            "(the build compiles it)"
        )
    return str(path)


@dataclass
class PendingLaunch:
    """A launcher that has started and waits to be released."""

    process: subprocess.Popen
    go_fd: int
    err_fd: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def release(self) -> None:
        """Let the command execute; raises OSError (like subprocess) if exec fails."""
        try:
            os.write(self.go_fd, b"g")
        finally:
            os.close(self.go_fd)
        try:
            data = os.read(self.err_fd, 4)
        finally:
            os.close(self.err_fd)
        if data:
            code = int.from_bytes(data, "little", signed=True)
            self.process.wait()
            raise OSError(code, os.strerror(code), self.process.args[4])

    def abort(self) -> None:
        """Never run the command: the launcher sees EOF and exits 127."""
        for fd in (self.go_fd, self.err_fd):
            try:
                os.close(fd)
            except OSError as e:
                if e.errno != errno.EBADF:
                    raise
        self.process.wait()


def spawn(
    args: Sequence[str],
    env: Mapping[str, str] | None,
    cwd: str | os.PathLike[str] | None,
    stdin: int | IO[Any] | None,
    stdout: int | IO[Any] | None,
    stderr: int | IO[Any] | None,
    text: bool,
) -> PendingLaunch:
    if cwd is not None and not os.path.isdir(cwd):
        raise FileNotFoundError(errno.ENOENT, "No such directory", os.fspath(cwd))
    program = args[0]
    if os.sep not in program:
        # Resolve now with the tool call's PATH so a missing program fails here,
        # like subprocess, rather than as an exit code 127 from the launcher.
        path = (env or os.environ).get("PATH", os.defpath)
        if shutil.which(program, path=path) is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", program)
    go_read, go_write = os.pipe2(os.O_CLOEXEC)
    err_read, err_write = os.pipe2(os.O_CLOEXEC)
    try:
        process = subprocess.Popen(
            [launcher_path(), str(go_read), str(err_write), "--", *args],
            pass_fds=(go_read, err_write),
            env=env,
            cwd=cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            text=text,
        )
    except BaseException:
        for fd in (go_read, go_write, err_read, err_write):
            os.close(fd)
        raise
    os.close(go_read)
    os.close(err_write)
    return PendingLaunch(process=process, go_fd=go_write, err_fd=err_read)
