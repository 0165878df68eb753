"""NodeService on a real daemon: mutual TLS and roles, local agents, control that
really reaches cgroupfs, reservations, limits, and the resumable event stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import require_cgroup_v1
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import load_pem_x509_certificate
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from node_api_support import NodeDaemon, node_daemon

from agentd.certs import Authority, client_subject, init_directory, issue
from agentd.sdk import NotFound
from agentd.v1 import agent_pb2 as apb
from agentd.v1 import node_pb2 as pb
from agentd.v1 import node_pb2_grpc

NOBODY = 65534
TIMEOUT = 10


@pytest.fixture(params=[0, 2], ids=["daemon", "readers"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NodeDaemon]:
    """Every test twice: the daemon serving TCP itself, and two reader processes on
    its port (docs/node-api.md) that answer the reads and pass the rest on."""
    require_cgroup_v1()
    marker = request.node.get_closest_marker("node_api")
    api, *rest = marker.args if marker else ("",)
    running = node_daemon(tmp_path, f"{api}\nreaders = {request.param}", *rest)
    yield running
    leftovers = running.daemon.cleanup()
    assert not leftovers, f"groups left behind: {leftovers}"
    assert running.daemon.exit_status in (0, None), running.daemon.logs()[-4000:]


def code_of(call) -> grpc.StatusCode | None:
    try:
        call()
    except grpc.RpcError as e:
        return e.code()
    return None


def error_of(call) -> grpc.RpcError:
    try:
        call()
    except grpc.RpcError as e:
        return e
    raise AssertionError("the call succeeded")


def details_of(error: grpc.RpcError) -> list:
    status = rpc_status.from_call(error)
    out = []
    for packed in status.details if status else []:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.RetryInfo,
            error_details_pb2.BadRequest,
        ):
            if packed.Is(kind.DESCRIPTOR):
                msg = kind()
                packed.Unpack(msg)
                out.append(msg)
    return out


def target(kind: type, session_id: str, tool_call_id: str = ""):
    return kind(target=pb.Target(session_id=session_id, tool_call_id=tool_call_id))


def audit_entries(node: NodeDaemon) -> list[dict]:
    return [json.loads(line) for line in node.audit_log.read_text().splitlines()]


# ---- transport and roles --------------------------------------------------------------


def test_tls_refuses_clients_without_a_certificate_or_from_another_ca(node, tmp_path):
    request = pb.GetNodeStateRequest()
    # The scheduler's certificate works: the refusals below are about the certificate.
    assert node.stub("kube").GetNodeState(request, timeout=TIMEOUT).state.capacity.cpus > 0
    no_cert = grpc.secure_channel(
        node.address, grpc.ssl_channel_credentials((node.certs / "ca.pem").read_bytes())
    )
    stub = node_pb2_grpc.NodeServiceStub(no_cert)
    assert code_of(lambda: stub.GetNodeState(request, timeout=TIMEOUT)) in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNAUTHENTICATED,
    )
    # A certificate with the right shape (OU=scheduler) from a CA the daemon does not trust.
    init_directory(tmp_path / "other", ["node-test"], [("scheduler", "kube")])
    foreign = node_pb2_grpc.NodeServiceStub(
        grpc.secure_channel(
            node.address,
            grpc.ssl_channel_credentials(
                root_certificates=(node.certs / "ca.pem").read_bytes(),
                private_key=(tmp_path / "other" / "client-kube.key").read_bytes(),
                certificate_chain=(tmp_path / "other" / "client-kube.pem").read_bytes(),
            ),
        )
    )
    assert code_of(lambda: foreign.GetNodeState(request, timeout=TIMEOUT)) in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNAUTHENTICATED,
    )
    # Plain TCP without TLS at all.
    plain = node_pb2_grpc.NodeServiceStub(grpc.insecure_channel(node.address))
    assert code_of(lambda: plain.GetNodeState(request, timeout=TIMEOUT)) is not None
    assert node.daemon.running()


def test_certificate_without_a_known_role_is_refused(node, tmp_path):
    ca_dir = node.certs
    authority = Authority(
        load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes()),
        serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None),
    )
    cert, key = issue(authority, client_subject("admin", "mallory"))
    stub = node_pb2_grpc.NodeServiceStub(
        grpc.secure_channel(
            node.address,
            grpc.ssl_channel_credentials(
                root_certificates=(ca_dir / "ca.pem").read_bytes(),
                private_key=key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
                certificate_chain=cert.public_bytes(serialization.Encoding.PEM),
            ),
        )
    )
    error = error_of(lambda: stub.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "OU" in error.details()


def test_observer_reads_but_cannot_control_and_the_refusal_is_audited(node):
    with node.daemon.client() as client, client.session("obs-target", memory="128M"):
        observer = node.stub("grafana")
        state = observer.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).state
        assert [v.session.id for v in state.sessions] == ["obs-target"]
        scores = observer.ScorePlacement(
            pb.ScorePlacementRequest(candidates=[pb.Candidate(id="c")]), timeout=TIMEOUT
        )
        assert scores.scores[0].candidate_id == "c"
        for method, request in (
            (
                "Throttle",
                pb.ThrottleRequest(target=pb.Target(session_id="obs-target"), cpu_max="1"),
            ),
            ("Freeze", target(pb.FreezeRequest, "obs-target")),
            ("Evict", pb.EvictRequest(target=pb.Target(session_id="obs-target"))),
            ("Admit", pb.AdmitRequest(candidate=pb.Candidate(id="x"))),
        ):
            error = error_of(lambda m=method, r=request: getattr(observer, m)(r, timeout=TIMEOUT))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, method
            (info,) = details_of(error)
            assert info.reason == "ROLE_NOT_ALLOWED"
            assert dict(info.metadata) == {"role": "observer", "method": method}
        # Nothing happened to the session.
        state = node.stub().GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).state
        (view,) = state.sessions
        assert not view.frozen and not view.throttled
    entries = audit_entries(node)
    throttle = next(e for e in entries if e["method"] == "Throttle")
    assert throttle["principal"] == {"name": "grafana", "role": "observer", "transport": "tcp"}
    assert throttle["target"] == {"session_id": "obs-target", "tool_call_id": ""}
    assert throttle["outcome"].startswith("refused: RoleDeniedError")
    assert {e["method"] for e in entries} == {"Throttle", "Freeze", "Evict", "Admit"}


# ---- control reaches cgroupfs ------------------------------------------------------------


def _cgroup_file(node: NodeDaemon, controller: str, rel: str, name: str) -> str:
    return f"/sys/fs/cgroup/{controller}/{node.daemon.cgroup_root}/{rel}/{name}"


def _cpu_seconds(node: NodeDaemon, rel: str) -> float:
    with open(_cgroup_file(node, "cpuacct", rel, "cpuacct.usage")) as f:
        return int(f.read()) / 1e9


def _cpu_rate(node: NodeDaemon, rel: str, seconds: float = 1.0) -> float:
    before = _cpu_seconds(node, rel)
    time.sleep(seconds)
    return (_cpu_seconds(node, rel) - before) / seconds


def _retry_too_soon(call):
    """Control refuses a second change of the same knob within its anti-flap interval
    (FAILED_PRECONDITION with RetryInfo): wait as told, once."""
    try:
        return call()
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
        (retry,) = [d for d in details_of(e) if isinstance(d, error_details_pb2.RetryInfo)]
        time.sleep(retry.retry_delay.ToTimedelta().total_seconds() + 0.05)
        return call()


def test_throttle_freeze_resume_really_change_the_session(node):
    scheduler = node.stub()
    busy = [sys.executable, "-c", "while True: pass"]
    with node.daemon.client() as client, client.session("hot", memory="256M") as session:
        spinner = session.start(busy)
        rel = "sessions/hot"
        # It runs (the host is shared: how fast is not asserted, only the bounds below).
        assert _cpu_rate(node, rel) > 0.05

        reply = scheduler.Throttle(
            pb.ThrottleRequest(target=pb.Target(session_id="hot"), cpu_max="100m"),
            timeout=TIMEOUT,
        )
        reply = reply.result
        assert (reply.action, reply.changed, reply.tool_calls_affected) == ("throttle", True, 1)
        with open(_cgroup_file(node, "cpu", rel, "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(_cgroup_file(node, "cpu", rel, "cpu.cfs_period_us")) as f:
            period = int(f.read())
        assert quota == period // 10
        assert _cpu_rate(node, rel, 2.0) < 0.15  # 0.1 core, measured over 20 periods

        reply = _retry_too_soon(
            lambda: scheduler.Freeze(target(pb.FreezeRequest, "hot"), timeout=TIMEOUT)
        )
        assert reply.result.changed
        with open(_cgroup_file(node, "freezer", rel, "freezer.state")) as f:
            assert f.read().strip() == "FROZEN"
        assert _cpu_rate(node, rel, 0.5) < 0.01
        (view,) = scheduler.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).state.sessions
        assert view.frozen and view.throttled

        reply = _retry_too_soon(
            lambda: scheduler.Resume(target(pb.ResumeRequest, "hot"), timeout=TIMEOUT)
        )
        assert reply.result.changed
        with open(_cgroup_file(node, "freezer", rel, "freezer.state")) as f:
            assert f.read().strip() == "THAWED"
        with open(_cgroup_file(node, "cpu", rel, "cpu.cfs_quota_us")) as f:
            assert int(f.read()) == 2 * period or os.cpu_count() != 2  # the budget: all CPUs
        assert _cpu_rate(node, rel) > 0.05  # running again
        (view,) = scheduler.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).state.sessions
        assert not view.frozen and not view.throttled

        # Evicting the tool call kills it; the session stays.
        reply = scheduler.Evict(
            pb.EvictRequest(
                target=pb.Target(session_id="hot", tool_call_id=spinner.tool_call_id),
                reason="test",
            ),
            timeout=TIMEOUT,
        )
        assert reply.result.action == "evict"
        assert spinner.wait(timeout=10).returncode == -signal.SIGKILL
    outcomes = [(e["method"], e["outcome"]) for e in audit_entries(node) if e["outcome"] == "ok"]
    assert [m for m, _ in outcomes] == ["Throttle", "Freeze", "Resume", "Evict"]
    evict = audit_entries(node)[-1]
    assert evict["principal"]["name"] == "kube" and evict["evict_reason"] == "test"


def test_evicting_a_session_closes_it(node):
    with node.daemon.client() as client:
        session = client.session("doomed", memory="128M")
        sleeper = session.start(["/bin/sleep", "60"])
        reply = node.stub().Evict(
            pb.EvictRequest(target=pb.Target(session_id="doomed"), reason="node drain"),
            timeout=TIMEOUT,
        )
        assert (reply.result.action, reply.result.tool_calls_affected) == ("evict", 1)
        assert sleeper.popen.wait(timeout=10) == -signal.SIGKILL
        assert [s.id for s in client.sessions()] == []
        assert not os.path.exists(_cgroup_file(node, "memory", "sessions/doomed", ""))


# ---- local agents on the unix socket ----------------------------------------------------

AGENT = r"""
import json, os, sys, threading
from agentd.sdk import Client
from agentd.sdk.node import LocalNodeClient
from agentd.v1 import node_pb2 as pb
import grpc, google.rpc.error_details_pb2  # noqa: F401 - loaded before dropping root
grpc.insecure_channel("unix:/nonexistent").close()

