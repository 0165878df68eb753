"""The spine end to end: a real daemon, real v1 cgroups, real processes."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest

from agentd.sdk import FailedPrecondition, InvalidArgument, NotFound
from agentd.sdk.ahead import AHEAD_DEPTH
from agentd.v1 import agent_pb2 as pb

PY = sys.executable
MiB = 1024 * 1024


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def settled_groups(agentd, session: str) -> list[str]:
    """The tool-call groups of a session once the daemon's background work is done."""
    base = f"/sys/fs/cgroup/memory/{agentd.cgroup_root}/sessions/{session}"
    previous: list[str] | None = None
    stable = 0
    for _ in range(50):
        current = sorted(f"{base}/{d}" for d in os.listdir(base) if d.startswith("tc-"))
        stable = stable + 1 if current == previous else 0
        if stable == 5:  # unchanged for 0.5 s, longer than the worker's 0.5 s idle wait
            return current
        previous = current
        time.sleep(0.1)
    raise AssertionError(f"groups of {session} never settled: {previous}")


# The cgroup limit alone (the backstop): the memory guard only reports here, instead of
# stopping at the intent and granting from the session (tests/integration/test_guards.py).
@pytest.mark.agentd_config('[guard]\nmemory_action = "report"\n')
def test_memory_limit_kills_only_the_offending_tool_call(agentd):
    with agentd.client() as client, client.session("oom", memory="1G") as session:
        sibling = session.start(
            py("import time; x = bytearray(32 << 20); time.sleep(1.5)"), memory="256M"
        )
        hog = session.run(
            py("x = bytearray(200 << 20); print('survived')"), memory="64M", capture_output=True
        )
        assert hog.returncode == -signal.SIGKILL
        assert hog.usage.oom_killed and hog.usage.oom_kills >= 1
        assert b"survived" not in hog.stdout
        assert hog.usage.peak_memory_bytes <= 64 * MiB
        calm = sibling.wait()
        assert calm.returncode == 0
        assert not calm.usage.oom_killed
        assert calm.usage.peak_memory_bytes >= 32 * MiB


def test_cpu_limit_holds_a_busy_loop_to_its_share(agentd):
    with agentd.client() as client, client.session("cpu") as session:
        result = session.run(
            py("import time\nend = time.time() + 2\nwhile time.time() < end: pass"), cpu="0.25"
        )
        used = result.usage.cpu_user_seconds + result.usage.cpu_system_seconds
        share = used / result.usage.wall_seconds
        assert 0.1 < share < 0.4, f"busy loop got {share:.2f} of a core under a 0.25 limit"
        assert result.usage.cpu_throttled_seconds > 0.5


def test_pids_limit_stops_a_fork_loop(agentd):
    script = """
        import os, time
        children, failures = [], 0
        for _ in range(100):
            try:
                pid = os.fork()
            except OSError:
                failures += 1
                continue
            if pid == 0:
                time.sleep(1)
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.waitpid(pid, 0)
        print(len(children), failures)
    """
    with agentd.client() as client, client.session("pids") as session:
        result = session.run(py(script), pids=20, capture_output=True, text=True)
        started, failed = map(int, result.stdout.split())
        assert result.returncode == 0
        assert started < 20 and failed == 100 - started
        assert result.usage.processes <= 20


def test_fifty_children_forked_at_once_are_all_inside(agentd):
    script = """
        import os
        pids = []
        for _ in range(50):
            pid = os.fork()
            if pid == 0:
                with open("/proc/self/cgroup") as f:
                    os.write(1, f.read().replace("\\n", ";").encode() + b"\\n")
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
    """
    with agentd.client() as client, client.session("burst") as session:
        result = session.run(py(script), capture_output=True, text=True)
        lines = result.stdout.splitlines()
        assert len(lines) == 50
        tool_call_id = result.tool_call_id
        for line in lines:
            groups = dict(entry.split(":", 2)[1:] for entry in line.split(";") if entry)
            for controller in ("memory", "pids", "cpu", "cpuacct", "freezer"):
                assert groups[controller].endswith(f"/sessions/burst/{tool_call_id}"), line


