"""Arbitrary NodeService requests never crash the daemon, never get INTERNAL, never
leak a group or a reservation."""

from __future__ import annotations

import os
import string
import time

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentd.sdk.node import LocalNodeClient
from agentd.v1 import agent_pb2 as apb
from agentd.v1 import node_pb2 as pb

# What a caller may legitimately be told; INTERNAL or UNKNOWN would be a daemon bug.
EXPECTED = {
    None,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,  # a knob changed too recently (anti-flapping)
}

amounts = st.one_of(
    st.just(""),
    st.text(alphabet=string.printable, max_size=12),
    st.from_regex(r"-?[0-9]{1,20}(\.[0-9]{1,4})?[kKmMgGtTiB]{0,3}", fullmatch=True),
)
resources = st.builds(
    apb.Resources,
    memory_max=amounts,
    memory_high=amounts,
    memory_low=amounts,
    cpu=amounts,
    pids_max=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
durations = st.builds(
    lambda s, n: {"seconds": s, "nanos": n},
    st.integers(min_value=-(2**40), max_value=2**40),
    st.integers(min_value=-999_999_999, max_value=999_999_999),
)
intents = st.builds(
    lambda r, p, label, d: apb.Intent(
        resources=r, priority=p, label=label, **({"expected_duration": d} if d else {})
    ),
    resources,
    st.integers(min_value=-5, max_value=10),
    st.text(max_size=30),
    st.one_of(st.none(), durations),
)
candidates = st.builds(
    lambda i, intent, budget: pb.Candidate(
        id=i, intent=intent, **({"session_budget": budget} if budget is not None else {})
    ),
    st.text(max_size=40),
    intents,
    st.one_of(st.none(), resources),
)
# Control targets: the fuzz session, made-up names, and garbage; never the anchor.
session_ids = st.one_of(st.just("fuzz-target"), st.text(max_size=70)).filter(
    lambda s: s != "anchor"
)
targets = st.builds(
    pb.Target,
    session_id=session_ids,
    tool_call_id=st.one_of(st.just(""), st.text(max_size=20), st.just("tc-000000000000")),
)
tokens = st.one_of(
    st.just(""),
    st.text(max_size=40),
    st.from_regex(r"[0-9a-f]{16}\.[0-9]{1,20}", fullmatch=True),
)


def status_of(call) -> grpc.StatusCode | None:
    try:
        call()
    except grpc.RpcError as e:
        return e.code()
    return None


@pytest.mark.agentd_config("[api]\nrate_limit = 0\n")
def test_fuzzed_node_requests(agentd):
    client = agentd.client()
    node = LocalNodeClient(agentd.socket)
    base = f"/sys/fs/cgroup/memory/{agentd.cgroup_root}/sessions"
    anchor = client.session("anchor", memory="256M")
    calls = {"n": 0}

    def call(method: str, request) -> grpc.StatusCode | None:
        calls["n"] += 1
        code = status_of(lambda: node.call(method, request))
        assert code in EXPECTED, (method, code, request)
        return code

    @settings(
        max_examples=450,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        scored=st.lists(candidates, max_size=6),
        admit=candidates,
        ttl=st.one_of(st.none(), durations),
        target=targets,
        cpu_max=amounts,
        memory_high=amounts,
        reason=st.text(max_size=40),
        watch_session=st.one_of(st.just(""), session_ids),
        token=tokens,
        reservation_id=st.text(max_size=30),
    )
    def check(
        scored,
        admit,
        ttl,
        target,
        cpu_max,
        memory_high,
        reason,
        watch_session,
        token,
        reservation_id,
    ):
        if "fuzz-target" not in {s.id for s in client.sessions()}:
            client.session("fuzz-target", memory="64M")  # an Evict may have closed it
        call("GetNodeState", pb.GetNodeStateRequest(include_tool_calls=bool(scored)))
        call("ScorePlacement", pb.ScorePlacementRequest(candidates=scored))
        admitted: list[pb.AdmitResponse] = []
        request = pb.AdmitRequest(candidate=admit, **({"ttl": ttl} if ttl else {}))
        calls["n"] += 1
        code = status_of(lambda: admitted.append(node.call("Admit", request)))
        assert code in EXPECTED, ("Admit", code, request)
        for response in admitted:
            if response.admitted:
                # False when its (fuzzed, maybe sub-millisecond) TTL already ran out.
                call(
                    "ReleaseReservation",
                    pb.ReleaseReservationRequest(reservation_id=response.reservation.id),
                )
        call("ReleaseReservation", pb.ReleaseReservationRequest(reservation_id=reservation_id))
        call(
            "Throttle", pb.ThrottleRequest(target=target, cpu_max=cpu_max, memory_high=memory_high)
        )
        call("Freeze", pb.FreezeRequest(target=target))
        call("Resume", pb.ResumeRequest(target=target))
        call("Evict", pb.EvictRequest(target=target, reason=reason))
        watch = pb.WatchNodeEventsRequest(session_id=watch_session, resume_token=token)
        calls["n"] += 1
        code = status_of(lambda: next(iter(node.watch(watch, timeout=0.05))))
        # DEADLINE_EXCEEDED: a valid watch with nothing to send within 50 ms.
        assert code in EXPECTED | {grpc.StatusCode.DEADLINE_EXCEEDED}, (code, watch)

    check()
    assert calls["n"] >= 4000
    # Nothing leaked: no reservation, only the anchor and fuzz sessions' groups, and the
    # daemon still serves a real tool call in a session that was never frozen.
    time.sleep(1.5)  # a reservation whose TTL ran out before its release: expired by now
    state = node.call("GetNodeState", pb.GetNodeStateRequest()).state
    assert not state.reservations
    if "fuzz-target" in {s.id for s in client.sessions()}:  # the last Evict may have closed it
        client.call("CloseSession", apb.CloseSessionRequest(session_id="fuzz-target"))
    groups = sorted(d for d in os.listdir(base) if os.path.isdir(f"{base}/{d}"))
    assert groups == ["anchor"]
    assert anchor.run(["/bin/true"]).returncode == 0
    anchor.close()
    node.close()
    client.close()
