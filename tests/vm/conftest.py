"""The VM tier: tests in this folder run only inside the guest that tests/vm/run boots.

tests/vm/guest-run sets AGENTD_VM=1 in the guest. Anywhere else (a developer's host, CI's
plain `pytest`) every test here is skipped with the reason below, which `-ra` prints.
Inside the VM nothing is skipped by this file: a missing prerequisite there is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
IN_VM = os.environ.get("AGENTD_VM") == "1"
SKIP_REASON = (
    "VM tier: runs only inside the guest booted by tests/vm/run (AGENTD_VM=1 is not set); "
    "run `tests/vm/run` to run it"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item of the session, not only this folder's.
    for item in items:
        if HERE not in item.path.parents:
            continue
        item.add_marker(pytest.mark.vm)
        if not IN_VM:
            if os.environ.get("CI", "").lower() == "true":
                # Under CI a VM test outside the VM fails the run, never passes as a skip.
                raise pytest.UsageError(f"CI=true: {SKIP_REASON}")
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
