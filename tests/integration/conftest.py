from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))  # tests/: shared helpers

from agentd_process import AgentdProcess
from conftest import require_cgroup_v1

from agentd.cgroups.detect import choose_backend, detect_layout
from agentd.manager import Manager, NodeLimits
from agentd.model import Resources
from agentd.store import Store


@pytest.fixture
def agentd(request: pytest.FixtureRequest) -> Iterator[AgentdProcess]:
    """A running daemon of this test's own. Teardown fails the test if any session
    group is left behind: every test must close what it opened."""
    require_cgroup_v1()
    marker = request.node.get_closest_marker("agentd_config")
    daemon = AgentdProcess(config=marker.args[0] if marker else "")
    daemon.start()
    yield daemon
    leftovers = daemon.cleanup()
    assert not leftovers, f"{len(leftovers)} groups left behind: {leftovers[:5]}"
    # SIGTERM is a clean shutdown: exit 0, nothing logged as failed.
    assert daemon.exit_status in (0, None), f"exit {daemon.exit_status}\n{daemon.logs()[-4000:]}"
    assert "shutdown_step_failed" not in daemon.logs()


@pytest.fixture
def real_manager(cgroup_v1_required: None, tmp_path: Path) -> Iterator[Manager]:
    """A Manager (no daemon) over a real backend under a root of its own, removed
    with everything left in it."""
    gib = 1 << 30
    backend = choose_backend(detect_layout(), "auto", f"agentd-test-{uuid.uuid4().hex[:8]}")
    backend.ensure_root()
    store = Store(tmp_path / "state")
    node = NodeLimits(
        allocatable_memory=4 * gib,
        cpus=2.0,
        default_session=Resources(memory_max=gib, cpu=2.0, pids_max=256),
    )
    mgr = Manager(backend, store, node)
    try:
        yield mgr
    finally:
        try:
            backend.kill("")
        finally:
            backend.remove("")
            store.close()
