"""Shared test helpers. Keep this small and generic: several suites add to it."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def skip_or_fail(reason: str) -> None:
    """Skip locally with a printed reason; in CI (CI=true) a missing prerequisite is a
    failure, so a misconfigured runner cannot turn a suite green by skipping it."""
    if in_ci():
        pytest.fail(f"CI=true and a prerequisite is missing: {reason}")
    print(f"SKIP: {reason}")
    pytest.skip(reason)


def require_root() -> None:
    if os.geteuid() != 0:
        skip_or_fail(f"needs root (euid is {os.geteuid()})")


def cgroup_v1_unavailable_reason() -> str | None:
    """Why the v1 hierarchies agentd needs are not usable here, or None if they are."""
    from agentd.cgroups.detect import detect_layout

    try:
        layout = detect_layout()
    except Exception as e:  # any failure to read mountinfo means "not available"
        return f"cannot read cgroup layout: {e}"
    missing = [
        c for c in ("memory", "cpu", "cpuacct", "pids", "freezer") if c not in layout.v1_mounts
    ]
    if missing:
        return f"cgroup v1 hierarchies not mounted: {', '.join(missing)}"
    for c in ("memory", "cpu", "cpuacct", "pids", "freezer"):
        if not os.access(layout.v1_mounts[c], os.W_OK):
            return f"{layout.v1_mounts[c]} is not writable"
    return None


def cgroup_v1_available() -> bool:
    return cgroup_v1_unavailable_reason() is None


def require_cgroup_v1() -> None:
    require_root()
    reason = cgroup_v1_unavailable_reason()
    if reason:
        skip_or_fail(reason)


@pytest.fixture
def root_required() -> None:
    """Use as a fixture where importing this module is awkward (importlib import mode)."""
    require_root()


@pytest.fixture
def cgroup_v1_required() -> None:
    require_cgroup_v1()


# The VM tier's tests run inside the guest that tests/vm/run boots (AGENTD_VM=1 there);
# on the host they are not collected at all rather than skipped.
collect_ignore_glob = [] if os.environ.get("AGENTD_VM") == "1" else ["vm/*"]
