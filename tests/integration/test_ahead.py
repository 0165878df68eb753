"""Launchers placed ahead (docs/placement.md): a tool call whose RPCs are off the
critical path keeps placement before exec, ownership, usage and restart recovery."""

from __future__ import annotations

import os
import signal
import struct
import sys
import time
from pathlib import Path

import pytest

from agentd.manager import MAX_WAITING_PER_SESSION
from agentd.sdk import Client, NotFound
from agentd.sdk.ahead import AHEAD_DEPTH, spawn_waiting
from agentd.sdk.errors import InvalidArgument, ResourceExhausted
from agentd.v1 import agent_pb2 as pb

MiB = 1024 * 1024


def cgroup_of(text: str, controller: str = "memory") -> str:
    return next(x for x in text.splitlines() if f":{controller}:" in x).split(":", 2)[2]


def tool_call(client: Client, tool_call_id: str) -> pb.ToolCall:
    return client.call("GetToolCall", pb.GetToolCallRequest(tool_call_id=tool_call_id))


def test_a_run_takes_the_placed_launcher_and_the_daemon_learns_all_of_it(agentd):
    with agentd.client() as client, client.session("ahead") as session:
        session.settle()
        waiting_id = session.placed_ahead()
        assert waiting_id is not None
        waiting = tool_call(client, waiting_id)
        assert waiting.state == pb.TOOL_CALL_STATE_WAITING
        assert session.tool_calls() == []  # a launcher waiting is not a tool call yet
        # The launcher sits in its group before any command exists.
        launcher_groups = Path(f"/proc/{waiting.launcher_pid}/cgroup").read_text()
        assert cgroup_of(launcher_groups).endswith(f"/sessions/ahead/{waiting_id}")

        result = session.run(
            [sys.executable, "-c", "import sys; print(open('/proc/self/cgroup').read())"],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert result.tool_call_id == waiting_id
        for controller in ("memory", "pids", "cpu", "cpuacct", "freezer"):
            assert cgroup_of(result.stdout, controller).endswith(f"/sessions/ahead/{waiting_id}")
        # Usage read by the SDK from the group itself: a Python start uses CPU and memory.
        assert result.usage.cpu_user_seconds + result.usage.cpu_system_seconds > 0
        assert result.usage.peak_memory_bytes > 1 * MiB
        assert result.usage.processes >= 1
        assert 0 < result.usage.wall_seconds < 30

        ended = tool_call(client, waiting_id)  # call() lands the background reports first
        assert ended.state == pb.TOOL_CALL_STATE_ENDED
        assert ended.exit.known and ended.exit.exit_code == 0
        assert ended.intent.label.startswith(sys.executable)
        assert ended.usage.cpu_user_seconds + ended.usage.cpu_system_seconds > 0
        listed = [t.id for t in session.tool_calls(include_ended=True)]
        assert waiting_id in listed
        # The next launcher is placed for the next tool call.
        session.settle()
        assert session.placed_ahead() not in (None, waiting_id)


# The guard in "report" mode: the kernel's OOM kill at the intent's limit is what
# shows that the limit is in force before the command executes.
@pytest.mark.agentd_config('[guard]\nmemory_action = "report"\n')
def test_other_limits_run_the_ordinary_way_and_the_next_launcher_gets_them(agentd):
    hog = [sys.executable, "-c", "x = bytearray(200 << 20); print('survived')"]
    with agentd.client() as client, client.session("limits", memory="1G") as session:
        session.settle()
        default_id = session.placed_ahead()
        first = session.run(hog, memory="64M", capture_output=True)
        assert first.tool_call_id != default_id
        assert first.returncode == -signal.SIGKILL and first.usage.oom_killed
        session.settle()
        limited_id = session.placed_ahead()
        assert limited_id not in (None, default_id)
        assert tool_call(client, limited_id).limits.memory_max == "67108864"
        # The limit is in force before the command executes on the placed launcher.
        second = session.run(hog, memory="64M", capture_output=True)
        assert second.tool_call_id == limited_id
        assert second.returncode == -signal.SIGKILL
        assert second.usage.oom_killed and second.usage.peak_memory_bytes <= 64 * MiB
        assert b"survived" not in second.stdout
        # The replaced launcher (default limits) is gone without a trace.
        with pytest.raises(NotFound):
            tool_call(client, default_id)


def test_exec_failure_on_a_placed_launcher_raises_like_subprocess(agentd):
    with agentd.client() as client, client.session("enoent") as session:
        session.settle()
        waiting_id = session.placed_ahead()
        with pytest.raises(FileNotFoundError):
            session.run(["/nonexistent/program"])
        ended = tool_call(client, waiting_id)
        assert ended.state == pb.TOOL_CALL_STATE_ENDED
        assert ended.exit.exit_code == 127
        with pytest.raises(FileNotFoundError):
            session.run(["/bin/true"], cwd="/nonexistent-dir")
        assert session.run(["/bin/true"]).returncode == 0


def test_stdio_env_and_cwd_reach_the_command(agentd, tmp_path):
    with agentd.client() as client, client.session("stdio") as session:
        session.settle()
        result = session.run(
            ["/bin/sh", "-c", 'read line; echo "$line $GREETING $(pwd)"; echo oops >&2; exit 4'],
            input="hello",
            capture_output=True,
            text=True,
            env={"GREETING": "world", "PATH": os.defpath},
            cwd=tmp_path,
        )
        assert result.returncode == 4
        assert result.stdout == f"hello world {tmp_path}\n"
        assert result.stderr == "oops\n"
        assert result.usage.exit_code == 4


def test_a_launcher_placed_ahead_never_runs_garbage():
    """agentd_exec.c refuses a malformed command message: exit 127, nothing run."""
    pid, sock = spawn_waiting()
    with sock:
        sock.sendall(struct.pack("=III", 10, 0, 0) + b"x" * 10)  # argc 0, no fds
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 127


def test_placing_ahead_is_bounded_per_session(agentd):
    with agentd.client() as client, client.session("hoard") as session:
        session.settle()
        launchers = []
        try:
            with pytest.raises(ResourceExhausted):
                for _ in range(10):
                    pid, sock = spawn_waiting()
                    launchers.append((pid, sock))
                    client.call(
                        "BeginToolCall",
                        pb.BeginToolCallRequest(session_id=session.id, pid=pid, ahead=True),
                    )
            assert len(session.placed_ahead_ids()) == AHEAD_DEPTH  # the SDK's own
            # MAX_WAITING_PER_SESSION (4) in all: the last one tried was refused
            assert len(launchers) == MAX_WAITING_PER_SESSION - AHEAD_DEPTH + 1
        finally:
            for pid, sock in launchers:
                sock.close()
                os.waitpid(pid, 0)


def test_sigkill_and_restart_forget_no_tool_call_begun_ahead(agentd):
    client = agentd.client()
    session = client.session("survivor-ahead")
    session.settle()
    waiting_id = session.placed_ahead()
    process = session.start(["/bin/sleep", "30"])
    assert process.tool_call_id == waiting_id
    agentd.stop(signal.SIGKILL)  # before the SDK's start report (it waits 50 ms)
    assert process.popen.poll() is None, "the tool call died with the daemon"
    agentd.start()
    other = agentd.client()
    recovered = tool_call(other, waiting_id)
    assert recovered.state in (pb.TOOL_CALL_STATE_RUNNING, pb.TOOL_CALL_STATE_WAITING)
    # The first client's report gets through once the daemon is back (retried).
    deadline = time.monotonic() + 20
    while tool_call(other, waiting_id).state != pb.TOOL_CALL_STATE_RUNNING:
        assert time.monotonic() < deadline, "the start was never reported"
        time.sleep(0.1)
    assert tool_call(other, waiting_id).intent.label == "/bin/sleep 30"
    assert [t.id for t in other.attach("survivor-ahead").tool_calls()] == [waiting_id]
    process.kill()
    result = process.wait()
    assert result.returncode == -signal.SIGKILL
    ended = tool_call(client, waiting_id)  # the client that reported the end
    assert ended.state == pb.TOOL_CALL_STATE_ENDED and ended.exit.signal == signal.SIGKILL
    closed = other.attach("survivor-ahead").close()
    # The launcher the first client had placed for its next run is no tool call.
    assert [t.id for t in closed.ended_tool_calls] == []
    client.close()
    other.close()


def test_closing_leaves_no_launcher_and_no_record(agentd):
    with agentd.client() as client:
        session = client.session("tidy")
        session.settle()
        waiting = tool_call(client, session.placed_ahead())
        session.run(["/bin/true"])
        session.settle()
        second = tool_call(client, session.placed_ahead())
        closed = session.close()
        assert len(closed.ended_tool_calls) == 0  # the one run had ended already
        ended = client.call(
            "ListToolCalls", pb.ListToolCallsRequest(session_id="", include_ended=True)
        ).tool_calls
        assert [t.id for t in ended if t.session_id == "tidy"] == [waiting.id]
        for pid in (waiting.launcher_pid, second.launcher_pid):
            deadline = time.monotonic() + 5
            while Path(f"/proc/{pid}").exists() and _not_zombie(pid):
                assert time.monotonic() < deadline, f"launcher {pid} outlived its session"
                time.sleep(0.05)


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_start_noticed_before_the_report_keeps_the_agents_label(agentd, monkeypatch):
    # The daemon may see a placed-ahead launcher running a command before the SDK's
    # report arrives (here: the report is held back 3 s). It labels the tool call from
    # /proc meanwhile; the report's label, the agent's own, must win once it lands.
    monkeypatch.setattr("agentd.sdk.ahead.START_REPORT_DELAY_SECONDS", 3.0)
    with (
        agentd.client() as client,
        agentd.client() as observer,
        client.session("labels") as session,
    ):
        session.settle()
        time.sleep(1.0)  # the launcher idles a while after its placement
        handed_over = time.time()
        process = session.start(["/bin/sleep", "30"], label="agent: wait for the build")
        pid = tool_call(observer, process.tool_call_id).launcher_pid
        deadline = time.monotonic() + 5
        while os.path.basename(os.readlink(f"/proc/{pid}/exe")) != "sleep":
            assert time.monotonic() < deadline, "the launcher never executed the command"
            time.sleep(0.005)
        observer.call("GetSession", pb.GetSessionRequest(session_id="labels"))  # notices
        noticed = tool_call(observer, process.tool_call_id)
        assert noticed.state == pb.TOOL_CALL_STATE_RUNNING
        assert noticed.intent.label == "/bin/sleep 30"  # from /proc, before the report
        reported = tool_call(client, process.tool_call_id)  # lands the start report
        assert reported.intent.label == "agent: wait for the build"
        # ... and its start time, not the launcher's placement (a wall time that
        # counted the idle launcher made 61 of 387 dataset records ~4 s too long)
        assert reported.started_at.ToMicroseconds() / 1e6 >= handed_over - 0.05
        process.kill()
        process.wait()
        ended = tool_call(client, process.tool_call_id)
        assert ended.state == pb.TOOL_CALL_STATE_ENDED
        assert ended.intent.label == "agent: wait for the build"


def test_ends_folded_into_the_next_placement_are_applied(agentd):
    """The SDK sends a run's end inside the BeginToolCall that places the next launcher:
    one RPC, and the daemon has the exit status and usage as with EndToolCall."""
    with agentd.client() as client, client.session("fold") as session:
        sent: list[str] = []
        call = client.call

        def recording(method, request, timeout=None):  # type: ignore[no-untyped-def]
            sent.append(method)
            return call(method, request, timeout)

        client.call = recording  # type: ignore[method-assign]
        client.reporter._call = recording
        session.settle()
        ids = []
        for code in (0, 3):
            # Settled between runs: back to back, one batch may replace the launchers
            # of two runs before the second ended; its end then travels alone after
            # END_FOLD_SECONDS (docs/placement.md). Here each end has a placement after it.
            ids.append(session.run(["/bin/sh", "-c", f"exit {code}"]).tool_call_id)
            session.settle()
        assert "EndToolCall" not in sent and sent.count("BeginToolCall") >= 2
        for tool_call_id, code in zip(ids, (0, 3), strict=True):
            ended = tool_call(client, tool_call_id)
            assert ended.state == pb.TOOL_CALL_STATE_ENDED
            assert ended.exit.known and ended.exit.exit_code == code
            assert ended.intent.label == f"/bin/sh -c exit {code}"


def test_a_folded_end_is_checked_and_a_refused_one_skipped(agentd):
    with agentd.client() as client, client.session("fold-check") as session:
        session.settle()
        process = session.start(["/bin/sleep", "30"])
        session.settle()
        pid, sock = spawn_waiting()
        try:
            ok = pb.EndToolCallRequest(
                tool_call_id=process.tool_call_id, exit=pb.ExitStatus(known=True, exit_code=5)
            )
            bad = pb.EndToolCallRequest(tool_call_id="not-an-id", exit=pb.ExitStatus())
            request = pb.BeginToolCallRequest(
                session_id=session.id, pid=pid, ahead=True, ends=[ok, bad]
            )
            with pytest.raises(InvalidArgument, match=r"ends\[1\]\.tool_call_id"):
                client.call("BeginToolCall", request)
            # Nothing applied: the first end's tool call still runs.
            assert tool_call(client, process.tool_call_id).state == pb.TOOL_CALL_STATE_RUNNING
            # Unknown: skipped (logged), the rest applied, the launcher placed.
            unknown = pb.EndToolCallRequest(tool_call_id="tc-0123456789ab", exit=pb.ExitStatus())
            request.ends[1].CopyFrom(unknown)
            placed = client.call("BeginToolCall", request)
            assert placed.ends_handled == 2
            assert placed.state == pb.TOOL_CALL_STATE_WAITING
            ended = tool_call(client, process.tool_call_id)
            assert ended.state == pb.TOOL_CALL_STATE_ENDED and ended.exit.exit_code == 5
            assert process.popen.wait(10) == -signal.SIGKILL  # ended with its tool call
        finally:
            sock.close()
            os.waitpid(pid, 0)


def test_an_end_waiting_to_be_folded_survives_a_daemon_sigkill(agentd):
    """An end report held back for folding (or lent to a placement the SIGKILL cuts off)
    still reaches the restarted daemon: the reporter gets it back and retries it."""
    client = agentd.client()
    session = client.session("fold-crash")
    session.settle()
    result = session.run(["/bin/sh", "-c", "exit 3"])
    agentd.stop(signal.SIGKILL)  # within the fold delay of the end report
    agentd.start()
    other = agentd.client()
    deadline = time.monotonic() + 20
    while tool_call(other, result.tool_call_id).state != pb.TOOL_CALL_STATE_ENDED:
        assert time.monotonic() < deadline, "the end was never reported"
        time.sleep(0.1)
    ended = tool_call(other, result.tool_call_id)
    assert ended.exit.known and ended.exit.exit_code == 3
    assert client.reporter.flush(20)
    other.attach("fold-crash").close()
    client.close()
    other.close()


def test_launchers_placed_in_one_batch_each_sit_in_their_own_group(agentd):
    """BeginToolCall with `more_pids`: every launcher checked and placed as `pid`, in a
    group of its own, each a WAITING tool call; the first one refused (here the
    session's cap of waiting launchers) ends the batch, and the reply lists only
    those placed."""
    with Client(agentd.socket, ahead=False) as client, client.session("batch") as session:
        launchers = [spawn_waiting() for _ in range(MAX_WAITING_PER_SESSION + 1)]
        try:
            pids = [pid for pid, _ in launchers]
            first = client.call(
                "BeginToolCall",
                pb.BeginToolCallRequest(
                    session_id=session.id, pid=pids[0], ahead=True, more_pids=pids[1:]
                ),
            )
            placed = [first, *first.more_placed]
            assert len(placed) == MAX_WAITING_PER_SESSION  # the fifth was refused
            assert len({t.id for t in placed}) == len(placed)
            for pid, waiting in zip(pids, placed, strict=False):
                assert waiting.launcher_pid == pid
                assert waiting.state == pb.TOOL_CALL_STATE_WAITING
                assert waiting.usage_paths["memory"].endswith(f"/sessions/batch/{waiting.id}")
                groups = Path(f"/proc/{pid}/cgroup").read_text()
                for controller in ("memory", "pids", "cpu", "cpuacct", "freezer"):
                    assert cgroup_of(groups, controller).endswith(f"/sessions/batch/{waiting.id}")
            # The refused one was never placed: it is still in the caller's group.
            assert "/sessions/" not in cgroup_of(Path(f"/proc/{pids[-1]}/cgroup").read_text())
            with pytest.raises(InvalidArgument, match="more_pids"):
                client.call(
                    "BeginToolCall",
                    pb.BeginToolCallRequest(session_id=session.id, pid=pids[-1], more_pids=[1]),
                )
        finally:
            for pid, sock in launchers:
                sock.close()
                os.waitpid(pid, 0)