socket_path, foreign, start_token = sys.argv[1:4]
os.setgroups([]); os.setgid(NOBODY); os.setuid(NOBODY)
out = {}

def code(fn):
    try:
        fn()
    except grpc.RpcError as e:
        return e.code().name
    return "OK"

node = LocalNodeClient(socket_path)
T = lambda s: pb.Target(session_id=s)
with Client(socket_path) as c, c.session("mine", memory="64M"):
    state = node.call("GetNodeState", pb.GetNodeStateRequest(include_tool_calls=True)).state
    out["visible"] = [v.session.id for v in state.sessions]
    out["reservations_visible"] = len(state.reservations)
    out["score"] = code(lambda: node.call("ScorePlacement", pb.ScorePlacementRequest(
        candidates=[pb.Candidate(id="x")])))
    out["throttle_foreign"] = code(lambda: node.call("Throttle", pb.ThrottleRequest(
        target=T(foreign), cpu_max="0.1")))
    out["freeze_foreign"] = code(lambda: node.call("Freeze", pb.FreezeRequest(target=T(foreign))))
    out["resume_foreign"] = code(lambda: node.call("Resume", pb.ResumeRequest(target=T(foreign))))
    out["evict_foreign"] = code(lambda: node.call("Evict", pb.EvictRequest(target=T(foreign))))
    out["admit"] = code(lambda: node.call("Admit", pb.AdmitRequest(candidate=pb.Candidate(id="a"))))
    out["watch_foreign"] = code(lambda: next(iter(node.watch(pb.WatchNodeEventsRequest(
        session_id=foreign), timeout=5))))
    out["throttle_own"] = code(lambda: node.call("Throttle", pb.ThrottleRequest(
        target=T("mine"), cpu_max="0.5")))
    # Every event since before the foreign session opened: only our own are shown.
    seen = []
    try:
        for event in node.watch(pb.WatchNodeEventsRequest(resume_token=start_token), timeout=3):
            event = event.event
            seen.append([pb.NodeEventKind.Name(event.kind), event.session_id])
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
    out["events"] = seen
