"""The TCP listener's reader processes ([api] readers, docs/node-api.md) on a real
daemon: they answer with the daemon's current state, control through them is
role-checked and audited by the daemon, a dying reader does not take the API down,
and none outlives the daemon. (Every other NodeService test also runs against
readers: test_node_api.py's fixture is parametrized.)"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import require_cgroup_v1
from node_api_support import NodeDaemon, free_port, node_daemon
from prometheus_client.parser import text_string_to_metric_families

from agentd.api import reader_health
from agentd.api.snapshot import ChangeCounter, SnapshotFile
from agentd.sdk.node import tls_channel
from agentd.v1 import agent_pb2 as apb
from agentd.v1 import node_pb2 as pb
from agentd.v1 import node_pb2_grpc

TIMEOUT = 10
READERS = 2


def _running(tmp_path: Path, readers: int) -> Iterator[NodeDaemon]:
    require_cgroup_v1()
    running = node_daemon(tmp_path, f"readers = {readers}")
    yield running
    leftovers = running.daemon.cleanup()
    assert not leftovers, f"groups left behind: {leftovers}"
    assert running.daemon.exit_status in (0, None), running.daemon.logs()[-4000:]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeDaemon]:
    yield from _running(tmp_path, READERS)


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            continue
    return found


def _readers(node: NodeDaemon) -> set[int]:
    """The daemon's children running agentd.api.reader."""
    readers = set()
    for child in _children(node.daemon.process.pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"agentd.api.reader" in cmdline:
            readers.add(child)
    return readers


def _socket_owners(port: int, state: str) -> dict[int, int]:
    """Processes holding TCP sockets on local `port` in `state` ("0A" listening,
    "01" established), with how many each (/proc/net/tcp + fds)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                inodes.add(f"socket:[{fields[9]}]")
    owners = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        held = sum(1 for link in links if link in inodes)
        if held:
            owners[int(entry.name)] = held
    return owners


def _listening_pids(port: int) -> set[int]:
    return set(_socket_owners(port, "0A"))


def _stubs(node: NodeDaemon, count: int, client: str = "kube") -> list:
    """`count` stubs on separate connections (grpc would otherwise share one), so
    that SO_REUSEPORT spreads them over the readers."""
    return [node_pb2_grpc.NodeServiceStub(channel) for channel in _channels(node, count, client)]


def _wait_dead(pid: int) -> None:
    """Until `pid` has exited (a zombie holds no sockets)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.02)
    raise AssertionError(f"{pid} did not exit")


def _memory_headroom(stub) -> int:
    request = pb.ScorePlacementRequest(
        candidates=[pb.Candidate(id="c", intent=apb.Intent(resources=apb.Resources(cpu="0.1")))]
    )
    return stub.ScorePlacement(request, timeout=TIMEOUT).scores[0].memory_headroom_bytes


def test_only_the_readers_listen_and_they_answer_with_the_daemons_current_state(node):
    port = int(node.address.rsplit(":", 1)[1])
    readers = _readers(node)
    assert len(readers) == READERS
    # The daemon holds no TCP listener: every TCP call is a reader's.
    assert _listening_pids(port) == readers
    stubs = _stubs(node, 8)
    before = {_memory_headroom(stub) for stub in stubs}
    assert len(before) == 1
    with node.daemon.client() as client:
        session = client.session("seen-by-readers", memory="64M")
        # Right after CreateSession answers, every connection (every reader) sees it.
        for stub in stubs:
            state = stub.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).state
            assert [v.session.id for v in state.sessions] == [session.id]
        assert {_memory_headroom(stub) for stub in stubs} == {before.pop() - 64 * 2**20}
        # An Admit through one connection counts in the next score on every other.
        admit = pb.AdmitRequest(
            candidate=pb.Candidate(
                id="x", intent=apb.Intent(resources=apb.Resources(memory_max="128M"))
            )
        )
        headroom = _memory_headroom(stubs[0])
        reservation = stubs[0].Admit(admit, timeout=TIMEOUT).reservation
        assert {_memory_headroom(stub) for stub in stubs} == {headroom - 128 * 2**20}
        state = stubs[-1].GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).state
        assert [r.id for r in state.reservations] == [reservation.id]
        released = pb.ReleaseReservationRequest(reservation_id=reservation.id)
        assert stubs[1].ReleaseReservation(released, timeout=TIMEOUT).released
        assert {_memory_headroom(stub) for stub in stubs} == {headroom}
        session.close()
        for stub in stubs:
            state = stub.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).state
            assert not state.sessions


