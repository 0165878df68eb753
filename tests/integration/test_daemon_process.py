"""The daemon as a process: systemd notification, health, reflection, side by side,
bad configuration, and agentctl against it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from agentd_process import AgentdProcess
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agentd.v1 import agent_pb2 as pb

AGENTCTL = str(Path(sys.executable).parent / "agentctl")


def agentctl(daemon: AgentdProcess, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGENTCTL, "--socket", daemon.socket, *args],
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def test_health_and_reflection(agentd):
    channel = grpc.insecure_channel(f"unix:{agentd.socket}")
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "agentd.v1.AgentService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in reply.list_services_response.service}
    assert "agentd.v1.AgentService" in names
    channel.close()


def test_calls_without_a_token_are_unauthenticated(agentd):
    channel = grpc.insecure_channel(f"unix:{agentd.socket}")
    from agentd.v1 import agent_pb2_grpc

    stub = agent_pb2_grpc.AgentServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.ListSessions(pb.ListSessionsRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as err:
        stub.ListSessions(
            pb.ListSessionsRequest(), timeout=5, metadata=(("x-agentd-token", "forged"),)
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    channel.close()


def test_sd_notify_ready_watchdog_status_stopping(tmp_path):
    from conftest import require_cgroup_v1

    require_cgroup_v1()
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(20)
    daemon = AgentdProcess()
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    try:
        daemon.start(env=env)
        env["WATCHDOG_PID"] = str(daemon.process.pid)
        messages: list[str] = []
        while not any("WATCHDOG=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
        assert "READY=1" in messages[0] and "STATUS=" in messages[0]
        # The daemon keeps the variables to itself: its children (here the warmer's
        # helper process) must not be able to talk to systemd on its behalf.
        base = f"/sys/fs/cgroup/memory/{daemon.cgroup_root}"
        helpers = [
            int(pid)
            for group in ("warm-a", "warm-b")
            for pid in Path(base, group, "cgroup.procs").read_text().split()
        ]
        assert helpers
        for pid in helpers:
            assert b"NOTIFY_SOCKET" not in Path(f"/proc/{pid}/environ").read_bytes()
        assert daemon.stop(signal.SIGTERM) == 0
        tail = [listener.recv(4096).decode()]
        while "STOPPING=1" not in tail[-1]:
            tail.append(listener.recv(4096).decode())
    finally:
        listener.close()
        assert daemon.cleanup() == []


def test_two_daemons_side_by_side():
    from conftest import require_cgroup_v1

    require_cgroup_v1()
    first, second = AgentdProcess(), AgentdProcess()
    try:
        first.start()
        second.start()
        with (
            first.client() as a,
            second.client() as b,
            a.session("same-name") as sa,
            b.session("same-name") as sb,
        ):
            ra, rb = sa.run(["/bin/true"]), sb.run(["/bin/true"])
            assert ra.returncode == rb.returncode == 0
            assert [s.id for s in a.sessions()] == ["same-name"]
            assert a.status().cgroup_root != b.status().cgroup_root
    finally:
        assert first.cleanup() == []
        assert second.cleanup() == []


def test_bad_configuration_is_refused_with_the_key_named(tmp_path):
    daemon = AgentdProcess(config='[cgroup]\nbackend = "v3"\n')
    with pytest.raises(RuntimeError, match=r"\[cgroup\] backend") as err:
        daemon.start()
    assert "exited 2" in str(err.value)
    daemon.cleanup()


# The cgroup limit alone (the backstop): the memory guard only reports here, instead of
# stopping at the intent and granting from the session (tests/integration/test_guards.py).
@pytest.mark.agentd_config('[guard]\nmemory_action = "report"\n')
def test_agentctl_run_status_and_summary(agentd, tmp_path):
    summary = tmp_path / "summary.json"
    done = agentctl(
        agentd,
        "run",
        "--session",
        "cli",
        "--memory",
        "256M",
        "--cpu",
        "0.5",
        "--summary-json",
        str(summary),
        "--",
        "/bin/sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    )
    assert done.returncode == 7
    assert done.stdout == "out\n" and done.stderr == "err\n"
    data = json.loads(summary.read_text())
    for key in (
        "tool_call_id",
        "exit_code",
        "oom_killed",
        "peak_memory_bytes",
        "cpu_user_seconds",
        "cpu_system_seconds",
        "wall_seconds",
        "processes",
    ):
        assert key in data, key
    assert data["exit_code"] == 7 and data["oom_killed"] is False
    killed = agentctl(agentd, "run", "--session", "cli", "--", "/bin/sh", "-c", "kill -9 $$")
    assert killed.returncode == 128 + signal.SIGKILL
    oom = agentctl(
        agentd,
        "run",
        "--session",
        "cli",
        "--memory",
        "64M",
        "--summary-json",
        "-",
        "--",
        sys.executable,
        "-c",
        "x = bytearray(200 << 20)",
    )
    assert oom.returncode == 128 + signal.SIGKILL
    assert json.loads(oom.stdout.splitlines()[-1])["oom_killed"] is True
    bad = agentctl(agentd, "run", "--session", "cli", "--memory", "lots", "--", "/bin/true")
    assert bad.returncode == 2 and "lots" in bad.stderr
    missing = agentctl(agentd, "run", "--session", "cli", "--", "/no/such/program")
    assert missing.returncode == 127
    listing = agentctl(agentd, "sessions", "--json")
    assert [s["id"] for s in json.loads(listing.stdout)["sessions"]] == ["cli"]
    status = agentctl(agentd, "status", "--json")
    assert json.loads(status.stdout)["cgroup_backend"] == "v1"
    assert agentctl(agentd, "close", "cli").returncode == 0
    assert json.loads(agentctl(agentd, "sessions", "--json").stdout)["sessions"] == []


def test_agentctl_without_a_daemon_names_the_socket(tmp_path):
    done = subprocess.run(
        [AGENTCTL, "--socket", str(tmp_path / "none.sock"), "status"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert str(tmp_path / "none.sock") in done.stderr
