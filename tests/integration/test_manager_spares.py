"""Spare tool-call groups against closing their session, on real cgroups (v1 here).

The group worker makes spare groups while requests close sessions: a spare made in a
session group that is being removed would make its rmdir fail with EBUSY (seen under
bench/api_load.py). The interleaving is forced: the spare's mkdir is held until the
close reaches its rmdir, or one second if the close cannot get there first.
"""

from __future__ import annotations

import os
import threading

import pytest

from agentd.cgroups.base import GroupLimits
from agentd.manager import Caller, Manager
from agentd.model import Intent, Resources

pytestmark = pytest.mark.root

ROOT = Caller(uid=0, gid=0, pid=os.getpid())
GiB = 1 << 30


@pytest.fixture
def manager(real_manager: Manager) -> Manager:
    return real_manager


def test_a_spare_made_while_the_session_closes_never_blocks_its_removal(
    manager: Manager,
) -> None:
    """The race: the close lists the session group's children, removes them, and its
    rmdir finds a spare made in between. Forced here: the second spare's mkdir waits
    until the close has listed the children (at most a second), and the listing
    waits until that spare exists (at most a second)."""
    manager.spares_per_session = 2
    session = manager.create_session(ROOT, "s-race", Resources(), None)
    backend = manager.backend
    fs = backend._fs  # type: ignore[attr-defined]
    real_create, real_subdirs = backend.create, fs.subdirs
    children_listed = threading.Event()
    spare_created = threading.Event()
    creates: list[str] = []
    closed: list[object] = []

    def close() -> None:
        try:
            closed.append(manager.close_session(ROOT, session.id))
        except Exception as e:
            closed.append(e)

    closer = threading.Thread(target=close)

    def create(rel: str, limits: GroupLimits) -> None:
        creates.append(rel)
        if len(creates) == 2:  # the second spare: the close runs meanwhile
            closer.start()
            children_listed.wait(1.0)
            real_create(rel, limits)
            spare_created.set()
            return
        real_create(rel, limits)

    def subdirs(path: str) -> list[str]:
        children = real_subdirs(path)
        if path.endswith(f"/{session.cgroup_rel}") and not children_listed.is_set():
            children_listed.set()
            spare_created.wait(1.0)
        return children

    backend.create = create  # type: ignore[method-assign]
    fs.subdirs = subdirs
    made = manager.make_spares()
    closer.join(10.0)
    assert not closer.is_alive()
    # The close succeeded (no EBUSY): it waited for the spare and removed it with
    # the session; both spares were made while the session was open.
    assert closed and not isinstance(closed[0], Exception), closed
    assert made == 2
    assert not backend.exists(session.cgroup_rel)
    assert manager.spare_ids() == set()
    assert manager.make_spares() == 0  # nothing is made for the closed session
    assert backend.children("sessions") == []


def test_spares_are_made_for_open_sessions_only(manager: Manager) -> None:
    kept = manager.create_session(ROOT, "s-kept", Resources(), None)
    gone = manager.create_session(ROOT, "s-gone", Resources(), None)
    manager.close_session(ROOT, gone.id)
    assert manager.make_spares() == manager.spares_per_session
    spares = manager.spare_ids()
    assert len(spares) == manager.spares_per_session
    assert set(manager.backend.children(kept.cgroup_rel)) == spares
    assert manager.backend.children("sessions") == [kept.id]
    manager.close_session(ROOT, kept.id)
    assert manager.backend.children("sessions") == []


def test_a_request_does_not_wait_for_a_spare_being_made(manager: Manager) -> None:
    """make_spares holds its own lock across the mkdirs, not the manager's: a request
    (here GetSession and a BeginToolCall's validation, both under the manager lock)
    completes while a spare's mkdir is held."""
    session = manager.create_session(ROOT, "s-busy-spare", Resources(), None)
    backend = manager.backend
    real_create = backend.create
    in_mkdir = threading.Event()
    release = threading.Event()

    def create(rel: str, limits: GroupLimits) -> None:
        in_mkdir.set()
        release.wait(5.0)
        real_create(rel, limits)

    backend.create = create  # type: ignore[method-assign]
    maker = threading.Thread(target=manager.make_spares)
    maker.start()
    try:
        assert in_mkdir.wait(5.0)
        answered = threading.Event()

        def request() -> None:
            manager.get_session(ROOT, session.id)
            manager.validate_intent(ROOT, session.id, Intent())
            answered.set()

        threading.Thread(target=request).start()
        assert answered.wait(2.0), "the request waited for the spare's mkdir"
    finally:
        release.set()
        maker.join(10.0)
        backend.create = real_create  # type: ignore[method-assign]
    assert not maker.is_alive()
    assert len(manager.spare_ids()) == manager.spares_per_session
    manager.close_session(ROOT, session.id)
    assert manager.backend.children("sessions") == []
