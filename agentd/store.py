"""Durable state under the state directory, so that a restarted daemon knows every
session and tool call again (the cgroup tree is the other half of the truth).

SQLite in WAL mode: one small transaction per state change, crash-safe, and
queryable by an operator with the sqlite3 shell.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentd.model import (
    Enforcement,
    ExitStatus,
    Intent,
    Priority,
    Resources,
    Session,
    ToolCall,
    Usage,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    owner_uid INTEGER NOT NULL,
    budget TEXT NOT NULL,
    priority INTEGER NOT NULL,
    created_at REAL NOT NULL,
    closed_at REAL,
    tool_calls_total INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tool_calls (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    owner_uid INTEGER NOT NULL,
    intent TEXT NOT NULL,
    limits TEXT NOT NULL,
    started_at REAL NOT NULL,
    launcher_pid INTEGER NOT NULL,
    ended_at REAL,
    exit TEXT,
    usage TEXT,
    leftover_killed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS process_trees (
    tool_call_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    ended_at REAL NOT NULL,
    tree TEXT NOT NULL
);
-- Who holds a group throttled or frozen (agentd/control.py): one row per group and
-- actor, so that a restarted daemon lifts each hold only when its own actor resumes.
CREATE TABLE IF NOT EXISTS control_holds (
    rel TEXT NOT NULL,
    actor TEXT NOT NULL,
    cpu REAL,
    memory_high INTEGER,
    frozen INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (rel, actor)
);
CREATE INDEX IF NOT EXISTS process_trees_age ON process_trees (ended_at);
CREATE INDEX IF NOT EXISTS tool_calls_open ON tool_calls (ended_at) WHERE ended_at IS NULL;
CREATE INDEX IF NOT EXISTS tool_calls_session ON tool_calls (session_id);
"""


# Cached: a session's tool calls mostly share their intent, limits and exit status,
# and encoding them again on every save was a tenth of a tool call's request time.
@functools.lru_cache(maxsize=512)
def _intent_to_json(intent: Intent, waiting: bool = False) -> str:
    data = {
        "resources": intent.resources.as_dict(),
        "expected_duration_seconds": intent.expected_duration_seconds,
        "priority": int(intent.priority) if intent.priority else None,
        "label": intent.label,
    }
    if waiting:  # placed ahead, no command yet (ToolCall.waiting); absent otherwise
        data["waiting_for_command"] = True
    return json.dumps(data)


@functools.lru_cache(maxsize=512)
def _resources_to_json(resources: Resources) -> str:
    return json.dumps(resources.as_dict())


@functools.lru_cache(maxsize=512)
def _exit_to_json(exit_status: ExitStatus) -> str:
    # vars(), not asdict(): these are flat, and asdict deep-copies.
    return json.dumps(vars(exit_status))


def _intent_from_json(text: str) -> Intent:
    data = json.loads(text)
    return Intent(
        resources=Resources.from_dict(data["resources"]),
        expected_duration_seconds=data["expected_duration_seconds"],
        priority=Priority(data["priority"]) if data["priority"] else None,
        label=data["label"],
    )


#: An upsert, not INSERT OR REPLACE: a tool call is saved at its begin and again at
#: its end, and REPLACE deletes the row and inserts it anew, which rewrites every index
#: entry (an UPDATE touches only the changed ones: fewer pages per commit).
_UPSERT_TOOL_CALL = (
    "INSERT INTO tool_calls (id, session_id, owner_uid, intent, limits, started_at, "
    "launcher_pid, ended_at, exit, usage, leftover_killed, enforcements) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(
        f"{c} = excluded.{c}"
        for c in (
            "session_id", "owner_uid", "intent", "limits", "started_at", "launcher_pid",
            "ended_at", "exit", "usage", "leftover_killed", "enforcements",
        )
    )
)  # fmt: skip


