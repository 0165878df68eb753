"""The Prometheus endpoint of a real daemon: scraped over HTTP after real tool calls."""

from __future__ import annotations

import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent.parent))

from agentd_process import AgentdProcess
from conftest import require_cgroup_v1

PY = sys.executable
Sample = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> Sample:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: Sample = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Sample, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def scrape_until(port: int, ready: Callable[[Sample], bool], timeout: float = 5.0) -> Sample:
    """The event-fed counters trail the RPC that caused them by a few milliseconds."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


@pytest.fixture
def metrics_daemon() -> Iterator[tuple[AgentdProcess, int]]:
    require_cgroup_v1()
    port = free_port()
    # The guard in "report" mode: the test counts a kernel OOM kill as an outcome.
    daemon = AgentdProcess(
        config=f'[prometheus]\nlisten = "127.0.0.1:{port}"\n[guard]\nmemory_action = "report"\n'
    )
    daemon.start()
    yield daemon, port
    leftovers = daemon.cleanup()
    assert not leftovers
    assert daemon.exit_status in (0, None), daemon.logs()[-3000:]


def test_scrape_counts_tool_calls_by_outcome_and_tracks_sessions(metrics_daemon) -> None:
    daemon, port = metrics_daemon
    before = scrape(port)
    assert value(before, "agentd_sessions_open") == 0
    assert value(before, "agentd_tool_calls_begun_total") == 0
    assert value(before, "agentd_node_cpu_capacity_cores") > 0
    assert value(before, "agentd_node_memory_allocatable_bytes") > 0
    with daemon.client() as client:
        session = client.session("metrics-a", memory="1G")
        assert session.run(["true"]).returncode == 0
        assert session.run(["false"]).returncode == 1
        assert session.run(["sh", "-c", "kill -TERM $$"]).returncode == -15
        hog = session.run([PY, "-c", "x = bytearray(200 << 20)"], memory="64M")
        assert hog.usage.oom_killed
        # A running tool call holding 48 MiB: seen in the session's gauges.
        holder = session.start(
            [
                PY,
                "-c",
                "import time; x = bytearray(48 << 20); x[::4096] = b'1' * len(x[::4096]);"
                " time.sleep(30)",
            ]
        )
        samples = scrape_until(
            port,
            lambda s: (
                (value(s, "agentd_session_memory_bytes", session="metrics-a") or 0) > 40 << 20
            ),
        )
        assert value(samples, "agentd_sessions_open") == 1
        assert value(samples, "agentd_tool_calls_running") == 1
        assert value(samples, "agentd_session_tool_calls_running", session="metrics-a") == 1
        assert value(samples, "agentd_session_memory_bytes", session="metrics-a") > 40 << 20
        assert value(samples, "agentd_session_memory_limit_bytes", session="metrics-a") == 1 << 30
        assert value(samples, "agentd_session_processes", session="metrics-a") >= 1
        assert value(samples, "agentd_session_cpu_seconds_total", session="metrics-a") > 0
        assert value(samples, "agentd_node_memory_allocated_bytes") == 1 << 30
        assert value(samples, "agentd_root_memory_bytes") >= 40 << 20
        holder.kill()
        holder.wait()
        samples = scrape_until(
            port,
            lambda s: (
                value(s, "agentd_tool_calls_begun_total") == 5
                and value(s, "agentd_tool_calls_ended_total", outcome="signal") == 2
            ),
        )
        assert value(samples, "agentd_tool_calls_begun_total") == 5
        assert value(samples, "agentd_tool_calls_ended_total", outcome="exit_zero") == 1
        assert value(samples, "agentd_tool_calls_ended_total", outcome="exit_nonzero") == 1
        assert value(samples, "agentd_tool_calls_ended_total", outcome="signal") == 2
        assert value(samples, "agentd_tool_calls_ended_total", outcome="oom") == 1
        assert value(samples, "agentd_tool_calls_ended_total", outcome="unknown") == 0
        session.close()
    after = scrape(port)
    # A closed session's series are gone; the node figures go back to zero.
    assert not [k for k in after if dict(k[1]).get("session") == "metrics-a"]
    assert value(after, "agentd_sessions_open") == 0
    assert value(after, "agentd_node_memory_allocated_bytes") == 0


def test_scrape_reports_api_latency_pressure_and_tracking(metrics_daemon) -> None:
    daemon, port = metrics_daemon
    with daemon.client() as client:
        for _ in range(3):
            client.status()
        with pytest.raises(Exception, match="not-open"):
            client.attach("not-open").close()
    samples = scrape(port)
    status = "/agentd.v1.AgentService/GetNodeStatus"
    count = value(
        samples,
        "agentd_api_request_duration_seconds_count",
        transport="unix",
        method=status,
        code="OK",
    )
    assert count is not None and count >= 3
    failed = [
        k
        for k in samples
        if k[0] == "agentd_api_request_duration_seconds_count"
        and dict(k[1]).get("code") == "NOT_FOUND"
    ]
    assert failed, "a refused call is timed under its status code"
    # PSI is live on this kernel: every resource reports some/avg10.
    for resource in ("cpu", "memory", "io"):
        ratio = value(
            samples, "agentd_node_pressure_ratio", resource=resource, kind="some", window="avg10"
        )
        assert ratio is not None and 0.0 <= ratio <= 1.0
    lost = [k for k in samples if k[0] == "agentd_tracking_lost_events_total"]
    assert len(lost) == 1 and samples[lost[0]] >= 0


def test_endpoint_off_when_listen_is_empty() -> None:
    require_cgroup_v1()
    daemon = AgentdProcess(config='[prometheus]\nlisten = ""\n')
    daemon.start()
    try:
        assert "metrics.listening" not in daemon.logs()
        assert daemon.client().status().version
    finally:
        assert not daemon.cleanup()


def test_port_taken_leaves_the_daemon_serving() -> None:
    require_cgroup_v1()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = AgentdProcess(config=f'[prometheus]\nlisten = "127.0.0.1:{port}"\n')
        daemon.start()
        try:
            with daemon.client() as client:
                assert client.status().version
            assert "metrics.unavailable" in daemon.logs()
        finally:
            assert not daemon.cleanup()
