"""The migration warmer (agentd/cgroups/warmer.py) on real cgroups: it moves its
process every period while sessions are open, and not at all while the daemon's own
placements come faster than the period (they keep the semaphore warm themselves)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from agentd.cgroups.base import CgroupBackend
from agentd.cgroups.detect import choose_backend, detect_layout
from agentd.cgroups.warmer import MigrationWarmer
from agentd.sdk.launcher import launcher_path

pytestmark = pytest.mark.root


@pytest.fixture
def backend(cgroup_v1_required: None) -> Iterator[CgroupBackend]:
    backend = choose_backend(detect_layout(), "auto", f"agentd-test-{uuid.uuid4().hex[:8]}")
    backend.ensure_root()
    try:
        yield backend
    finally:
        try:
            backend.kill("")
        finally:
            backend.remove("")


def _moves_in(warmer: MigrationWarmer, seconds: float) -> int:
    warmer.start()
    try:
        time.sleep(seconds)
        return warmer.moves
    finally:
        warmer.stop()


def test_the_warmer_moves_its_process_every_period_when_nothing_else_does(
    backend: CgroupBackend,
) -> None:
    warmer = MigrationWarmer(
        backend, launcher_path(), active=lambda: True, period_seconds=0.01,
        last_placement=lambda: 0.0,
    )  # fmt: skip
    assert _moves_in(warmer, 0.5) >= 10


def test_the_warmer_rests_while_placements_come_faster_than_its_period(
    backend: CgroupBackend,
) -> None:
    warmer = MigrationWarmer(
        backend, launcher_path(), active=lambda: True, period_seconds=0.01,
        last_placement=time.monotonic,  # a placement just now, always
    )  # fmt: skip
    assert _moves_in(warmer, 0.5) == 0
    assert set(backend.children("")) == {"sessions"}  # its groups are gone
