"""Arbitrary requests never crash the daemon, never get INTERNAL, never leak a group."""

from __future__ import annotations

import os
import string

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentd.sdk import AgentdError
from agentd.v1 import agent_pb2 as pb

# What a caller may legitimately be told; INTERNAL or UNKNOWN would be a daemon bug.
EXPECTED = {
    None,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
}

amounts = st.one_of(
    st.just(""),
    st.text(alphabet=string.printable, max_size=12),
    st.from_regex(r"-?[0-9]{1,20}(\.[0-9]{1,4})?[kKmMgGtTiB]{0,3}", fullmatch=True),
)
resources = st.builds(
    pb.Resources,
    memory_max=amounts,
    memory_high=amounts,
    memory_low=amounts,
    cpu=amounts,
    pids_max=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
names = st.one_of(st.text(max_size=80), st.from_regex(r"[a-z0-9._-]{1,70}", fullmatch=True))


def status_of(call) -> grpc.StatusCode | None:
    try:
        call()
    except AgentdError as e:
        return e.code
    return None


def test_fuzzed_requests(agentd):
    client = agentd.client()
    base = f"/sys/fs/cgroup/memory/{agentd.cgroup_root}/sessions"
    anchor = client.session("anchor", memory="256M")

    @settings(
        max_examples=400,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        name=names,
        budget=resources,
        priority=st.integers(min_value=-5, max_value=10),
        intent=resources,
        pid=st.integers(min_value=-(2**31), max_value=2**31 - 1),
        tool_call_id=st.text(max_size=40),
    )
    def check(name, budget, priority, intent, pid, tool_call_id):
        create = pb.CreateSessionRequest(name=name, budget=budget, priority=priority)
        created: list[pb.Session] = []
        code = status_of(lambda: created.append(client.call("CreateSession", create)))
        assert code in EXPECTED, (code, create)
        for session in created:
            client.call("CloseSession", pb.CloseSessionRequest(session_id=session.id))
        begin = pb.BeginToolCallRequest(
            session_id="anchor", intent=pb.Intent(resources=intent, priority=priority), pid=pid
        )
        code = status_of(lambda: client.call("BeginToolCall", begin))
        # No pid of ours is a waiting launcher: a begin can never succeed here.
        assert code in EXPECTED - {None}, (code, begin)
        for method, request in (
            ("EndToolCall", pb.EndToolCallRequest(tool_call_id=tool_call_id)),
            ("GetToolCall", pb.GetToolCallRequest(tool_call_id=tool_call_id)),
            ("KillToolCall", pb.KillToolCallRequest(tool_call_id=tool_call_id, signal=priority)),
            ("GetSession", pb.GetSessionRequest(session_id=name)),
            ("GetProcessTree", pb.GetProcessTreeRequest(tool_call_id=tool_call_id)),
        ):
            code = status_of(lambda m=method, r=request: client.call(m, r))
            assert code in EXPECTED, (method, code, request)

    check()
    # Nothing leaked: only the anchor session's group (and its spares) remain, and the
    # daemon still serves a real tool call.
    groups = sorted(d for d in os.listdir(base) if os.path.isdir(f"{base}/{d}"))
    assert groups == ["anchor"]
    assert anchor.run(["/bin/true"]).returncode == 0
    anchor.close()
    client.close()
