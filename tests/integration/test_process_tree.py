"""Process trees and the event stream through the daemon: API, SDK and agentctl."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import skip_or_fail
from tracking_workload import EXPECTED_PROCESSES, SCRIPT

from agentd.v1 import agent_pb2 as pb

AGENTCTL = str(Path(sys.executable).parent / "agentctl")


def require_ebpf(client) -> None:
    status = client.status()
    if status.process_tracking != "ebpf":
        skip_or_fail(
            f"process tracking is {status.process_tracking!r}, not ebpf "
            f"(bcc: {status.capabilities.get('bcc')})"
        )


def test_tool_call_tree_from_the_kernel(agentd):
    with agentd.client() as client, client.session("tree", pids=512) as session:
        require_ebpf(client)
        process = session.start(["/bin/sh", "-c", SCRIPT])
        result = process.wait()
        assert result.returncode == 4
        # Every process the workload started is counted in the tool call's usage.
        assert result.usage.processes == EXPECTED_PROCESSES
        tree = client.process_tree(result.tool_call_id)
        assert tree.source == "ebpf" and tree.lost_events == 0
        done = subprocess.run(
            [AGENTCTL, "--socket", agentd.socket, "tree", result.tool_call_id, "--json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        snap = json.loads(done.stdout)
        for key in ("tool_call_id", "source", "lost_events", "processes"):
            assert key in snap
        for node in snap["processes"]:
            for key in ("pid", "ppid", "argv", "exit_code", "start_time", "end_time"):
                assert key in node
        nodes = snap["processes"]
        assert len(nodes) == EXPECTED_PROCESSES
        by_pid = {n["pid"]: n for n in nodes}
        root = by_pid[process.pid]
        assert root["argv"][:2] == ["/bin/sh", "-c"] and root["exit_code"] == 4
        trues = [n for n in nodes if n["argv"] == ["/bin/true"]]
        assert len(trues) == 200
        assert all(n["ppid"] == process.pid and n["exit_code"] == 0 for n in trues)
        (c,) = [n for n in nodes if n["argv"] == ["sh", "-c", "exit 7"]]
        b, a = by_pid[c["ppid"]], by_pid[by_pid[c["ppid"]]["ppid"]]
        assert (c["exit_code"], b["exit_code"], a["exit_code"], a["ppid"]) == (7, 6, 5, process.pid)
        (k,) = [n for n in nodes if n["argv"] == ["sh", "-c", "kill -TERM $$"]]
        assert k["signal"] == 15 and k["exit_code"] is None
        # The double-forked, setsid'd sleep is still attributed to the tool call although
        # its parents exited; it outlived the command, so it ended with the tool call.
        (z,) = [n for n in nodes if n["argv"] == ["sleep", "1.2"]]
        y = by_pid[z["ppid"]]
        x = by_pid[y["ppid"]]
        assert x["argv"][:2] == ["setsid", "-f"] and x["ppid"] == process.pid
        assert z["signal"] == 9 or z["exit_code"] == 0
        assert all(n["end_time"] is not None for n in nodes)
        # Per-process usage from the kernel: every /bin/true used a little CPU and memory.
        assert all(n["cpu_seconds"] is not None and n["peak_rss_bytes"] for n in trues)
        assert all(n["peak_rss_bytes"] < 64 << 20 for n in trues)


def test_watch_streams_tool_call_and_process_events(agentd):
    with agentd.client() as client, client.session("watched") as session:
        require_ebpf(client)
        events: list[pb.WatchEvent] = []
        watcher = agentd.client()

        def root_exit_seen() -> bool:
            begun = [e for e in events if e.HasField("tool_call")]
            if not begun:
                return False
            root = begun[0].tool_call.tool_call.launcher_pid
            return any(e.HasField("process") and e.process.kind == 3 and e.process.pid == root
                       for e in events)  # fmt: skip

        def collect() -> None:
            # Kernel events and the tool call's end travel different paths: wait for both.
            for event in watcher.watch("watched"):
                events.append(event)
                ended = any(e.HasField("tool_call") and e.tool_call.kind == 2 for e in events)
                if ended and root_exit_seen():
                    return

        thread = threading.Thread(target=collect, daemon=True)
        thread.start()
        time.sleep(0.5)  # the stream is open before the tool call starts
        result = session.run(["/bin/sh", "-c", "/bin/true; exit 3"])
        thread.join(10)
        watcher.close()
        assert result.returncode == 3
        tool_call_events = [e.tool_call for e in events if e.HasField("tool_call")]
        assert [t.kind for t in tool_call_events] == [
            pb.TOOL_CALL_EVENT_KIND_BEGUN,
            pb.TOOL_CALL_EVENT_KIND_ENDED,
        ]
        assert tool_call_events[1].tool_call.exit.exit_code == 3
        processes = [e.process for e in events if e.HasField("process")]
        assert any(p.kind == 2 and list(p.argv) == ["/bin/true"] for p in processes)
        root = tool_call_events[0].tool_call.launcher_pid
        assert any(p.kind == 3 and p.pid == root and p.exit_code == 3 for p in processes)
        assert all(e.tool_call_id == result.tool_call_id for e in events)


def test_finished_trees_survive_a_restart(agentd):
    with agentd.client() as client, client.session("kept") as session:
        require_ebpf(client)
        result = session.run(["/bin/sh", "-c", "/bin/true; /bin/true; exit 2"])
        assert result.returncode == 2
        before = client.process_tree(result.tool_call_id)
    assert len(before.processes) == 3
    time.sleep(2.0)  # the tree is stored a second after its tool call ended
    agentd.stop()
    agentd.start()
    with agentd.client() as client:
        after = client.process_tree(result.tool_call_id)
    assert [(p.pid, p.ppid, list(p.argv)) for p in after.processes] == [
        (p.pid, p.ppid, list(p.argv)) for p in before.processes
    ]
    root = next(p for p in after.processes if p.pid == before.processes[0].pid)
    assert root.exit_code_known and root.exit_code == 2


def test_event_streams_are_bounded_and_never_starve_unary_calls(agentd):
    import grpc

    from agentd.api.agent_service import MAX_WATCHES
    from agentd.credproto import TOKEN_METADATA_KEY

    with agentd.client() as client:
        metadata = ((TOKEN_METADATA_KEY, client._token),)
        # A server-streaming call starts when it is made: each holds a stream slot.
        streams = [
            client._stub.Watch(pb.WatchRequest(), metadata=metadata) for _ in range(MAX_WATCHES)
        ]
        code = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            # Accepted streams run into the 1 s deadline; one over the limit is refused
            # at once.
            extra = client._stub.Watch(pb.WatchRequest(), timeout=1, metadata=metadata)
            try:
                next(extra)
            except grpc.RpcError as e:
                code = e.code()
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    assert "limit" in e.details()
                    break
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, code
        # The daemon still answers unary calls with every stream slot taken.
        assert client.status().sessions_open == 0
        for stream in streams:
            stream.cancel()