def test_control_through_a_reader_is_role_checked_and_audited_by_the_daemon(node):
    with node.daemon.client() as client:
        session = client.session("controlled", memory="64M")
        observer = _stubs(node, 1, "grafana")[0]
        freeze = pb.FreezeRequest(target=pb.Target(session_id=session.id))
        with pytest.raises(grpc.RpcError) as refused:
            observer.Freeze(freeze, timeout=TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # A client cannot name another caller: the forwarding metadata it sends is
        # dropped by the reader, the daemon sees the certificate the handshake checked.
        scheduler_pem = (node.certs / "client-kube.pem").read_bytes()
        with pytest.raises(grpc.RpcError) as spoofed:
            observer.Freeze(
                freeze,
                timeout=TIMEOUT,
                metadata=[
                    ("agentd-forwarded-cert-bin", scheduler_pem),
                    ("agentd-forwarded-peer", "ipv4:10.0.0.1:1"),
                ],
            )
        assert spoofed.value.code() == grpc.StatusCode.PERMISSION_DENIED
        scheduler = _stubs(node, 1)[0]
        result = scheduler.Freeze(freeze, timeout=TIMEOUT).result
        assert result.changed
        state = scheduler.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).state
        assert [v.frozen for v in state.sessions] == [True]
        entries = [json.loads(line) for line in node.audit_log.read_text().splitlines()]
        freezes = [
            (e["principal"]["name"], e["outcome"]) for e in entries if e["method"] == "Freeze"
        ]
        assert freezes[0] == ("grafana", freezes[0][1]) and freezes[0][1].startswith("refused")
        assert freezes[1][0] == "grafana" and freezes[1][1].startswith("refused")
        assert freezes[2] == ("kube", "ok")
        assert all(e["principal"]["transport"] == "tcp" for e in entries if e["method"] == "Freeze")
        time.sleep(2.1)  # control's anti-flapping interval
        scheduler.Resume(pb.ResumeRequest(target=freeze.target), timeout=TIMEOUT)
        session.close()


def test_a_reader_that_dies_does_not_take_the_api_down_and_is_replaced(node):
    port = int(node.address.rsplit(":", 1)[1])
    victim, survivor = sorted(_readers(node))
    token = node.stub().GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).resume_token
    watch = node.stub().WatchNodeEvents(pb.WatchNodeEventsRequest(resume_token=token), timeout=60)
    os.kill(victim, signal.SIGKILL)
    _wait_dead(victim)
    # New connections go to the readers still listening. A connection caught in the
    # killed one's queue, or racing the replacement's start, is reset (seen about once
    # in three runs here): a client that reconnects, as grpc's wait_for_ready does, is
    # served within the deadline.
    for stub in _stubs(node, 6):
        reply = stub.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT, wait_for_ready=True)
        assert reply.state.capacity.cpus
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        readers = _readers(node)
        if len(readers) == READERS and _listening_pids(port) == readers:
            break
        time.sleep(0.2)
    # Replaced: two readers listen again, the survivor and a new one.
    assert survivor in readers and victim not in readers and len(readers) == READERS
    assert _listening_pids(port) == readers
    # A watcher on the killed reader lost its connection; one on the survivor did not.
    # Either way a client that resumes from its token gets every event.
    with node.daemon.client() as client:
        client.session("after-the-kill", memory="16M").close()
    try:
        events = [next(watch).event for _ in range(2)]
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE
        resumed = node.stub().WatchNodeEvents(
            pb.WatchNodeEventsRequest(resume_token=token), timeout=60
        )
        events = [next(resumed).event for _ in range(2)]
    assert [(e.kind, e.session_id) for e in events] == [
        (pb.NODE_EVENT_KIND_SESSION_OPENED, "after-the-kill"),
        (pb.NODE_EVENT_KIND_SESSION_CLOSED, "after-the-kill"),
    ]