def test_invalid_requests_get_precise_errors_and_leave_no_group(agentd):
    with agentd.client() as client, client.session("strict", memory="512M") as session:
        session.settle()
        before = settled_groups(agentd, "strict")
        cases = {
            "-1": "intent.resources.memory_max",
            "lots": "intent.resources.memory_max",
            "1G": "intent.resources.memory_max",  # over the session's 512M budget
        }
        for value, field in cases.items():
            with pytest.raises(InvalidArgument) as err:
                session.run(["/bin/true"], memory=value)
            assert err.value.field == field
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(InvalidArgument) as err:
            session.run(["/bin/true"], cpu="-2")
        assert err.value.field == "intent.resources.cpu"
        with pytest.raises(InvalidArgument) as err:
            client.session("bad name!")
        assert err.value.field == "name"
        with pytest.raises(NotFound):
            client.attach("no-such-session")
        with pytest.raises(NotFound):
            client.call("EndToolCall", pb.EndToolCallRequest(tool_call_id="tc-000000000000"))
        with pytest.raises(InvalidArgument) as err:
            client.call("BeginToolCall", pb.BeginToolCallRequest(session_id="strict", pid=-5))
        assert err.value.field == "pid"
        with pytest.raises(FileNotFoundError):
            session.run(["/nonexistent/program"])
        # Spare groups are made ahead of time (two per session), so names change;
        # what must hold is that no group was added and none holds a process but the
        # launchers placed ahead for the next runs (docs/placement.md).
        session.settle()
        after = settled_groups(agentd, "strict")
        assert len(after) == len(before)
        waiting = session.placed_ahead_ids()
        assert len(waiting) == AHEAD_DEPTH
        for group in after:
            if group.rsplit("/", 1)[-1] not in waiting:
                assert Path(group, "cgroup.procs").read_text() == ""
        # ...and the daemon still serves.
        assert session.run(["/bin/true"]).returncode == 0


def test_exit_status_and_signal_are_reported(agentd):
    with agentd.client() as client, client.session("exit") as session:
        assert session.run(["/bin/sh", "-c", "exit 3"]).returncode == 3
        killed = session.run(["/bin/sh", "-c", "kill -TERM $$"])
        assert killed.returncode == -signal.SIGTERM
        assert killed.usage.signal == signal.SIGTERM and killed.usage.exit_code is None


def test_timeout_kills_the_whole_tree(agentd):
    from agentd.sdk import ToolCallTimeout

    with agentd.client() as client, client.session("timeout") as session:
        with pytest.raises(ToolCallTimeout) as err:
            # The grandchild would keep the pipe open forever if only the child died.
            session.run(["/bin/sh", "-c", "sleep 30 & sleep 30"], timeout=0.5, capture_output=True)
        assert err.value.result.usage.wall_seconds < 10
        assert session.tool_calls() == []


def test_leftover_processes_end_with_their_tool_call(agentd):
    with agentd.client() as client, client.session("leftover") as session:
        result = session.run(["/bin/sh", "-c", "setsid sleep 60 >/dev/null 2>&1 < /dev/null &"])
        assert result.returncode == 0
        assert result.usage.leftover_processes_killed == 1


def test_sigkill_and_restart_forget_nothing_and_kill_nothing(agentd):
    client = agentd.client()
    session = client.session("survivor", memory="1G")
    process = session.start(["/bin/sleep", "30"])
    agentd.stop(signal.SIGKILL)
    assert process.popen.poll() is None, "the tool call died with the daemon"
    agentd.start()
    client = agentd.client()
    sessions = {s.id for s in client.sessions()}
    assert "survivor" in sessions
    tool_call = client.call("GetToolCall", pb.GetToolCallRequest(tool_call_id=process.tool_call_id))
    assert tool_call.state == pb.TOOL_CALL_STATE_RUNNING
    assert process.popen.poll() is None
    process.client = client
    process.kill()
    result = process.wait()
    assert result.returncode == -signal.SIGKILL
    client.attach("survivor").close()
    with pytest.raises(NotFound):
        client.attach("survivor")


def test_sigterm_leaves_tool_calls_running(agentd):
    client = agentd.client()
    session = client.session("graceful")
    process = session.start(["/bin/sleep", "30"])
    assert agentd.stop(signal.SIGTERM) == 0
    time.sleep(0.2)
    assert process.popen.poll() is None
    agentd.start()
    client = agentd.client()
    closed = client.attach("graceful").close()
    assert [t.id for t in closed.ended_tool_calls] == [process.tool_call_id]
    assert process.popen.wait(5) == -signal.SIGKILL
    with pytest.raises(FailedPrecondition):
        client.call("KillToolCall", pb.KillToolCallRequest(tool_call_id=process.tool_call_id))
