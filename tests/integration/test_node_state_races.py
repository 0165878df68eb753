"""GetNodeState and the readers' snapshot while a session closes, on a real Manager
over real cgroups with real tool-call processes.

A session closed between the listing of sessions and the lookup of its tool calls
made that lookup raise NotFoundError: every caller's GetNodeState(include_tool_calls)
failed with NOT_FOUND, and so did the build of the readers' snapshot (retried until
no session closed meanwhile). The race is made deterministic here: the manager's
list_tool_calls closes the session first, as a concurrent CloseSession would.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from node_api_support import make_certs

from agentd.api.auth import Authenticator
from agentd.api.node_api import build_snapshot
from agentd.api.node_sampler import NodeSampler
from agentd.api.node_service import NodeService
from agentd.api.peercred import TokenRegistry
from agentd.api.ratelimit import RateLimiter
from agentd.control import Control
from agentd.manager import Caller, Manager
from agentd.model import Intent, Resources
from agentd.reservations import Reservations
from agentd.scoring import Capacity
from agentd.sdk.launcher import spawn
from agentd.v1 import node_pb2 as pb

pytestmark = pytest.mark.root

ROOT = Caller(uid=0, gid=0, pid=os.getpid())
GiB = 1 << 30


@dataclass
class Race:
    service: NodeService
    manager: Manager
    stays: str  # the session left open
    stays_tool_call: str
    closes: str  # the session closed during the lookup of its tool calls
    closed: list[str] = field(default_factory=list)  # what the lookup closed
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)


def start_sleep(manager: Manager, session_id: str) -> tuple[str, subprocess.Popen[bytes]]:
    launch = spawn(["sleep", "60"], None, None, subprocess.DEVNULL, subprocess.DEVNULL, None, False)
    tool_call = manager.begin_tool_call(ROOT, session_id, Intent(label="sleep"), launch.pid)
    launch.release()
    return tool_call.id, launch.process


def node_service(manager: Manager) -> NodeService:
    return NodeService(
        manager,
        Control(manager),
        Reservations(),
        NodeSampler(manager.backend),
        Authenticator(TokenRegistry()),
        RateLimiter(1000.0, 1000.0),
        None,
        node_name="race-test",
        capacity=Capacity(memory=4 * GiB, cpus=2.0, pids=32768),
    )


@pytest.fixture
def race(real_manager: Manager, monkeypatch: pytest.MonkeyPatch) -> Iterator[Race]:
    manager = real_manager
    stays = manager.create_session(ROOT, "stays", Resources(memory_max=GiB), None)
    closes = manager.create_session(ROOT, "closes", Resources(memory_max=GiB), None)
    stays_tool_call, stays_process = start_sleep(manager, stays.id)
    _, closes_process = start_sleep(manager, closes.id)
    race = Race(node_service(manager), manager, stays.id, stays_tool_call, closes.id)
    race.processes += [stays_process, closes_process]
    list_tool_calls = manager.list_tool_calls

    def closing_first(caller: Caller, session_id: str | None, include_ended: bool) -> Any:
        if session_id == race.closes and not race.closed:
            manager.close_session(ROOT, session_id)
            race.closed.append(session_id)
        return list_tool_calls(caller, session_id, include_ended)

    monkeypatch.setattr(manager, "list_tool_calls", closing_first)
    try:
        yield race
    finally:
        monkeypatch.undo()
        for session in manager.list_sessions(ROOT):
            manager.close_session(ROOT, session.id)
        for process in race.processes:
            process.kill()
            process.wait(timeout=10)


def assert_closed_session_shown_without_tool_calls(race: Race, state: pb.NodeState) -> None:
    assert race.closed == [race.closes], "the lookup did not race with the close"
    assert [s.id for s in race.manager.list_sessions(ROOT)] == [race.stays]
    views = {view.session.id: view for view in state.sessions}
    assert set(views) == {race.stays, race.closes}
    assert list(views[race.closes].tool_calls) == []
    assert [t.id for t in views[race.stays].tool_calls] == [race.stays_tool_call]
    assert views[race.stays].session.running_tool_calls == 1


class TlsCallContext:
    """What NodeService.serve reads of a call over TCP: the verified client
    certificate (grpc has checked it against the CA before the call gets here)."""

    def __init__(self, certificate: bytes) -> None:
        self.certificate = certificate

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self.certificate]}

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> float | None:
        return None


def test_get_node_state_answers_while_a_session_closes(race: Race, tmp_path: Path) -> None:
    certificate = (make_certs(tmp_path / "certs") / "client-kube.pem").read_bytes()
    request = pb.GetNodeStateRequest(include_tool_calls=True)
    response, status = race.service.serve(
        NodeService.GetNodeState.__wrapped__, request, TlsCallContext(certificate)
    )
    assert status is None, status
    assert_closed_session_shown_without_tool_calls(race, response.state)


def test_the_readers_snapshot_builds_while_a_session_closes(race: Race) -> None:
    snapshot = build_snapshot(race.service, generation=7)
    assert snapshot.generation == 7
    state = pb.GetNodeStateResponse.FromString(snapshot.state).state
    assert_closed_session_shown_without_tool_calls(race, state)
    # The room left was read after the close: only the open session's budget counts.
    assert snapshot.room.memory == 3 * GiB
