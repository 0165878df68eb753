"""The in-kernel guards, for real: eBPF on this kernel, v1 cgroups, real processes
(docs/enforcement.md). Each test runs a daemon of its own (the `agentd` fixture)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from agentd.sdk import Client
from agentd.v1 import agent_pb2 as pb

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import skip_or_fail

MiB = 1 << 20
STEP = 8 * MiB

# Grows by STEP-sized, fully touched blocks (bytes * n writes every page), printing the
# total after each, up to `total` MiB; then sleeps a little and exits 0.
GROWER = """
import sys, time
step, total = {step}, {total} << 20
held = []
while len(held) * step < total:
    held.append(b"\\1" * step)
    print(len(held) * step >> 20, flush=True)
time.sleep(0.2)
"""


def grower(total_mib: int) -> list[str]:
    return [sys.executable, "-c", GROWER.format(step=STEP, total=total_mib)]


def require_guard(client: Client) -> None:
    status = client.status()
    if status.process_tracking != "ebpf":
        skip_or_fail(f"the guards need the eBPF tracking source (have {status.process_tracking})")


GUARD_CONFIG = "[guard]\nwait_seconds = 2\n"


@pytest.mark.agentd_config(GUARD_CONFIG)
def test_memory_over_intent_is_stopped_in_the_crossing_allocation_and_resumed(agentd):
    """Intent 128M, the process grows to 300M in 8M blocks, the session has 1G: each
    crossing stops the process inside the block that crossed (the kernel's figure at the
    stop is less than one block over), the daemon grants more and it runs to its end."""
    with agentd.client() as client, client.session("grow", memory="1G") as session:
        require_guard(client)
        result = session.run(grower(300), memory="128M", capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[-1] == b"304"
        actions = [(e.action, e.limit) for e in result.enforcements]
        stops = [e for e in result.enforcements if e.action == "stopped"]
        resumes = [e for e in result.enforcements if e.action == "resumed"]
        assert stops and len(stops) == len(resumes), actions
        first = stops[0]
        assert first.limit_value == 128 * MiB and first.unit == "bytes"
        over = first.value - first.limit_value
        print(f"first stop: {first.value} bytes for a limit of {first.limit_value}: +{over}")
        assert 0 < over < STEP, f"stopped {over} bytes over, not within the crossing block"
        assert first.comm.startswith("python") and first.argv[:2] == (sys.executable, "-c")
        # Each grant raised the limit over the figure that crossed it, and the last one
        # is what the tool call's limits say now, with the cgroup's backstop above it.
        assert all(r.limit_value > s.value for s, r in zip(stops, resumes, strict=True))
        assert "intent.memory_max" in resumes[-1].suggestion
        ended = client.call("GetToolCall", pb.GetToolCallRequest(tool_call_id=result.tool_call_id))
        assert int(ended.limits.memory_max) == resumes[-1].limit_value >= 300 * MiB


@pytest.mark.agentd_config("[guard]\nwait_seconds = 60\n")
def test_memory_over_intent_without_room_in_the_session_is_killed_with_a_reason(agentd):
    """Session 320M (the guard keeps 1/1.25 of it: 256M for anonymous memory, widened
    to what the session's charge leaves before it gives up), intent 128M, the process
    wants 400M: grants up to the session's room, then it is stopped
    with no room left. It is the session's only tool call, so no sibling can ever make
    room: waiting is pointless and it is killed at once (not after wait_seconds = 60),
    with a structured reason."""
    with agentd.client() as client, client.session("tight", memory="320M") as session:
        require_guard(client)
        started = time.monotonic()
        result = session.run(grower(400), memory="128M", capture_output=True, timeout=60)
        elapsed = time.monotonic() - started
        assert result.returncode == -9
        assert elapsed < 30, f"waited {elapsed:.1f} s for room nobody could make"
        assert [e.action for e in result.enforcements][-2:] == ["stopped", "killed"]
        last = result.enforcements[-1]
        assert (last.action, last.limit, last.unit) == ("killed", "memory", "bytes")
        assert last.value > last.limit_value > 128 * MiB  # granted first, then no more room
        assert "raise intent.memory_max to" in last.suggestion
        assert last.comm.startswith("python") and last.argv[0] == sys.executable
        assert int(result.stdout.split()[-1]) < 400  # it never got there


HOG = "import sys; x = b'1' * (280 << 20); print('held', flush=True); sys.stdin.readline()"


@pytest.mark.agentd_config("[guard]\nwait_seconds = 20\n")
def test_stopped_tool_call_resumes_when_a_sibling_frees_room(agentd):
    """The session is full because of a sibling; the grower waits stopped until the
    sibling ends, then gets its grant and completes. (The guard's 320M of the session's
    400M are widened to what the session's charge leaves, ~370M, before it waits.) The
    sibling ends only once the grower has been seen waiting: a loaded host may make the
    grower slow, never the wait short."""
    with agentd.client() as client, client.session("share", memory="400M") as session:
        require_guard(client)
        hog = session.start(
            [sys.executable, "-c", HOG],
            memory="320M",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert hog.popen.stdout.readline() == b"held\n"  # 280M of the guard's 320-370M
        grow = session.start(grower(160), memory="64M", stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            records = client.call(
                "GetToolCall", pb.GetToolCallRequest(tool_call_id=grow.tool_call_id)
            ).enforcements
            if records and records[-1].action == "stopped":
                time.sleep(0.5)
                again = client.call(
                    "GetToolCall", pb.GetToolCallRequest(tool_call_id=grow.tool_call_id)
                ).enforcements
                if len(again) == len(records):
                    break  # waiting, not a grant on its way
            time.sleep(0.05)
        else:
            pytest.fail("the grower never waited for room")
        hog.popen.stdin.write(b"\n")
        hog.popen.stdin.flush()
        hog.wait()
        result = grow.wait(timeout=60)
        assert result.returncode == 0, result
        actions = [e.action for e in result.enforcements]
        assert "stopped" in actions and actions[-1] == "resumed", actions
        # One stop lasted until the hog ended (it waited for room), not a mere grant.
        times = [(e.action, e.time) for e in result.enforcements]
        waits = [b[1] - a[1] for a, b in itertools.pairwise(times) if a[0] == "stopped"]
        assert max(waits) > 0.3, times


NODE_ALLOCATABLE = 600 * MiB
NODE_CONFIG = f"[node]\nreserved_memory = {psutil.virtual_memory().total - NODE_ALLOCATABLE}\n"
HOLD = "import sys; x = b'1' * ({mib} << 20); print('held', flush=True); sys.stdin.readline()"


@pytest.mark.agentd_config(NODE_CONFIG)
def test_batch_work_pauses_at_the_node_bound_instead_of_an_oom_kill(agentd):
    """Node allocatable 600M (the sessions group's limit; the guard's node bound is
    600/1.25 = 480M). An interactive tool call holds 300M; a batch one grows to 320M in
    8M blocks: it is stopped in the kernel at the node bound (not OOM-killed at 600M),
    waits, the interactive one grows past the bound without being stopped, then ends,
    and the batch one is continued and completes. No OOM kill anywhere."""
    with (
        agentd.client() as client,
        client.session("fg", memory="600M", priority="interactive") as fg,
        client.session("bg", memory="600M", priority="batch") as bg,
    ):
        require_guard(client)
        holder = fg.start(
            [sys.executable, "-c", HOLD.format(mib=300)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert holder.popen.stdout.readline() == b"held\n"
        batch = bg.start(grower(320), stdout=subprocess.PIPE)
        got = wait_for_record(client, batch.tool_call_id)
        assert got is not None, "the batch tool call was never stopped"
        stop = got.enforcements[0]
        assert (stop.action, stop.limit) == ("stopped", "node_memory"), stop
        assert stop.limit_value == int(NODE_ALLOCATABLE / 1.25)
        time.sleep(1.0)  # it stays paused while the node has no room
        assert batch.popen.poll() is None
        # The interactive class is never stopped by the node bound: 60M more, past it.
        more = fg.run(
            [sys.executable, "-c", "x = b'1' * (60 << 20)"], capture_output=True, timeout=30
        )
        assert more.returncode == 0 and not more.enforcements, more
        holder.popen.stdin.write(b"\n")
        holder.popen.stdin.flush()
        assert holder.wait().returncode == 0
        result = batch.wait(timeout=60)
        assert result.returncode == 0, result
        # Within its own bounds and exit 0, the SDK's fast path ends it without the
        # daemon (agentd/sdk/client.py _daemon_acted); the result still carries the
        # daemon's records of the node stop (read when asked), the same as GetToolCall's.
        got = client.call("GetToolCall", pb.GetToolCallRequest(tool_call_id=batch.tool_call_id))
        actions = [(e.action, e.limit) for e in result.enforcements]
        assert actions == [(e.action, e.limit) for e in got.enforcements], got.enforcements
        assert actions[0] == ("stopped", "node_memory") and actions[-1] == (
            "resumed",
            "node_memory",
        ), actions
        assert result.usage.as_dict()["enforcements"], result.usage
        assert result.usage.oom_kills == 0 and more.usage.oom_kills == 0


@pytest.mark.agentd_config(NODE_CONFIG)
def test_two_batch_bursts_over_the_node_bound_take_turns_without_a_kill(agentd):
    """Two batch tool calls of two sessions grow to 260M each at once: 520M, over the
    node bound (480M) but under the node's limit (600M). Both are stopped at the bound;
    with nothing else running, neither could make room for the other: the one stopped
    first is continued within what the node's limit still holds, completes, and the
    other follows. Nobody is OOM-killed or killed."""
    with (
        agentd.client() as client,
        client.session("a", memory="600M", priority="batch") as a,
        client.session("b", memory="600M", priority="batch") as b,
    ):
        require_guard(client)
        first = a.start(grower(260), stdout=subprocess.DEVNULL)
        second = b.start(grower(260), stdout=subprocess.DEVNULL)
        results = [first.wait(timeout=60), second.wait(timeout=60)]
        records = [
            client.call("GetToolCall", pb.GetToolCallRequest(tool_call_id=r.tool_call_id))
            for r in results
        ]
    assert [r.returncode for r in results] == [0, 0], results
    assert all(r.usage.oom_kills == 0 for r in results)
    actions = [(e.action, e.limit) for t in records for e in t.enforcements]
    assert ("stopped", "node_memory") in actions, actions
    assert ("killed", "node_memory") not in actions, actions
    if "guard.node_deadlock" in agentd.logs():
        assert '"continued"' in agentd.logs()


@pytest.mark.agentd_config(NODE_CONFIG)
def test_a_second_batch_burst_waits_for_the_first_ones_turn(agentd):
    """Turns (`[guard] node_turn` 0.2): above a fifth of the node bound (480M / 5 = 96M)
    one batch tool call at a time grows. The first holds 300M (its turn); a second that
    then grows is stopped at once, under the node bound, holding only what it held
    (not half a burst), and continued when the first ends. No kill."""
    with (
        agentd.client() as client,
        client.session("first", memory="600M", priority="batch") as a,
        client.session("second", memory="600M", priority="batch") as b,
    ):
        require_guard(client)
        first = a.start(
            [sys.executable, "-c", HOLD.format(mib=300)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert first.popen.stdout.readline() == b"held\n"
        second = b.start(grower(100), stdout=subprocess.PIPE)
        assert wait_for_record(client, second.tool_call_id), "the second burst was not stopped"
        time.sleep(1.0)  # it waits while the first one's turn is on
        assert second.popen.poll() is None
        # The grower prints its total after each block: at most its first one.
        os.set_blocking(second.popen.stdout.fileno(), False)
        grown = (second.popen.stdout.read() or b"").split()
        assert len(grown) <= 1, f"grew to {grown[-1]} MiB during the first one's turn"
        first.popen.stdin.write(b"\n")
        first.popen.stdin.flush()
        assert first.wait().returncode == 0
        result = second.wait(timeout=60)
    assert result.returncode == 0, result
    actions = [(e.action, e.limit) for e in result.enforcements]
    assert actions[0] == ("stopped", "node_memory") and actions[-1] == ("resumed", "node_memory")
    assert ("killed", "node_memory") not in actions, actions
    assert result.usage.oom_kills == 0


def wait_for_record(client: Client, tool_call_id: str, timeout: float = 30.0) -> pb.ToolCall | None:
    """The tool call once the daemon has a record of it (None if none within `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = client.call("GetToolCall", pb.GetToolCallRequest(tool_call_id=tool_call_id))
        if got.enforcements:
            return got
        time.sleep(0.05)
    return None


FORK_CONFIG = (
    "[guard]\nfork_rate = 200\nfork_burst = 100\nmax_processes = 1000\nfork_refusals = 64\n"
)
BOMB = ":(){ :|:& };:; sleep 60"
TASK = [sys.executable, "-c", "import hashlib; print(hashlib.sha256(b'x' * 10**7).hexdigest())"]


@pytest.mark.agentd_config(FORK_CONFIG)
def test_fork_bomb_is_contained_while_session_and_neighbours_keep_working(agentd):
    """pids.max (256) is set first as the backstop; the guard's token bucket (100 at
    once, 200/s) trips long before it, the kernel stops every process of the tool call
    that forks, the daemon kills the group. A sibling tool call and a neighbour session
    complete their task meanwhile."""
    with (
        agentd.client() as client,
        client.session("bomb", memory="1G", pids=1024) as session,
        client.session("neighbour", memory="1G") as neighbour,
    ):
        require_guard(client)
        started = time.monotonic()
        bomb = session.start(["bash", "-c", BOMB], pids=256, memory="512M")
        outcome: dict[str, object] = {}

        def work(name: str, s: object) -> None:
            outcome[name] = s.run(TASK, capture_output=True, timeout=30)  # type: ignore[attr-defined]

        threads = [
            threading.Thread(target=work, args=("sibling", session)),
            threading.Thread(target=work, args=("neighbour", neighbour)),
        ]
        for t in threads:
            t.start()
        result = bomb.wait(timeout=30)
        contained = time.monotonic() - started
        for t in threads:
            t.join(30)
        print(f"fork bomb contained in {contained:.2f} s, {result.usage.processes} processes seen")
        assert result.returncode == -9
        kill = next(e for e in result.enforcements if e.action == "killed")
        print(f"tripped on {kill.limit}: {kill.value} {kill.unit} over {kill.limit_value}")
        # Fast enough, the token bucket trips first, before pids.max; on a loaded machine
        # the bomb may fork slower than 200/s and reach pids.max, where forks fail with
        # EAGAIN and it would spin for ever: the refused forks trip the guard there.
        if kill.limit == "fork_rate":
            # (usage.processes counts every process seen, exited ones too: it may pass
            # pids.max, which bounds the live ones, by the time the rate trips.)
            assert kill.unit == "forks/s" and kill.value > kill.limit_value == 200
        else:
            assert (kill.limit, kill.unit) == ("pids_max", "forks refused")
            assert kill.value > 64 and kill.limit_value == 256
        assert "fewer parallel workers" in kill.suggestion
        assert contained < 15
        for name in ("sibling", "neighbour"):
            done = outcome[name]
            assert done.returncode == 0 and len(done.stdout.strip()) == 64, (name, done)  # type: ignore[attr-defined]
            assert not done.enforcements  # type: ignore[attr-defined]


@pytest.mark.agentd_config('[guard]\nmemory_action = "report"\n')
def test_oom_kill_is_attributed_to_the_tool_call_and_the_process(agentd):
    """A child of a shell is OOM-killed under a 64M limit: the result names it (pid,
    comm, argv), the cgroup's count agrees, and the event stream says so."""
    with agentd.client() as client, client.session("oom", memory="1G") as session:
        require_guard(client)
        events: list[pb.WatchEvent] = []

        def watch() -> None:
            for ev in client.watch("oom"):
                if ev.WhichOneof("event") == "daemon":
                    events.append(ev)
                    if ev.daemon.kind == "oom_kill":
                        return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        time.sleep(0.3)
        script = f"{sys.executable} -c 'x = b\"1\" * (200 << 20)'; echo survived"
        result = session.run(["sh", "-c", script], memory="64M", capture_output=True, timeout=60)
        watcher.join(5)
        assert result.returncode == 0 and result.stdout.strip() == b"survived"
        assert result.usage.oom_killed and result.usage.oom_kills >= 1
        oom = next(e for e in result.enforcements if e.action == "oom_killed")
        tree = client.process_tree(result.tool_call_id)
        victim = next(p for p in tree.processes if p.pid == oom.pid)
        assert victim.argv[0] == sys.executable and victim.signal == 9
        assert oom.comm.startswith("python") and oom.argv[0] == sys.executable
        assert oom.limit_value == 64 * MiB and "raise intent.memory_max" in oom.suggestion
        assert events and events[-1].daemon.kind == "oom_kill"
        assert events[-1].daemon.details["pid"] == str(oom.pid)