def test_no_reader_outlives_the_daemon(node):
    readers = _readers(node)
    assert len(readers) == READERS
    assert node.daemon.stop() == 0
    for pid in readers:
        assert not Path(f"/proc/{pid}").exists(), f"reader {pid} left running"


def test_readers_die_with_a_killed_daemon(node):
    readers = _readers(node)
    node.daemon.process.kill()
    node.daemon.process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in readers):
        time.sleep(0.1)
    assert not [p for p in readers if Path(f"/proc/{p}").exists()]


def test_a_tls_channel_of_the_sdk_works_against_readers(node):
    channel = tls_channel(
        node.address,
        node.certs / "ca.pem",
        node.certs / "client-kube.pem",
        node.certs / "client-kube.key",
    )
    stub = node_pb2_grpc.NodeServiceStub(channel)
    assert stub.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).state.node_name


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The daemon's /metrics, as {(sample name, sorted labels): value}; every family
    once (the readers' values are merged into the daemon's families, not repeated)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    families = list(text_string_to_metric_families(text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), "a family exposed twice"
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }


def _streams_open(port: int, transport: str) -> dict[str, float]:
    """Open streams by method, on `transport`: "tcp" as the TCP clients see them
    (the readers'), "readers" the daemon's own, from the readers."""
    out: dict[str, float] = {}
    for (name, labels), value in _scrape(port).items():
        tags = dict(labels)
        if name == "agentd_api_streams_open" and tags["transport"] == transport:
            out[tags["method"]] = out.get(tags["method"], 0.0) + value
    return out


def _calls(port: int, transport: str, method: str) -> float:
    key = (
        "agentd_api_request_duration_seconds_count",
        (("code", "OK"), ("method", method), ("transport", transport)),
    )
    return _scrape(port).get(key, 0.0)


def test_the_readers_calls_are_in_the_daemons_metrics_also_after_a_restart(tmp_path: Path):
    """A reader times its TCP calls into files (prometheus_client's multiprocess
    mode) that the daemon's /metrics adds to its own: as "tcp", what the clients
    saw; what readers pass on is also counted by the daemon as "readers". A dead
    reader's counts stay."""
    require_cgroup_v1()
    metrics = free_port()
    node = node_daemon(
        tmp_path, f"readers = {READERS}", tables=f'[prometheus]\nlisten = "127.0.0.1:{metrics}"\n'
    )
    score = "/agentd.v1.NodeService/ScorePlacement"
    admit = "/agentd.v1.NodeService/Admit"
    try:
        stubs = _stubs(node, 4)  # in turn: both readers
        for stub in stubs:
            assert stub.ScorePlacement(pb.ScorePlacementRequest(), timeout=TIMEOUT) is not None
        assert _calls(metrics, "tcp", score) == 4
        assert _calls(metrics, "readers", score) == 0  # answered in the readers
        candidate = pb.Candidate(
            id="x", intent=apb.Intent(resources=apb.Resources(memory_max="16M"))
        )
        reply = stubs[0].Admit(pb.AdmitRequest(candidate=candidate), timeout=TIMEOUT)
        assert reply.admitted
        released = pb.ReleaseReservationRequest(reservation_id=reply.reservation.id)
        assert stubs[0].ReleaseReservation(released, timeout=TIMEOUT).released
        assert _calls(metrics, "tcp", admit) == 1  # the client's call, in a reader
        assert _calls(metrics, "readers", admit) == 1  # and passed on to the daemon
        victim = min(_readers(node))
        os.kill(victim, signal.SIGKILL)
        _wait_dead(victim)
        deadline = time.monotonic() + 20
        while len(_readers(node) - {victim}) < READERS:
            assert time.monotonic() < deadline, "no replacement reader"
            time.sleep(0.2)
        for stub in _stubs(node, 4):
            stub.ScorePlacement(pb.ScorePlacementRequest(), timeout=TIMEOUT)
        assert _calls(metrics, "tcp", score) == 8
    finally:
        leftovers = node.daemon.cleanup()
        assert not leftovers, f"groups left behind: {leftovers}"


