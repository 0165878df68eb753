"""Process trees saved in batches (Manager.save_trees): one transaction per batch,
durable once the call returns, pruned down to the newest `keep` only when asked."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agentd.store import Store


def _tree(n: int) -> dict[str, object]:
    return {"root": {"pid": n, "argv": ["true", str(n)]}, "nodes": n}


def test_a_batch_is_durable_when_the_call_returns_even_if_the_daemon_is_killed(
    tmp_path: Path,
) -> None:
    """A process saves a batch, says so, and is SIGKILLed at once: a new Store on the
    same directory (the restarted daemon) finds every tree of the batch."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from agentd.store import Store
        store = Store(Path({str(tmp_path / "state")!r}))
        trees = [(f"tc-{{i:012x}}", "s", 1000.0 + i, {{"nodes": i}}) for i in range(50)]
        store.save_process_trees(trees, keep=2000, prune=False)
        print("saved", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=tmp_path, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "saved"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    store = Store(tmp_path / "state")
    try:
        for i in range(50):
            assert store.process_tree(f"tc-{i:012x}") == {"nodes": i}
    finally:
        store.close()


def test_pruning_keeps_the_newest_and_only_when_asked(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    try:
        first = [(f"tc-{i:012x}", "s", float(i), _tree(i)) for i in range(10)]
        store.save_process_trees(first, keep=5, prune=False)
        assert all(store.process_tree(t[0]) is not None for t in first)  # not pruned yet
        second = [(f"tc-{i:012x}", "s", float(i), _tree(i)) for i in range(10, 13)]
        store.save_process_trees(second, keep=5, prune=True)
        kept = [i for i in range(13) if store.process_tree(f"tc-{i:012x}") is not None]
        assert kept == [8, 9, 10, 11, 12]
        assert store.process_tree("tc-00000000000c") == _tree(12)
    finally:
        store.close()


def test_a_failing_batch_saves_none_of_its_trees(tmp_path: Path) -> None:
    """One transaction: when the second row cannot be stored (sqlite cannot bind its
    session id), the first one, already inserted, is rolled back with it."""
    store = Store(tmp_path / "state")
    try:
        trees = [("tc-000000000001", "s", 1.0, _tree(1)), ("tc-000000000002", object(), 2.0, {})]
        with pytest.raises(sqlite3.Error):
            store.save_process_trees(trees, keep=10)  # type: ignore[arg-type]
        assert store.process_tree("tc-000000000001") is None
        store.save_process_tree("tc-000000000003", "s", 3.0, _tree(3), keep=10)
        assert store.process_tree("tc-000000000003") == _tree(3)
    finally:
        store.close()
