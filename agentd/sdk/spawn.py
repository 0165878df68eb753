"""posix_spawn without holding the GIL, for starting launchers in the background.

`os.posix_spawn` keeps the GIL for the whole spawn, and with vfork underneath that
is until the child has executed (~0.5-2 ms here): a background thread starting the
next launcher would stall the agent's own thread for that long. A ctypes call drops
the GIL, so the same libc call runs beside the agent's Python code instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
from collections.abc import Sequence

# Opaque glibc types, given room to spare (x86_64: 80, 336 and 128 bytes).
_OPAQUE = 1024
_POSIX_SPAWN_SETSIGDEF = 0x04
_POSIX_SPAWN_SETSIGMASK = 0x08

_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    _environ = ctypes.c_void_p.in_dll(_libc, "environ")
except (OSError, ValueError):
    _libc = None


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise OSError(rc, f"{what}: {os.strerror(rc)}")


def spawn_with_stdio_devnull(path: str, argv: Sequence[str], keep_fd: int, as_fd: int) -> int:
    """Start `argv` (program `path`) with /dev/null as stdio and `keep_fd` as `as_fd`,
    SIGPIPE and SIGXFSZ at their defaults (what subprocess's restore_signals gives).
    Returns the pid."""
    if _libc is None:
        return os.posix_spawn(
            path,
            list(argv),
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, keep_fd, as_fd),
            ],
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )
    libc = _libc
    actions = ctypes.create_string_buffer(_OPAQUE)
    attr = ctypes.create_string_buffer(_OPAQUE)
    defaults = ctypes.create_string_buffer(_OPAQUE)
    empty = ctypes.create_string_buffer(_OPAQUE)
    devnull = os.devnull.encode()
    _check(libc.posix_spawn_file_actions_init(actions), "posix_spawn_file_actions_init")
    _check(libc.posix_spawnattr_init(attr), "posix_spawnattr_init")
    try:
        for fd, flags in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
            _check(
                libc.posix_spawn_file_actions_addopen(actions, fd, devnull, flags, 0),
                "posix_spawn_file_actions_addopen",
            )
        _check(
            libc.posix_spawn_file_actions_adddup2(actions, keep_fd, as_fd),
            "posix_spawn_file_actions_adddup2",
        )
        libc.sigemptyset(defaults)
        libc.sigaddset(defaults, int(signal.SIGPIPE))
        libc.sigaddset(defaults, int(signal.SIGXFSZ))
        libc.sigemptyset(empty)
        _check(libc.posix_spawnattr_setsigdefault(attr, defaults), "setsigdefault")
        _check(libc.posix_spawnattr_setsigmask(attr, empty), "setsigmask")
        flags = _POSIX_SPAWN_SETSIGDEF | _POSIX_SPAWN_SETSIGMASK
        _check(libc.posix_spawnattr_setflags(attr, ctypes.c_short(flags)), "setflags")
        c_argv = (ctypes.c_char_p * (len(argv) + 1))(*[os.fsencode(a) for a in argv], None)
        pid = ctypes.c_int(0)
        rc = libc.posix_spawn(ctypes.byref(pid), os.fsencode(path), actions, attr, c_argv, _environ)
        _check(rc, f"posix_spawn {path}")
        return pid.value
    finally:
        libc.posix_spawn_file_actions_destroy(actions)
        libc.posix_spawnattr_destroy(attr)