def test_watchers_are_served_by_the_readers_with_nothing_lost(tmp_path: Path):
    require_cgroup_v1()
    metrics = free_port()
    node = node_daemon(
        tmp_path, f"readers = {READERS}", tables=f'[prometheus]\nlisten = "127.0.0.1:{metrics}"\n'
    )
    try:
        stubs = _stubs(node, 8)
        with node.daemon.client() as client:
            client.session("before-the-watchers", memory="16M").close()
            first = stubs[0].GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT)
            watches = []
            for stub in stubs:  # list, then watch, on every connection (both readers)
                listed = stub.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT)
                request = pb.WatchNodeEventsRequest(resume_token=listed.resume_token)
                watches.append(stub.WatchNodeEvents(request, timeout=60))
            # One from a token older than every event: whatever serves it, nothing lost.
            oldest = first.resume_token.rsplit(".", 1)[0] + ".0"
            watches.append(
                stubs[1].WatchNodeEvents(pb.WatchNodeEventsRequest(resume_token=oldest), timeout=60)
            )
            names = [f"watched-{n}" for n in range(5)]
            for name in names:
                client.session(name, memory="16M").close()
        expected = [
            (kind, name)
            for name in names
            for kind in (pb.NODE_EVENT_KIND_SESSION_OPENED, pb.NODE_EVENT_KIND_SESSION_CLOSED)
        ]
        for watch in watches[:-1]:
            got = [next(watch).event for _ in expected]
            assert [(e.kind, e.session_id) for e in got] == expected
        replayed = [next(watches[-1]).event for _ in range(2 + len(expected))]
        assert [(e.kind, e.session_id) for e in replayed] == [
            (pb.NODE_EVENT_KIND_SESSION_OPENED, "before-the-watchers"),
            (pb.NODE_EVENT_KIND_SESSION_CLOSED, "before-the-watchers"),
            *expected,
        ]
        # Served from the readers' logs: the daemon holds one tail per reader, and
        # none of the 8 listed-then-watched streams (the old token's may be its).
        streams = _streams_open(metrics, "readers")
        assert streams.get("/agentd.internal.EventTail/Tail") == READERS
        assert streams.get("/agentd.v1.NodeService/WatchNodeEvents", 0) <= 1
        # Every stream, as the TCP clients see them.
        seen = _streams_open(metrics, "tcp")
        assert seen.get("/agentd.v1.NodeService/WatchNodeEvents") == len(watches)
        for watch in watches:
            watch.cancel()
    finally:
        leftovers = node.daemon.cleanup()
        assert not leftovers, f"groups left behind: {leftovers}"


def _channels(node: NodeDaemon, count: int, client: str = "kube") -> list[grpc.Channel]:
    return [
        grpc.secure_channel(
            node.address,
            grpc.ssl_channel_credentials(
                root_certificates=(node.certs / "ca.pem").read_bytes(),
                private_key=(node.certs / f"client-{client}.key").read_bytes(),
                certificate_chain=(node.certs / f"client-{client}.pem").read_bytes(),
            ),
            options=[("grpc.use_local_subchannel_pool", 1), ("test.connection", n)],
        )
        for n in range(count)
    ]


