"""The pure parts of NodeService: the event ring, resume tokens, scores, rate limits,
certificates and roles."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agentd.api.auth import Role, certificate_principal, local_principal
from agentd.api.node_events import parse_token, to_node_event, token
from agentd.api.node_sampler import parse_pressure
from agentd.api.ratelimit import RateLimiter
from agentd.certs import client_subject, init_directory, issue, new_authority, parse_client
from agentd.config import ConfigError, load_config
from agentd.errors import (
    InvalidArgumentError,
    RateLimitedError,
    RoleDeniedError,
    UnauthenticatedError,
)
from agentd.events import Event, EventBus
from agentd.manager import Caller
from agentd.model import Intent, Resources
from agentd.reservations import Reservations
from agentd.scoring import Capacity, Demand, Prediction, Room, score


def _event(n: int, kind: str = "session_opened") -> Event:
    return Event(f"s{n}", "", 0, kind, {"n": str(n)})


def test_events_are_numbered_and_read_after_a_number():
    bus = EventBus(history=8)
    for n in range(1, 6):
        assert bus.publish(_event(n)).seq == n
    events, lost = bus.read_after(2, timeout=0)
    assert [e.seq for e in events] == [3, 4, 5] and lost == 0
    assert bus.read_after(5, timeout=0) == ([], 0)


def test_a_reader_past_the_ring_learns_how_many_it_lost():
    bus = EventBus(history=8)
    for n in range(1, 21):
        bus.publish(_event(n))
    events, lost = bus.read_after(3, timeout=0)
    # 20 published, 8 kept (13..20): 4..12 are gone.
    assert [e.seq for e in events] == list(range(13, 21)) and lost == 9
    with pytest.raises(ValueError):
        bus.read_after(21, timeout=0)


def test_read_after_waits_for_the_next_event():
    bus = EventBus(history=8)
    threading.Timer(0.05, lambda: bus.publish(_event(1))).start()
    started = time.monotonic()
    events, _ = bus.read_after(0, timeout=5)
    assert [e.seq for e in events] == [1] and time.monotonic() - started < 4


def test_resume_tokens_round_trip_and_garbage_names_the_field():
    bus = EventBus()
    point = parse_token(token(bus.boot_id, 42))
    assert point is not None and (point.boot_id, point.seq) == (bus.boot_id, 42)
    assert parse_token("") is None
    for bad in ("x", f"{bus.boot_id}.", f"{bus.boot_id}.-1", "zz" * 8 + ".1"):
        with pytest.raises(InvalidArgumentError) as e:
            parse_token(bad)
        assert e.value.field == "resume_token"


def test_only_node_kinds_become_node_events():
    bus = EventBus()
    opened = bus.publish(_event(1))
    msg = to_node_event(opened, bus.boot_id, lambda t: None)
    assert msg is not None and msg.session_id == "s1" and dict(msg.details) == {"n": "1"}
    assert msg.resume_token == token(bus.boot_id, 1)
    assert to_node_event(bus.publish(_event(2, "process")), bus.boot_id, lambda t: None) is None


def test_pressure_parsing():
    text = (
        "some avg10=12.95 avg60=14.05 avg300=14.49 total=1\n"
        "full avg10=0.50 avg60=0.25 avg300=0.00 total=0\n"
    )
    p = parse_pressure(text)
    assert (p.some_avg10, p.some_avg60, p.full_avg10, p.full_avg60) == (12.95, 14.05, 0.5, 0.25)


CAPACITY = Capacity(memory=8 << 30, cpus=4.0, pids=10_000)


def test_scores_fit_headroom_and_reasons():
    room = Room.of(CAPACITY, Demand(memory=4 << 30, pids=4096), Demand(memory=1 << 30), 1.0)
    assert (room.memory, room.cpu, room.pids) == (3 << 30, 3.0, 10_000 - 4096)
    small = score(Demand(memory=1 << 30, cpu=1.0), room, CAPACITY, 0.0, None)
    assert small.feasible and small.memory_headroom == 2 << 30 and small.cpu_headroom == 2.0
    assert 0 < small.score <= 100
    bigger = score(Demand(memory=2 << 30, cpu=1.0), room, CAPACITY, 0.0, None)
    assert bigger.score < small.score  # less room left after it
    stalled = score(Demand(memory=1 << 30, cpu=1.0), room, CAPACITY, 50.0, None)
    assert stalled.score == pytest.approx(small.score / 2)
    slowed = score(Demand(1 << 30, 1.0), room, CAPACITY, 0.0, Prediction(2.0, 1.5, 2.5, "m"))
    assert slowed.score == pytest.approx(small.score / 2) and slowed.prediction is not None
    for demand, resource in (
        (Demand(memory=4 << 30), "memory"),
        (Demand(cpu=3.5), "cpu"),
        (Demand(pids=6000), "pids"),
    ):
        refused = score(demand, room, CAPACITY, 0.0, None)
        assert not refused.feasible and refused.score == 0
        assert refused.reason.startswith(resource)


def test_demand_is_the_session_budget_when_given():
    intent = Intent(resources=Resources(memory_max=1 << 20, cpu=0.5))
    assert Demand.of(intent, None) == Demand(memory=1 << 20, cpu=0.5)
    assert Demand.of(intent, Resources(memory_max=2 << 20, pids_max=5)) == Demand(2 << 20, 0, 5)


def test_reservations_expire_and_the_check_sees_the_live_ones():
    now = [1000.0]
    reservations = Reservations(clock=lambda: now[0])
    seen: list[int] = []

    def refusal(live):
        seen.append(len(live))
        return "full" if len(live) >= 2 else ""

    first, _ = reservations.admit("a", Resources(memory_max=1), 10, "kube", refusal)
    second, _ = reservations.admit("b", Resources(memory_max=1), 30, "kube", refusal)
    third, reason = reservations.admit("c", Resources(memory_max=1), 10, "kube", refusal)
    assert first and second and third is None and reason == "full"
    now[0] += 11
    assert [r.id for r in reservations.expire()] == [first.id]
    assert reservations.get(first.id) is None and reservations.take(second.id) == second
    assert reservations.live() == [] and seen == [0, 1, 2]


def test_rate_limiter_is_a_token_bucket_per_key():
    now = [0.0]
    limiter = RateLimiter(rate=10, burst=3, clock=lambda: now[0])
    for _ in range(3):
        limiter.take("a")
    with pytest.raises(RateLimitedError) as e:
        limiter.take("a")
    assert e.value.retry_after_seconds == pytest.approx(0.1)
    limiter.take("b")  # another caller's bucket is full
    now[0] += 0.1
    limiter.take("a")
    RateLimiter(rate=0, burst=1).take("x")  # 0 = unlimited


def test_certificate_roles(tmp_path: Path):
    init_directory(tmp_path, ["node1"], [("scheduler", "kube"), ("observer", "grafana")])
    kube = certificate_principal((tmp_path / "client-kube.pem").read_bytes())
    grafana = certificate_principal((tmp_path / "client-grafana.pem").read_bytes())
    assert (kube.name, kube.role, kube.transport) == ("kube", Role.SCHEDULER, "tcp")
    assert grafana.role is Role.OBSERVER and grafana.may_see(1234)
    kube.check_allowed("Evict")
    with pytest.raises(RoleDeniedError):
        grafana.check_allowed("Throttle")
    cert, _ = issue(new_authority(), client_subject("root", "eve"))
    with pytest.raises(UnauthenticatedError):
        certificate_principal(cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ValueError):
        parse_client("admin:eve")
    assert (tmp_path / "server.key").stat().st_mode & 0o777 == 0o600


def test_local_roles():
    root = local_principal(Caller(uid=0, gid=0, pid=1))
    agent = local_principal(Caller(uid=1000, gid=1000, pid=2))
    assert root.role is Role.SCHEDULER and agent.role is Role.AGENT
    assert agent.may_see(1000) and not agent.may_see(1001)
    agent.check_allowed("Freeze")
    with pytest.raises(RoleDeniedError):
        agent.check_allowed("Admit")


def _config(tmp_path: Path, text: str):
    import argparse

    path = tmp_path / "agentd.toml"
    path.write_text(text)
    return load_config(argparse.Namespace(config=path), environ={})


def test_api_config_needs_all_tls_files_for_tcp(tmp_path: Path):
    assert _config(tmp_path, "").api.tcp_listen == ""
    with pytest.raises(ConfigError, match="tls_cert, tls_key, tls_client_ca"):
        _config(tmp_path, '[api]\ntcp_listen = "0.0.0.0:7443"\n')
    with pytest.raises(ConfigError, match="tcp_listen"):
        _config(tmp_path, '[api]\ntcp_listen = "7443"\n')
    cfg = _config(
        tmp_path,
        '[api]\ntcp_listen = "[::]:7443"\ntls_cert = "/c"\ntls_key = "/k"\n'
        'tls_client_ca = "/ca"\nrate_limit = 0\n',
    )
    assert cfg.api.tcp_listen == "[::]:7443" and str(cfg.api.tls_key) == "/k"
    assert cfg.api.rate_limit == 0


def test_agentctl_certs_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from agentd.cli.agentctl import main

    args = ["certs", "init", str(tmp_path / "ca"), "--server-name", "node1"]
    assert main([*args, "--client", "scheduler:kube", "--client", "observer:graf"]) == 0
    names = sorted(p.name for p in (tmp_path / "ca").iterdir())
    assert names == [
        "ca.key",
        "ca.pem",
        "client-graf.key",
        "client-graf.pem",
        "client-kube.key",
        "client-kube.pem",
        "server.key",
        "server.pem",
    ]
    assert certificate_principal((tmp_path / "ca" / "client-graf.pem").read_bytes()).role is (
        Role.OBSERVER
    )
    # An existing CA is kept unless --force; a bad role is a usage error.
    assert main(args) == 2 and "exists" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    assert main([*args, "--force", "--client", "admin:x"]) == 2


class _Context:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


def test_no_work_once_the_deadline_has_passed():
    # A client-side check cannot show this (a 1 us deadline may still get an answer
    # before the client's timer fires): the server's own check is tested here.
    from agentd.api.node_service import check_deadline
    from agentd.errors import DeadlineExceededError

    check_deadline(_Context(None))  # no deadline
    check_deadline(_Context(0.5))
    with pytest.raises(DeadlineExceededError):
        check_deadline(_Context(0.0))