print(json.dumps(out))
""".replace("NOBODY", str(NOBODY))


@pytest.mark.node_api("", "off", f'[daemon]\nsocket_group = "{NOBODY}"\n')
def test_local_agent_controls_and_sees_only_its_own_sessions(node):
    running, daemon = node, node.daemon
    scheduler = running.stub()
    boot_token = _current_token(running)
    with daemon.client() as client, client.session("root-owned", memory="64M") as foreign:
        sleeper = foreign.start(["/bin/sleep", "30"])
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(AGENT), daemon.socket, "root-owned", boot_token],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["visible"] == ["mine"]
        assert out["reservations_visible"] == 0
        assert out["score"] == "OK"
        for key in (
            "throttle_foreign",
            "freeze_foreign",
            "resume_foreign",
            "evict_foreign",
            "watch_foreign",
            "admit",
        ):
            assert out[key] == "PERMISSION_DENIED", (key, out[key])
        assert out["throttle_own"] == "OK"
        assert out["events"] == [
            ["NODE_EVENT_KIND_SESSION_OPENED", "mine"],
            ["NODE_EVENT_KIND_THROTTLED", "mine"],
        ]
        # The root-owned session and its tool call are untouched.
        (view,) = scheduler.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).state.sessions
        assert view.session.id == "root-owned" and not view.frozen and not view.throttled
        assert sleeper.popen.poll() is None
        sleeper.kill()
        sleeper.wait()
    refused = [e for e in audit_entries(running) if e["outcome"] != "ok"]
    assert {e["principal"]["name"] for e in refused} == {f"uid:{NOBODY}"}


def _current_token(node: NodeDaemon) -> str:
    """Where the event stream is now (list-then-watch: NodeState carries it)."""
    return node.stub().GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).resume_token


# ---- the event stream ---------------------------------------------------------------------

WATCHER = r"""
import sys
from agentd.sdk.node import tls_channel
from agentd.v1 import node_pb2 as pb, node_pb2_grpc
address, certs = sys.argv[1:3]
stub = node_pb2_grpc.NodeServiceStub(tls_channel(
    address, f"{certs}/ca.pem", f"{certs}/client-kube.pem", f"{certs}/client-kube.key"))