def test_health_is_answered_by_the_readers_and_not_serving_when_the_daemon_stalls(node):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stubs = [health_pb2_grpc.HealthStub(channel) for channel in _channels(node, 4)]
    serving = health_pb2.HealthCheckResponse.SERVING
    for name in ("", "agentd.v1.NodeService", "agentd.v1.AgentService"):
        for stub in stubs:
            request = health_pb2.HealthCheckRequest(service=name)
            assert stub.Check(request, timeout=TIMEOUT).status == serving
    with pytest.raises(grpc.RpcError) as unknown:
        stubs[0].Check(health_pb2.HealthCheckRequest(service="nope"), timeout=TIMEOUT)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    # A stopped daemon publishes no snapshot: its readers must not keep saying it
    # serves (a forwarded check would hang instead; this one answers at once).
    node.daemon.process.send_signal(signal.SIGSTOP)
    try:
        time.sleep(reader_health.STALE_SECONDS + 0.5)
        began = time.monotonic()
        statuses = {s.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status for s in stubs}
        assert statuses == {health_pb2.HealthCheckResponse.NOT_SERVING}
        assert time.monotonic() - began < 2  # answered by the readers, not the daemon
    finally:
        node.daemon.process.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        statuses = {s.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status for s in stubs}
        if statuses == {serving}:
            break
        time.sleep(0.1)
    assert statuses == {serving}


def test_repeated_scores_are_checked_per_call_and_garbage_is_refused(tmp_path: Path):
    """A ScorePlacement answered from the readers' cache of whole answers still
    goes through the caller's identity, rate limit and deadline on every call."""
    require_cgroup_v1()
    node = node_daemon(tmp_path, f"readers = {READERS}\nrate_limit = 0.5\nrate_burst = 4")
    try:
        request = pb.ScorePlacementRequest(
            candidates=[pb.Candidate(id="c", intent=apb.Intent(resources=apb.Resources(cpu="0.1")))]
        )
        (kube,) = _stubs(node, 1)
        codes = []
        for _ in range(8):
            try:
                kube.ScorePlacement(request, timeout=TIMEOUT)
                codes.append(None)
            except grpc.RpcError as e:
                codes.append(e.code())
        assert codes[:4] == [None] * 4  # the burst; the later ones are cached answers
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[4:]
        # An observer may score; its own bucket, the same (cached) answer.
        (observer,) = _stubs(node, 1, "grafana")
        assert observer.ScorePlacement(request, timeout=TIMEOUT).scores[0].candidate_id == "c"
        # Bytes that are no ScorePlacementRequest: a precise refusal, the reader serves on.
        (channel,) = _channels(node, 1, "grafana")
        raw = channel.unary_unary("/agentd.v1.NodeService/ScorePlacement")
        with pytest.raises(grpc.RpcError) as garbage:
            raw(b"\xff\xff\xff", timeout=TIMEOUT)
        assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert observer.ScorePlacement(request, timeout=TIMEOUT).scores
    finally:
        leftovers = node.daemon.cleanup()
    assert not leftovers


def _spread(node: NodeDaemon, count: int) -> dict[int, int]:
    """Connections per reader after `count` clients connected one after another."""
    port = int(node.address.rsplit(":", 1)[1])
    channels = _channels(node, count)
    try:
        for channel in channels:
            reply = node_pb2_grpc.NodeServiceStub(channel).GetNodeState(
                pb.GetNodeStateRequest(), timeout=TIMEOUT
            )
            assert reply.state.capacity.cpus
        established = _socket_owners(port, "01")
        return {pid: established.get(pid, 0) for pid in _readers(node)}
    finally:
        for channel in channels:
            channel.close()


def test_connections_are_spread_over_the_readers_in_turn_also_after_a_restart(node):
    """reuseport.py: the readers take new connections in turn. The kernel's own hash
    gives 10 connections an even 5:5 on two readers one time in four."""
    assert "api.readers_balanced" in node.daemon.logs()
    assert sorted(_spread(node, 10).values()) == [5, 5]
    # A replacement reader takes its predecessor's slot.
    port = int(node.address.rsplit(":", 1)[1])
    victim = min(_readers(node))
    os.kill(victim, signal.SIGKILL)
    _wait_dead(victim)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        readers = _readers(node)
        if len(readers) == READERS and victim not in readers and _listening_pids(port) == readers:
            break
        time.sleep(0.2)
    assert victim not in _readers(node) and len(_readers(node)) == READERS
    assert sorted(_spread(node, 10).values()) == [5, 5]


@pytest.fixture
def three_readers(tmp_path: Path) -> Iterator[NodeDaemon]:
    yield from _running(tmp_path, 3)


