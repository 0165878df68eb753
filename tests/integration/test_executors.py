"""Tool calls without the SDK: a registered executor's children become tool calls."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from conftest import skip_or_fail

from agentd.v1 import agent_pb2 as pb

# A minimal tool executor, as an agent harness would have: it reads one shell command
# per line, starts it and says its pid; it never talks to agentd.
EXECUTOR = textwrap.dedent(
    """
    import subprocess, sys, threading
    children = []
    for line in sys.stdin:
        child = subprocess.Popen(["/bin/sh", "-c", line.strip()])
        children.append(child)
        print(child.pid, flush=True)
    for child in children:
        child.wait()
    """
)


def test_executor_children_become_tool_calls(agentd):
    with agentd.client() as client, client.session("harness", memory="1G") as session:
        if client.status().process_tracking not in ("ebpf", "netlink"):
            skip_or_fail(f"tracking is {client.status().process_tracking}")
        executor = subprocess.Popen(
            [sys.executable, "-c", EXECUTOR],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        out = Path(tempfile.mkdtemp(prefix="agentd-exec-test-"))
        held = client.status().process_tracking == "ebpf"
        try:
            client.register_executor("harness", executor.pid, memory="256M", pids=64)
            pids = []
            for i in range(5):
                # With eBPF the kernel holds each child at its first system call until it
                # is placed, so even what it starts at once is born inside its group.
                # Without, the sleep gives the daemon time to place the shell first.
                pause = "" if held else "sleep 0.3; "
                executor.stdin.write(f"{pause}cat /proc/self/cgroup > {out}/{i}; exit 5\n")
                executor.stdin.flush()
                pids.append(int(executor.stdout.readline()))
            # And one whose children start at once: without eBPF they may escape, and
            # are moved late.
            executor.stdin.write("/bin/sleep 0.5 & /bin/sleep 0.5 & wait\n")
            executor.stdin.flush()
            pids.append(int(executor.stdout.readline()))
            executor.stdin.close()
            assert executor.wait(timeout=30) == 0

            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                ended = [t for t in session.tool_calls(include_ended=True) if t.exit.known]
                if len(ended) == 6:
                    break
                time.sleep(0.1)
            by_pid = {t.launcher_pid: t for t in session.tool_calls(include_ended=True)}
            assert sorted(by_pid) == sorted(pids)
            for i, pid in enumerate(pids[:5]):
                tool_call = by_pid[pid]
                assert tool_call.state == pb.TOOL_CALL_STATE_ENDED
                assert tool_call.exit.known and tool_call.exit.exit_code == 5
                assert tool_call.limits.memory_max == str(256 << 20)
                memory = next(x for x in (out / str(i)).read_text().splitlines() if ":memory:" in x)
                assert memory.endswith(f"/sessions/harness/{tool_call.id}")
            fast = by_pid[pids[5]]
            assert fast.exit.known and fast.exit.exit_code == 0
            tree = client.process_tree(fast.id)
            assert len(tree.processes) == 3, [list(p.argv) for p in tree.processes]
            status = client.status()
            assert status.executor_children_placed >= 6
            if held:
                assert status.executor_escapes == 0
                assert status.executor_children_held >= 1
            print(
                f"placement window p50 {status.executor_window_p50_ms:.2f} ms, "
                f"p99 {status.executor_window_p99_ms:.2f} ms, escapes {status.executor_escapes}, "
                f"held {status.executor_children_held}"
            )
        finally:
            if executor.poll() is None:
                executor.kill()
                executor.wait()
