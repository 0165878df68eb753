from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))  # tests/: shared helpers

from agentd_process import AgentdProcess
from conftest import require_cgroup_v1


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
