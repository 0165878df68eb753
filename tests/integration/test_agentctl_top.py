"""`agentctl top` against a real daemon with real tool calls."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from agentd.sdk.node import LocalNodeClient
from agentd.v1 import node_pb2

AGENTCTL = str(Path(sys.executable).parent / "agentctl")
PY = sys.executable
HOLD_48M = "import time; x = bytearray(48 << 20); x[::4096] = b'1' * len(x[::4096]); time.sleep(60)"
BUSY = "while True: pass"


def top(socket: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGENTCTL, "--socket", socket, "top", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def wait_for_memory(client, tool_call_id: str, at_least: int) -> None:
    from agentd.v1 import agent_pb2 as pb

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        t = client.call("GetToolCall", pb.GetToolCallRequest(tool_call_id=tool_call_id))
        if t.usage.memory_bytes >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError(f"{tool_call_id} never reached {at_least} bytes")


def test_top_once_shows_sessions_and_tool_calls(agentd) -> None:
    with agentd.client() as client:
        a = client.session("top-a", memory="1G", priority="interactive")
        b = client.session("top-b", memory="512M", priority="batch")
        holder = a.start([PY, "-c", HOLD_48M], priority="interactive")
        busy = b.start([PY, "-c", BUSY], cpu="0.5")
        try:
            wait_for_memory(client, holder.tool_call_id, 48 << 20)
            time.sleep(0.5)  # some CPU time for the busy loop
            done = top(agentd.socket, "--once", "--json")
            assert done.returncode == 0, done.stderr
            snap = json.loads(done.stdout)
            assert snap["daemon"]["sessions_open"] == 2
            assert snap["daemon"]["tool_calls_running"] == 2
            # From NodeService.GetNodeState: node figures and each session's own usage.
            assert snap["node"]["cpus"] > 0
            assert snap["node"]["memory_allocated_bytes"] == (1 << 30) + (512 << 20)
            assert snap["node"]["memory_used_bytes"] >= 48 << 20
            sessions = {s["id"]: s for s in snap["sessions"]}
            assert sessions["top-a"]["state"] == "open"
            assert sessions["top-a"]["priority"] == "interactive"
            assert sessions["top-b"]["priority"] == "batch"
            assert sessions["top-a"]["memory_bytes"] >= 48 << 20
            assert sessions["top-a"]["running_tool_calls"] == 1
            calls = {t["id"]: t for t in snap["tool_calls"]}
            held = calls[holder.tool_call_id]
            assert held["state"] == "running" and held["session_id"] == "top-a"
            assert held["usage"]["memory_bytes"] >= 48 << 20
            assert held["usage"]["processes_running"] == 1
            spun = calls[busy.tool_call_id]
            # Limited to half a core: the average is near 50%, never far above.
            assert 5 < spun["cpu_percent"] <= 75, spun["cpu_percent"]
            assert spun["cpu_basis"] == "average"

            text = top(agentd.socket, "--once")
            assert text.returncode == 0, text.stderr
            lines = text.stdout.splitlines()
            assert lines[1] == "2 sessions, 2 tool calls running"
            header = next(line for line in lines if line.startswith("TOOL CALL"))
            for column in ("MEM", "PEAK", "CPU%", "PIDS", "STATE", "PRIORITY", "AGE"):
                assert column in header
            assert lines[2].startswith("node ") and "allocated" in lines[2]
            row = next(line for line in lines if line.startswith(holder.tool_call_id))
            assert "top-a" in row and "running" in row and "interactive" in row
            assert "\x1b[" not in text.stdout  # no escapes when not a terminal

            # A session frozen through NodeService shows as frozen, its tool call too.
            node = LocalNodeClient(agentd.socket)
            target = node_pb2.Target(session_id="top-b")
            node.call("Freeze", node_pb2.FreezeRequest(target=target))
            try:
                frozen = json.loads(top(agentd.socket, "--once", "--json").stdout)
            finally:
                # NodeService keeps changes of one target at least 2 s apart; a frozen
                # session's processes cannot die, so it is thawed before anything else.
                time.sleep(2.1)
                node.call("Resume", node_pb2.ResumeRequest(target=target))
                node.close()
            states = {s["id"]: s["state"] for s in frozen["sessions"]}
            assert states == {"top-a": "open", "top-b": "frozen"}
            calls = {t["id"]: t["state"] for t in frozen["tool_calls"]}
            assert calls[busy.tool_call_id] == "frozen"
            assert calls[holder.tool_call_id] == "running"
        finally:
            holder.kill()
            busy.kill()
            holder.wait()
            busy.wait()
            a.close()
            b.close()
    done = top(agentd.socket, "--once")
    assert "no open sessions" in done.stdout and "no running tool calls" in done.stdout


def _drain(controller: int, wait: float) -> bytes:
    """What the terminal has for us now, waiting at most `wait` for the first bytes."""
    got = b""
    while select.select([controller], [], [], wait)[0]:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        got += chunk
        wait = 0
    return got


def test_top_refreshes_in_place_on_a_terminal(agentd) -> None:
    with agentd.client() as client:
        session = client.session("top-live")
        busy = session.start([PY, "-c", BUSY], cpu="0.5")
        controller, terminal = pty.openpty()
        process = subprocess.Popen(
            # SIGINT as at a terminal: a suite started in the background by a shell
            # without job control (`(... &)`, as CI jobs can be) has it ignored, top
            # would inherit that and Python install no KeyboardInterrupt, and the
            # test's ^C would do nothing. (Not preexec_fn: Python code between fork
            # and exec in this multithreaded process once killed the child there.)
            [
                "env",
                "--default-signal=INT",
                AGENTCTL,
                "--socket",
                agentd.socket,
                "top",
                "--interval",
                "0.3",
            ],
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            env={**os.environ, "COLUMNS": "200", "LINES": "50"},
        )
        os.close(terminal)
        output = b""
        try:
            deadline = time.monotonic() + 10
            while output.count(b"\x1b[H\x1b[2J") < 3 and time.monotonic() < deadline:
                if process.poll() is not None:
                    break  # top ended early: the assertions below say how
                output += _drain(controller, 0.5)
        finally:
            process.send_signal(signal.SIGINT)
            # Read on while it stops: a terminal nobody reads fills up (a pty holds a
            # few KB), and top, blocked writing its last frame or the cursor back,
            # would never exit (a CI run saw it hang so, and fail its teardown).
            deadline = time.monotonic() + 10
            while process.poll() is None and time.monotonic() < deadline:
                output += _drain(controller, 0.1)
            if process.poll() is None:
                process.kill()  # not ours to leave behind
            status = process.wait(10)
            output += _drain(controller, 0.2)
            os.close(controller)
            busy.kill()
            busy.wait()
            session.close()
    assert status == 0
    frames = output.split(b"\x1b[H\x1b[2J")
    assert len(frames) >= 3, output[-2000:]
    assert output.startswith(b"\x1b[?25l") and output.rstrip().endswith(b"\x1b[?25h")
    # From the second frame on, CPU% is the rate between refreshes (no "*").
    later = frames[2].decode(errors="replace")
    row = next(line for line in later.splitlines() if line.startswith(busy.tool_call_id))
    assert "*" not in row
    cpu = float(row.split()[6])
    assert 10 <= cpu <= 75, row