def test_new_connections_avoid_a_reader_serving_event_streams(three_readers):
    """reuseport.AVOID_STREAMING_FROM: from three readers on, the reader serving a
    WatchNodeEvents stream takes no new connection while another serves none (its
    fan-out would stall their calls); once its stream ends, it takes its turns."""
    node = three_readers
    port = int(node.address.rsplit(":", 1)[1])
    (watch_channel,) = _channels(node, 1)
    watcher = node_pb2_grpc.NodeServiceStub(watch_channel)
    token = watcher.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).resume_token
    stream = watcher.WatchNodeEvents(pb.WatchNodeEventsRequest(resume_token=token), timeout=60)
    try:
        with node.daemon.client() as client:
            client.session("streamed", memory="16M").close()
        # Served by its reader, so marked there, once an event came through it.
        assert next(stream).event.kind == pb.NODE_EVENT_KIND_SESSION_OPENED
        (streaming,) = _socket_owners(port, "01")
        spread = _spread(node, 8)
        assert spread.pop(streaming) == 1  # the stream's own connection, no other
        assert sorted(spread.values()) == [4, 4]
    finally:
        stream.cancel()
        watch_channel.close()
    # The reader sees the stream end a moment later; then all three take turns.
    deadline = time.monotonic() + 10
    while sorted(spread := _spread(node, 9).values()) != [3, 3, 3]:
        assert time.monotonic() < deadline, f"still uneven: {spread}"
        time.sleep(0.2)


def _published(node: NodeDaemon) -> tuple[int, set[str]]:
    """The readers' change counter and the sessions in the published snapshot."""
    (directory,) = Path("/dev/shm").glob(f"agentd-snapshot-{node.daemon.process.pid}-*")
    counter = ChangeCounter(directory / "generation", writer=False)
    state = SnapshotFile(directory / "node.snapshot", counter).state(with_tool_calls=False)
    return counter.value(), {view.session.id for view in state.state.sessions}


def test_a_session_change_is_in_the_readers_snapshot_before_its_reply(node):
    """SnapshotPublisher.before_reply: CreateSession and CloseSession publish before
    they answer, so no reader's call has to wait for the publisher thread (the
    counter that makes readers wait does not move)."""
    before, sessions = _published(node)
    assert "before-reply" not in sessions
    with node.daemon.client() as client:
        session = client.session("before-reply", memory="16M")
        try:
            counter, sessions = _published(node)
            assert "before-reply" in sessions and counter == before
        finally:
            session.close()
        counter, sessions = _published(node)
        assert "before-reply" not in sessions and counter == before


def test_a_watcher_that_saw_a_session_open_finds_it_on_every_reader(node):
    """The events of a change reach the readers' watchers only once its snapshot is
    out: reading right after the event, on any reader, shows the session."""
    watcher, *readers = _stubs(node, 3)  # in turn: the reads land on both readers
    token = watcher.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).resume_token
    watch = watcher.WatchNodeEvents(pb.WatchNodeEventsRequest(resume_token=token), timeout=60)
    names = [f"seen-{n}" for n in range(8)]

    opened_sessions = []
    checked = threading.Semaphore(0)

    def open_one_at_a_time() -> None:
        with node.daemon.client() as client:
            for name in names:
                opened_sessions.append(client.session(name, memory="16M"))
                checked.acquire(timeout=TIMEOUT)  # open while the reads look for it
            for session in opened_sessions:
                session.close()

    churn = threading.Thread(target=open_one_at_a_time)
    churn.start()
    seen = []
    try:
        for response in watch:
            event = response.event
            if event.kind != pb.NODE_EVENT_KIND_SESSION_OPENED:
                continue
            for stub in readers:
                state = stub.GetNodeState(pb.GetNodeStateRequest(), timeout=TIMEOUT).state
                opened = {view.session.id for view in state.sessions}
                assert event.session_id in opened, (event.session_id, opened)
            seen.append(event.session_id)
            checked.release()
            if len(seen) == len(names):
                break
    finally:
        watch.cancel()
        churn.join(timeout=60)
    assert seen == names
