"""The audit log: one JSON object per line for every control action on NodeService
(Admit, ReleaseReservation, Throttle, Freeze, Resume, Evict), allowed or refused.

Written synchronously and flushed before the call returns: an action that
happened is in the log even if the daemon is killed right after. The file is
created 0600 (it names callers and targets).
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def record(
        self,
        principal: dict[str, Any],
        method: str,
        target: dict[str, str],
        outcome: str,
        **details: Any,
    ) -> None:
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="microseconds"),
            "principal": principal,
            "method": method,
            "target": target,
            "outcome": outcome,
            **details,
        }
        line = json.dumps(entry, sort_keys=True, default=str) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()