# List, then watch from there: nothing the test does after READY can be missed.
token = stub.GetNodeState(pb.GetNodeStateRequest()).resume_token
print("READY", flush=True)
for event in stub.WatchNodeEvents(pb.WatchNodeEventsRequest(resume_token=token)):
    e = event.event
    print(pb.NodeEventKind.Name(e.kind), e.session_id, e.resume_token, flush=True)
"""


def _open_close(client, names: list[str]) -> list[tuple[str, str]]:
    """Open and close a session per name; the events that causes, in order."""
    expected = []
    for name in names:
        client.session(name, memory="16M").close()
        expected += [
            ("NODE_EVENT_KIND_SESSION_OPENED", name),
            ("NODE_EVENT_KIND_SESSION_CLOSED", name),
        ]
    return expected


def _read(stub, token: str, count: int) -> list[pb.NodeEvent]:
    stream = stub.WatchNodeEvents(pb.WatchNodeEventsRequest(resume_token=token), timeout=TIMEOUT)
    events = []
    for response in stream:
        events.append(response.event)
        if len(events) == count:
            break
    stream.cancel()
    return events


def _kinds(events: list[pb.NodeEvent]) -> list[tuple[str, str]]:
    return [(pb.NodeEventKind.Name(e.kind), e.session_id) for e in events]


@pytest.mark.node_api("event_history = 64")
def test_event_stream_resumes_after_the_client_is_killed_with_nothing_lost(node):
    watcher = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WATCHER), node.address, str(node.certs)],
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        with node.daemon.client() as client:
            assert watcher.stdout.readline().strip() == "READY"
            client.session("first", memory="16M").close()
            line = watcher.stdout.readline().split()
            assert line[:2] == ["NODE_EVENT_KIND_SESSION_OPENED", "first"], line
            last_token = line[2]
            watcher.kill()  # mid-stream, without a goodbye
            watcher.wait()
            # Events it may have missed: the close of "first", then these.
            expected = [("NODE_EVENT_KIND_SESSION_CLOSED", "first")]
            expected += _open_close(client, ["w1", "w2", "w3"])
            with client.session("w4", memory="16M") as session:
                session.run(["/bin/true"])
                expected += [
                    ("NODE_EVENT_KIND_SESSION_OPENED", "w4"),
                    ("NODE_EVENT_KIND_TOOL_CALL_STARTED", "w4"),
                    ("NODE_EVENT_KIND_TOOL_CALL_ENDED", "w4"),
                ]
            expected.append(("NODE_EVENT_KIND_SESSION_CLOSED", "w4"))
            events = _read(node.stub(), last_token, len(expected))
            assert _kinds(events) == expected
            started = events[-3]
            assert started.tool_call.id == started.tool_call_id and started.tool_call.id
            # Tokens go on from where the last one was: a resume from the middle
            # replays exactly the rest.
            assert (
                _kinds(_read(node.stub(), events[5].resume_token, len(expected) - 6))
                == (expected[6:])
            )

            # Past the buffer (64 events): one OVERFLOW with the exact count, then the
            # 64 kept events, then the stream goes on with new ones.
            old_token = events[-1].resume_token
            more = _open_close(client, [f"o{i}" for i in range(40)])  # 80 events
            stream = node.stub().WatchNodeEvents(
                pb.WatchNodeEventsRequest(resume_token=old_token), timeout=TIMEOUT
            )
            first = next(stream).event
            assert first.kind == pb.NODE_EVENT_KIND_OVERFLOW
            assert first.lost == len(more) - 64
            kept = [next(stream).event for _ in range(64)]
            assert _kinds(kept) == more[-64:]
            client.session("after", memory="16M").close()
            assert _kinds([next(stream).event]) == [("NODE_EVENT_KIND_SESSION_OPENED", "after")]
            stream.cancel()
            # A token of another daemon run: an OVERFLOW too (nothing is known of it).
            boot, _, seq = old_token.partition(".")
            foreign = f"{'0' * 16 if boot != '0' * 16 else '1' * 16}.{seq}"
            (overflow,) = _read(node.stub(), foreign, 1)
            assert overflow.kind == pb.NODE_EVENT_KIND_OVERFLOW
            assert "restarted" in overflow.details["reason"]
            error = error_of(lambda: _read(node.stub(), "not-a-token", 1))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            (bad,) = details_of(error)
            assert bad.field_violations[0].field == "resume_token"
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()


def test_a_token_from_before_a_restart_is_reported_as_overflow(node):
    with node.daemon.client() as client:
        client.session("before", memory="16M").close()
    token = _current_token(node)
    node.daemon.stop()
    node.daemon.start()
    with node.daemon.client() as client:
        client.session("after", memory="16M").close()
    events = _read(node.stub(), token, 3)
    assert events[0].kind == pb.NODE_EVENT_KIND_OVERFLOW
    assert events[0].lost == 0  # this run's events are all still kept: replayed next
    assert _kinds(events[1:]) == [
        ("NODE_EVENT_KIND_SESSION_OPENED", "after"),
        ("NODE_EVENT_KIND_SESSION_CLOSED", "after"),
    ]


# ---- reservations --------------------------------------------------------------------------


def test_reservations_count_against_the_node_are_used_by_sessions_and_expire(node):
    scheduler = node.stub()
    state = scheduler.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).state
    allocatable = state.capacity.memory_bytes
    big = str(allocatable - 512 * 1024 * 1024)
    fits_alone = pb.Candidate(id="second", session_budget=apb.Resources(memory_max="1G"))
    ttl = {"seconds": 2}
    first = scheduler.Admit(
        pb.AdmitRequest(
            candidate=pb.Candidate(id="first", session_budget=apb.Resources(memory_max=big)),
            ttl=ttl,
        ),
        timeout=TIMEOUT,
    )
    assert first.admitted and first.reservation.id
    # The room left is 512M: a 1G candidate no longer fits, and says why.
    (score,) = scheduler.ScorePlacement(
        pb.ScorePlacementRequest(candidates=[fits_alone]), timeout=TIMEOUT
    ).scores
    assert not score.feasible and score.reason.startswith("memory") and score.score == 0
    refused = scheduler.Admit(pb.AdmitRequest(candidate=fits_alone), timeout=TIMEOUT)
    assert not refused.admitted and refused.reason.startswith("memory")
    listed = scheduler.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).state
    assert [r.id for r in listed.reservations] == [first.reservation.id]
    assert int(listed.allocated.memory_max) >= int(big)
    # Expiry (housekeeping runs every second) gives the room back.
    time.sleep(3.2)
    assert not scheduler.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).state.reservations
    (score,) = scheduler.ScorePlacement(
        pb.ScorePlacementRequest(candidates=[fits_alone]), timeout=TIMEOUT
    ).scores
    assert score.feasible and score.score > 0
    assert score.memory_headroom_bytes < allocatable - 1024**3 + 1
    # A session created with a reservation takes its budget; the reservation is gone.
    reservation = scheduler.Admit(
        pb.AdmitRequest(candidate=fits_alone), timeout=TIMEOUT
    ).reservation
    with node.daemon.client() as client:
        created = client.call(
            "CreateSession", apb.CreateSessionRequest(name="r", reservation_id=reservation.id)
        )
        assert created.budget.memory_max == str(1024**3)
        state = scheduler.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).state
        assert not state.reservations
        with pytest.raises(NotFound):
            client.call(
                "CreateSession", apb.CreateSessionRequest(name="r2", reservation_id=reservation.id)
            )
        client.call("CloseSession", apb.CloseSessionRequest(session_id="r"))
    released = scheduler.ReleaseReservation(
        pb.ReleaseReservationRequest(reservation_id=reservation.id), timeout=TIMEOUT
    )
    assert not released.released
    kinds = [(e["method"], e["outcome"]) for e in audit_entries(node)]
    assert kinds == [("Admit", "ok")] * 3 + [("ReleaseReservation", "ok")]


# ---- limits and bad input ------------------------------------------------------------------


@pytest.mark.node_api("rate_limit = 0.5\nrate_burst = 5")
def test_rate_limit_per_client_with_retry_info(node):
    kube, other = node.stub("kube"), node.stub("sched2")
    request = pb.GetNodeStateRequest()
    codes = [code_of(lambda: kube.GetNodeState(request, timeout=TIMEOUT)) for _ in range(8)]
    assert codes[:5] == [None] * 5
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[5:]
    error = error_of(lambda: kube.GetNodeState(request, timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    (retry,) = details_of(error)
    # One token per 2 s: slow enough that a busy host cannot refill it between calls.
    assert 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 2.0
    # Another client has a bucket of its own.
    assert code_of(lambda: other.GetNodeState(request, timeout=TIMEOUT)) is None
    time.sleep(2.1)
    assert code_of(lambda: kube.GetNodeState(request, timeout=TIMEOUT)) is None


def test_malformed_and_oversized_requests_are_refused_precisely(node):
    scheduler = node.stub()
    bad_amount = pb.ScorePlacementRequest(
        candidates=[
            pb.Candidate(id="ok"),
            pb.Candidate(id="bad", intent=apb.Intent(resources=apb.Resources(memory_max="12Q"))),
        ]
    )
    error = error_of(lambda: scheduler.ScorePlacement(bad_amount, timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad,) = details_of(error)
    assert bad.field_violations[0].field == "candidates[1].intent.resources.memory_max"
    too_many = pb.ScorePlacementRequest(candidates=[pb.Candidate(id=str(i)) for i in range(257)])
    error = error_of(lambda: scheduler.ScorePlacement(too_many, timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details_of(error)[0].field_violations[0].field == "candidates"
    huge = pb.ScorePlacementRequest(candidates=[pb.Candidate(id="x" * 300_000)])
    error = error_of(lambda: scheduler.ScorePlacement(huge, timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    error = error_of(
        lambda: scheduler.Admit(
            pb.AdmitRequest(candidate=pb.Candidate(id="t"), ttl={"seconds": 3600}),
            timeout=TIMEOUT,
        )
    )
    assert details_of(error)[0].field_violations[0].field == "ttl"
    error = error_of(lambda: scheduler.Throttle(pb.ThrottleRequest(), timeout=TIMEOUT))
    assert details_of(error)[0].field_violations[0].field == "target.session_id"
    error = error_of(
        lambda: scheduler.Throttle(
            pb.ThrottleRequest(target=pb.Target(session_id="s"), cpu_max="fast"), timeout=TIMEOUT
        )
    )
    assert details_of(error)[0].field_violations[0].field == "cpu_max"
    assert scheduler.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).state.node_name


def test_undecodable_requests_get_invalid_argument_naming_the_message(node):
    """Bytes that are not the method's message (decode.py): INVALID_ARGUMENT with the
    message expected, not grpc's UNKNOWN/INTERNAL; over TCP (daemon or readers, local
    or forwarded methods, unary or streaming) and on the unix socket."""
    garbage = b"\xff\xff\xff"  # a truncated varint: no message parses it
    channel = node.channel("kube")
    calls = {
        "GetNodeState": channel.unary_unary("/agentd.v1.NodeService/GetNodeState"),
        "Admit": channel.unary_unary("/agentd.v1.NodeService/Admit"),
        "Throttle": channel.unary_unary("/agentd.v1.NodeService/Throttle"),
        "WatchNodeEvents": lambda data, timeout: next(
            iter(
                channel.unary_stream("/agentd.v1.NodeService/WatchNodeEvents")(
                    data, timeout=timeout
                )
            )
        ),
    }
    unix = grpc.insecure_channel(f"unix:{node.daemon.socket}")
    calls["CreateSession"] = unix.unary_unary("/agentd.v1.AgentService/CreateSession")
    for method, call in calls.items():
        error = error_of(lambda call=call: call(garbage, timeout=TIMEOUT))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, error)
        (bad,) = details_of(error)
        violation = bad.field_violations[0]
        assert violation.field == "request", method
        assert violation.description == f"is not a agentd.v1.{method}Request", method
    unix.close()
    assert node.stub().GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).state.node_name