class Store:
    """Sessions and tool calls, persisted. Thread-safe (one connection, one lock)."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / "agentd.db"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a power loss may drop the last transactions but never
        # corrupts; the cgroup tree lets recovery find tool calls the DB missed.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Columns added since the first schema, added to a database that lacks them."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(tool_calls)")}
        if "enforcements" not in columns:
            self._db.execute("ALTER TABLE tool_calls ADD COLUMN enforcements TEXT")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction for several statements (the connection autocommits each
        statement otherwise): one WAL append instead of one per row. Hold `_lock`."""
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def save_session(self, s: Session) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    s.id,
                    s.owner_uid,
                    json.dumps(s.budget.as_dict()),
                    int(s.priority),
                    s.created_at,
                    s.closed_at,
                    s.tool_calls_total,
                ),
            )

    def save_tool_call(self, t: ToolCall) -> None:
        with self._lock:
            self._db.execute(
                _UPSERT_TOOL_CALL,
                (
                    t.id,
                    t.session_id,
                    t.owner_uid,
                    _intent_to_json(t.intent, t.waiting),
                    _resources_to_json(t.limits),
                    t.started_at,
                    t.launcher_pid,
                    t.ended_at,
                    _exit_to_json(t.exit),
                    json.dumps(vars(t.usage)),
                    t.leftover_processes_killed,
                    json.dumps([vars(e) for e in t.enforcements]) if t.enforcements else None,
                ),
            )

    def forget_tool_call(self, tool_call_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM tool_calls WHERE id = ?", (tool_call_id,))

    def save_process_tree(
        self, tool_call_id: str, session_id: str, ended_at: float, tree: dict[str, Any], keep: int
    ) -> None:
        """Keep a finished tool call's tree; only the `keep` most recent are kept."""
        self.save_process_trees([(tool_call_id, session_id, ended_at, tree)], keep)

    def save_process_trees(
        self, trees: list[tuple[str, str, float, dict[str, Any]]], keep: int, prune: bool = True
    ) -> None:
        """Keep finished tool calls' trees, (tool call id, session id, ended at, tree)
        each, in one transaction. `prune`: drop all but the `keep` most recent now; the
        pruning query walks the whole table, so a caller saving trees often prunes only
        now and then (the table then holds a few more than `keep` meanwhile)."""
        rows = [(i, s, at, json.dumps(tree)) for i, s, at, tree in trees]
        with self._lock, self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO process_trees VALUES (?, ?, ?, ?)", rows)
            if prune:
                self._db.execute(
                    "DELETE FROM process_trees WHERE tool_call_id IN (SELECT tool_call_id FROM "
                    "process_trees ORDER BY ended_at DESC LIMIT -1 OFFSET ?)",
                    (keep,),
                )

    def process_tree(self, tool_call_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT tree FROM process_trees WHERE tool_call_id = ?", (tool_call_id,)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def open_sessions(self) -> Iterator[Session]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM sessions WHERE closed_at IS NULL").fetchall()
        for row in rows:
            yield self._session(row)

    def _session(self, row: tuple) -> Session:  # type: ignore[type-arg]
        session = Session(
            id=row[0],
            owner_uid=row[1],
            budget=Resources.from_dict(json.loads(row[2])),
            priority=Priority(row[3]),
            created_at=row[4],
            closed_at=row[5],
        )
        with self._lock:
            (session.tool_calls_total,) = self._db.execute(
                "SELECT COUNT(*) FROM tool_calls WHERE session_id = ? AND started_at >= ?",
                (session.id, session.created_at),
            ).fetchone()
        return session

    def closed_sessions(self, limit: int = 1000) -> list[Session]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM sessions WHERE closed_at IS NOT NULL "
                "ORDER BY closed_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [self._session(row) for row in rows]

    def running_tool_calls(self) -> Iterator[ToolCall]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM tool_calls WHERE ended_at IS NULL").fetchall()
        for row in rows:
            yield self._tool_call(row)

    def tool_call(self, tool_call_id: str) -> ToolCall | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM tool_calls WHERE id = ?", (tool_call_id,)
            ).fetchone()
        return self._tool_call(row) if row else None

    def ended_tool_calls(self, session_id: str | None, limit: int = 1000) -> list[ToolCall]:
        query = "SELECT * FROM tool_calls WHERE ended_at IS NOT NULL"
        args: tuple[object, ...] = ()
        if session_id:
            query += " AND session_id = ?"
            args = (session_id,)
        query += " ORDER BY ended_at DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*args, limit)).fetchall()
        return [self._tool_call(row) for row in rows]

    @staticmethod
    def _tool_call(row: tuple) -> ToolCall:  # type: ignore[type-arg]
        return ToolCall(
            id=row[0],
            session_id=row[1],
            owner_uid=row[2],
            intent=_intent_from_json(row[3]),
            limits=Resources.from_dict(json.loads(row[4])),
            started_at=row[5],
            launcher_pid=row[6],
            ended_at=row[7],
            exit=ExitStatus(**json.loads(row[8])) if row[8] else ExitStatus(),
            usage=Usage(**json.loads(row[9])) if row[9] else Usage(),
            leftover_processes_killed=row[10],
            waiting=json.loads(row[3]).get("waiting_for_command", False),
            enforcements=_enforcements(row[11]),
        )

    # ---- control holds (agentd/control.py) ------------------------------------------

    def save_hold(
        self, rel: str, actor: str, cpu: float | None, memory_high: int | None, frozen: bool
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO control_holds VALUES (?, ?, ?, ?, ?)",
                (rel, actor, cpu, memory_high, int(frozen)),
            )

    def forget_holds(self, rel: str, actor: str | None = None) -> None:
        """One actor's hold on `rel`, or every hold on it (actor None)."""
        with self._lock:
            if actor is None:
                self._db.execute("DELETE FROM control_holds WHERE rel = ?", (rel,))
            else:
                self._db.execute(
                    "DELETE FROM control_holds WHERE rel = ? AND actor = ?", (rel, actor)
                )

    def holds(self) -> list[tuple[str, str, float | None, int | None, bool]]:
        """(rel, actor, cpu, memory_high, frozen) of every hold."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM control_holds").fetchall()
        return [(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]


def _enforcements(text: str | None) -> list[Enforcement]:
    if not text:
        return []
    return [Enforcement(**{**e, "argv": tuple(e["argv"])}) for e in json.loads(text)]
