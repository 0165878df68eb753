"""Never lose track of enforcement across a daemon crash: SIGKILL the daemon, start it
again, and everything the guard and Control did is known again (docs/enforcement.md,
docs/pressure.md): enforcement records of ended and running tool calls, the limits the
guard granted, a tool call the guard had stopped while deciding, a throttle."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentd.sdk.node import LocalNodeClient
from agentd.v1 import agent_pb2 as pb
from agentd.v1 import node_pb2 as node_pb

sys.path.insert(0, str(Path(__file__).parent))
from test_guards import GUARD_CONFIG, grower, require_guard

MiB = 1 << 20
CPU = Path("/sys/fs/cgroup/cpu")

# Grows in 8M blocks to argv[1] MiB, prints it, waits for a line, grows to argv[2] MiB.
GROW_WAIT_GROW = """
import sys
step, held = 8 << 20, []
def grow(total):
    while len(held) * step < total << 20:
        held.append(b"\\1" * step)
    print(len(held) * step >> 20, flush=True)
grow(int(sys.argv[1]))
sys.stdin.readline()
grow(int(sys.argv[2]))
"""


def figures(enforcements) -> list[tuple[str, str, int, int]]:
    return [(e.action, e.limit, int(e.limit_value), int(e.value)) for e in enforcements]


def get_tool_call(client, tool_call_id: str):
    return client.call("GetToolCall", pb.GetToolCallRequest(tool_call_id=tool_call_id))


def is_stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.agentd_config(GUARD_CONFIG)
def test_records_and_grants_survive_a_sigkill_of_the_daemon(agentd):
    client = agentd.client()
    session = client.session("kept", memory="1G")
    require_guard(client)
    ended = session.run(grower(200), memory="128M", capture_output=True, timeout=60)
    assert ended.returncode == 0 and ended.enforcements
    proc = session.start(
        [sys.executable, "-c", GROW_WAIT_GROW, "200", "400"],
        memory="128M",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.popen.stdout.readline() == b"200\n"
    before = get_tool_call(client, proc.tool_call_id)
    granted = int(before.limits.memory_max)
    assert granted > 200 * MiB and before.enforcements

    agentd.stop(signal.SIGKILL)
    agentd.start()
    client = agentd.client()
    # The ended tool call's records come from the state store.
    assert figures(get_tool_call(client, ended.tool_call_id).enforcements) == figures(
        ended.enforcements
    )
    running = get_tool_call(client, proc.tool_call_id)
    assert int(running.limits.memory_max) == granted
    assert figures(running.enforcements) == figures(before.enforcements)

    # The guard knows the grant: growing on, the next stop is at the granted limit, not
    # at the 128M intent.
    proc.client = client
    proc.popen.stdin.write(b"\n")
    proc.popen.stdin.flush()
    assert proc.popen.stdout.readline() == b"400\n"
    result = proc.wait()
    assert result.returncode == 0
    after = result.enforcements[len(before.enforcements) :]
    first_stop = next(e for e in after if e.action == "stopped")
    assert first_stop.limit_value == granted, figures(after)
    client.attach("kept").close()


@pytest.mark.agentd_config("[guard]\nwait_seconds = 60\n")
def test_a_tool_call_stopped_while_the_daemon_died_is_decided_after_restart(agentd):
    """Stopped by the guard and waiting for room (a sibling holds the session) when
    the daemon is SIGKILLed: nobody would ever continue it. After the restart the guard
    finds the "stopped" record and decides again; it is resumed and completes."""
    client = agentd.client()
    session = client.session("waiting", memory="320M")  # the guard keeps 256M
    require_guard(client)
    hog = session.start(
        [sys.executable, "-c", "import time; x = b'1' * (200 << 20); print(1, flush=True); "
         "time.sleep(60)"],
        memory="220M",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert hog.popen.stdout.readline() == b"1\n"
    proc = session.start(grower(120), memory="32M", stdout=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        enforcements = get_tool_call(client, proc.tool_call_id).enforcements
        if enforcements and enforcements[-1].action == "stopped" and is_stopped(proc.popen.pid):
            time.sleep(0.5)  # a wait, not a grant on its way
            enforcements = get_tool_call(client, proc.tool_call_id).enforcements
            if enforcements[-1].action == "stopped":
                break
        time.sleep(0.05)
    else:
        pytest.fail(f"never stopped waiting for room: {figures(enforcements)}")

    agentd.stop(signal.SIGKILL)
    time.sleep(0.5)
    assert is_stopped(proc.popen.pid)  # nobody continued it meanwhile
    agentd.start()
    client = agentd.client()
    proc.client = client
    result = proc.wait(timeout=30)
    assert result.returncode == 0, figures(result.enforcements)
    actions = [e.action for e in result.enforcements]
    assert actions[-1] == "resumed", actions
    hog.client = client
    hog.kill()
    hog.wait()
    assert "guard.stopped_before_restart" in agentd.logs()
    client.attach("waiting").close()


def test_a_throttle_survives_a_sigkill_of_the_daemon(agentd):
    """cgroupfs cannot tell a throttle from a budget: the hold is in the state store.
    After the restart the session is reported throttled, and Resume lifts it."""
    client = agentd.client()
    session = client.session("slowed", memory="1G", cpu=1.0)
    proc = session.start(["/bin/sleep", "60"])
    quota = CPU / agentd.cgroup_root / "sessions" / session.id / "cpu.cfs_quota_us"
    target = node_pb.Target(session_id=session.id)
    node = LocalNodeClient(agentd.socket)
    node.call("Throttle", node_pb.ThrottleRequest(target=target, cpu_max="100m"))
    assert quota.read_text().strip() == "10000"
    node.close()

    agentd.stop(signal.SIGKILL)
    agentd.start()
    client = agentd.client()
    node = LocalNodeClient(agentd.socket)
    try:
        state = node.call("GetNodeState", node_pb.GetNodeStateRequest()).state
        view = next(v for v in state.sessions if v.session.id == session.id)
        assert view.throttled and not view.frozen
        assert quota.read_text().strip() == "10000"
        assert node.call("Resume", node_pb.ResumeRequest(target=target)).result.changed
        assert quota.read_text().strip() == "100000"
    finally:
        node.close()
    proc.client = client
    proc.kill()
    proc.wait()
    client.attach("slowed").close()
