"""An unprivileged agent can run tool calls and touch only its own sessions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

from agentd.sdk.launcher import launcher_path
from agentd.v1 import agent_pb2 as pb

NOBODY = 65534

# Runs as root until it has imported everything it needs, then drops to `nobody`:
# the interpreter and the installed package may live under /root, which nobody
# cannot read, and what is tested here is the daemon's view of the caller.
AGENT = r"""
import json, os, sys
from agentd.sdk import Client, PermissionDenied, InvalidArgument
from agentd.sdk import errors, launcher, client as client_module
from agentd.v1 import agent_pb2 as pb
import grpc, google.rpc.error_details_pb2  # noqa: F401 - loaded before dropping root
grpc.insecure_channel("unix:/nonexistent").close()  # grpc imports its channel code lazily

socket_path, foreign_session, foreign_tool_call, foreign_pid = sys.argv[1:5]
os.setgroups([])
os.setgid(NOBODY)
os.setuid(NOBODY)
out = {}

def denied(fn):
    try:
        fn()
    except PermissionDenied as e:
        return "PermissionDenied: " + e.message
    except Exception as e:
        return f"UNEXPECTED {type(e).__name__}: {e}"
    return "ALLOWED"

with Client(socket_path) as c:
    with c.session("mine", memory="256M") as s:
        r = s.run(["/bin/cat", "/proc/self/cgroup"], capture_output=True, text=True)
        out["returncode"] = r.returncode
        out["cgroup"] = r.stdout
        out["tool_call_id"] = r.tool_call_id
        out["visible_sessions"] = sorted(x.id for x in c.sessions())
        out["get_foreign"] = denied(lambda: c.attach(foreign_session))
        out["close_foreign"] = denied(
            lambda: c.call("CloseSession", pb.CloseSessionRequest(session_id=foreign_session)))
        out["kill_foreign"] = denied(lambda: c.call(
            "KillToolCall", pb.KillToolCallRequest(tool_call_id=foreign_tool_call)))
        out["end_foreign"] = denied(lambda: c.call(
            "EndToolCall", pb.EndToolCallRequest(tool_call_id=foreign_tool_call)))
        out["list_foreign"] = denied(lambda: c.call(
            "ListToolCalls", pb.ListToolCallsRequest(session_id=foreign_session)))
        pending = launcher.spawn(["/bin/true"], None, None, None, None, None, False)
        out["begin_in_foreign"] = denied(lambda: c.call("BeginToolCall", pb.BeginToolCallRequest(
            session_id=foreign_session, pid=pending.pid)))
        pending.abort()
        out["steal_foreign_pid"] = denied(lambda: c.call("BeginToolCall", pb.BeginToolCallRequest(
            session_id="mine", pid=int(foreign_pid))))
        out["running_after"] = [t.id for t in s.tool_calls()]
print(json.dumps(out))
""".replace("NOBODY", str(NOBODY))


@pytest.mark.agentd_config(f'[daemon]\nsocket_group = "{NOBODY}"\n')
def test_unprivileged_agent_runs_tool_calls_and_touches_only_its_own_sessions(agentd):
    with agentd.client() as client, client.session("root-owned") as session:
        victim = session.start(["/bin/sleep", "30"])
        # The launcher must be executable by nobody, wherever the package is installed.
        bindir = tempfile.mkdtemp(prefix="agentd-exec-")
        os.chmod(bindir, 0o755)
        exec_copy = shutil.copy(launcher_path(), os.path.join(bindir, "agentd-exec"))
        os.chmod(exec_copy, 0o755)
        try:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    textwrap.dedent(AGENT),
                    agentd.socket,
                    "root-owned",
                    victim.tool_call_id,
                    str(victim.pid),
                ],
                capture_output=True,
                text=True,
                timeout=60,
                cwd="/",
                env={**os.environ, "AGENTD_EXEC": exec_copy},
            )
        finally:
            shutil.rmtree(bindir)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["returncode"] == 0
        memory_line = next(x for x in out["cgroup"].splitlines() if ":memory:" in x)
        assert memory_line.endswith(f"/sessions/mine/{out['tool_call_id']}")
        assert out["visible_sessions"] == ["mine"]
        for key in (
            "get_foreign",
            "close_foreign",
            "kill_foreign",
            "end_foreign",
            "list_foreign",
            "begin_in_foreign",
            "steal_foreign_pid",
        ):
            assert out[key].startswith("PermissionDenied"), (key, out[key])
        assert out["running_after"] == []
        # The victim was not touched.
        assert victim.popen.poll() is None
        tool_call = client.call(
            "GetToolCall", pb.GetToolCallRequest(tool_call_id=victim.tool_call_id)
        )
        assert tool_call.state == pb.TOOL_CALL_STATE_RUNNING
        victim.kill()
        assert victim.wait().returncode < 0


def test_socket_permissions_are_tight_by_default(agentd):
    for path in (agentd.socket, agentd.socket + ".cred"):
        mode = os.stat(path).st_mode & 0o777
        assert mode == 0o660, f"{path} has mode {oct(mode)}"
