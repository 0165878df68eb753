"""The fast path's pure logic: env encoding, usage parsing, report folding."""

from __future__ import annotations

import subprocess
import sys
import threading

from agentd.cgroups.usage import FinalUsage
from agentd.sdk.ahead import Reporter, encode_env, intent_key
from agentd.sdk.client import resources
from agentd.v1 import agent_pb2 as pb


def test_encode_env_follows_changes_to_the_environment(monkeypatch):
    monkeypatch.setenv("AGENTD_TEST_VAR", "one")
    first = encode_env(None)
    assert b"AGENTD_TEST_VAR=one\0" in first
    assert encode_env(None) is first  # unchanged: the cached encoding
    monkeypatch.setenv("AGENTD_TEST_VAR", "two")
    second = encode_env(None)
    assert b"AGENTD_TEST_VAR=two\0" in second and b"AGENTD_TEST_VAR=one" not in second
    assert encode_env({"A": "b", "C": "d"}) == b"A=b\0C=d\0"


def test_intent_key_ignores_the_label_but_not_the_limits():
    a = pb.Intent(resources=resources(memory="64M"), label="make")
    b = pb.Intent(resources=resources(memory="64M"), label="pytest -x")
    c = pb.Intent(resources=resources(memory="128M"), label="make")
    d = pb.Intent(resources=resources(memory="64M"), priority=pb.PRIORITY_CLASS_BATCH)
    assert intent_key(a) == intent_key(b)
    assert len({intent_key(a), intent_key(c), intent_key(d)}) == 3


def _write(directory, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def test_final_usage_v1_reads_every_counter_and_sees_leftovers(tmp_path):
    paths = {c: str(tmp_path / c) for c in ("memory", "cpu", "cpuacct", "pids")}
    _write(tmp_path / "pids", {"pids.current": "0\n", "pids.peak": "51\n"})
    _write(
        tmp_path / "memory",
        {
            "memory.max_usage_in_bytes": "73728000\n",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        },
    )
    _write(tmp_path / "cpuacct", {"cpuacct.usage_user": "1500000\n", "cpuacct.usage_sys": "7000\n"})
    _write(
        tmp_path / "cpu",
        {"cpu.stat": "nr_periods 10\nnr_throttled 3\nthrottled_time 250000000\n"},
    )
    files = FinalUsage(paths)
    usage = files.read()
    assert usage is not None
    assert usage.memory_peak == 73728000 and usage.oom_kills == 2
    assert (usage.cpu_user_usec, usage.cpu_system_usec) == (1500, 7)
    assert (usage.cpu_throttled_usec, usage.cpu_nr_throttled) == (250000, 3)
    assert usage.pids_peak == 51
    (tmp_path / "pids" / "pids.current").write_text("1\n")  # read again at offset 0
    assert files.read() is None  # something is left inside: the daemon must end it
    files.close()


def test_final_usage_v2_without_optional_files(tmp_path):
    _write(
        tmp_path,
        {
            "pids.current": "0\n",
            "memory.events": "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
            "cpu.stat": "usage_usec 900\nuser_usec 600\nsystem_usec 300\nthrottled_usec 5\n",
        },
    )
    files = FinalUsage({"unified": str(tmp_path)})  # no memory.peak / pids.peak: old kernel
    usage = files.read()
    files.close()
    assert usage is not None
    assert (usage.cpu_user_usec, usage.cpu_system_usec, usage.cpu_throttled_usec) == (600, 300, 5)
    assert usage.oom_kills == 1 and usage.memory_peak == 0 and usage.pids_peak == 0


def test_a_queued_start_is_folded_into_its_end():
    sent: list[tuple[str, object]] = []
    gate = threading.Event()

    def call(method: str, request: object) -> None:
        gate.wait(5)
        sent.append((method, request))

    reporter = Reporter(call)
    reporter.ended("tc-000000000001", "first", 1.0, pb.ExitStatus(known=True))  # holds the thread
    reporter.started("tc-000000000002", "sleep 1", 2.0)
    reporter.ended("tc-000000000002", "sleep 1", 2.0, pb.ExitStatus(known=True, exit_code=3))
    gate.set()
    assert reporter.flush(5)
    assert [m for m, _ in sent] == ["EndToolCall", "EndToolCall"]
    folded = sent[1][1]
    assert folded.tool_call_id == "tc-000000000002" and folded.label == "sleep 1"
    assert folded.exit.exit_code == 3 and folded.started_at.ToNanoseconds() == 2_000_000_000


def test_a_start_of_a_command_still_running_is_reported_after_the_delay():
    sent: list[str] = []
    reporter = Reporter(lambda method, request: sent.append(method))
    reporter.started("tc-000000000003", "sleep 60", 1.0)
    assert reporter.flush(5)  # flushing makes it due at once
    assert sent == ["StartToolCall"]


class _FakeClient:
    """What Session._begin_ahead uses of a Client: call() and the reporter."""

    def __init__(self, handled: int | None) -> None:
        self.calls: list[tuple[str, object]] = []
        self.handled = handled  # None: every end folded in; else a fixed count (old daemon: 0)
        self.reporter = Reporter(self.call)

    def call(self, method: str, request: object) -> pb.ToolCall:
        self.calls.append((method, request))
        if method != "BeginToolCall":
            return pb.ToolCall()
        ends = len(request.ends)  # type: ignore[attr-defined]
        return pb.ToolCall(id="tc-00000000000f", ends_handled=ends if self.handled is None else 0)


class _FakeSession:
    def __init__(self, client: _FakeClient) -> None:
        self.id = "s"
        self.client = client


def test_pending_ends_are_folded_into_the_next_placement():
    from agentd.sdk.client import Session

    client = _FakeClient(handled=None)
    exit_status = pb.ExitStatus(known=True, exit_code=2)
    client.reporter.ended("tc-000000000001", "make", 1.0, exit_status)
    client.reporter.ended("tc-000000000002", "", 0.0, pb.ExitStatus())
    placed = Session._begin_ahead(_FakeSession(client), pb.Intent(), 1234)  # type: ignore[arg-type]
    assert placed.id == "tc-00000000000f"
    assert client.reporter.flush(5)
    # One RPC: the ends travelled in the placement, none was sent again.
    assert [m for m, _ in client.calls] == ["BeginToolCall"]
    request = client.calls[0][1]
    assert [e.tool_call_id for e in request.ends] == ["tc-000000000001", "tc-000000000002"]  # type: ignore[attr-defined]
    assert request.ends[0].exit.exit_code == 2 and request.ends[0].label == "make"  # type: ignore[attr-defined]


def test_ends_a_daemon_did_not_handle_are_sent_alone_and_folding_stops():
    """A daemon that predates `ends` ignores them (ends_handled 0): the reporter sends
    them itself, and folds no more."""
    from agentd.sdk.client import Session

    client = _FakeClient(handled=0)
    client.reporter.ended("tc-000000000001", "make", 1.0, pb.ExitStatus(known=True))
    Session._begin_ahead(_FakeSession(client), pb.Intent(), 1234)  # type: ignore[arg-type]
    assert client.reporter.flush(5)
    assert [m for m, _ in client.calls] == ["BeginToolCall", "EndToolCall"]
    assert client.calls[1][1].tool_call_id == "tc-000000000001"  # type: ignore[attr-defined]
    assert not client.reporter.fold
    client.reporter.ended("tc-000000000002", "make", 1.0, pb.ExitStatus(known=True))
    assert client.reporter.take_ends() == []


def test_flush_waits_for_ends_lent_to_a_placement():
    """Read your own writes: ends taken for a placement still count until given back."""
    reporter = Reporter(lambda method, request: None)
    reporter.ended("tc-000000000001", "make", 1.0, pb.ExitStatus(known=True))
    ends = reporter.take_ends()
    assert len(ends) == 1
    assert not reporter.idle()
    assert not reporter.flush(0.2)
    threading.Timer(0.1, reporter.give_back, (ends, 1)).start()
    assert reporter.flush(5)
    assert reporter.idle()


class _BatchDaemon:
    """BeginToolCall for LauncherPool: places at most `limit` of each batch."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.batches: list[list[int]] = []
        self._lock = threading.Lock()

    def begin(self, intent: pb.Intent, pid: int, more: list[int] | tuple[int, ...] = ()):
        with self._lock:
            self.batches.append([pid, *more])
            n = len(self.batches)
        placed = [pb.ToolCall(id=f"tc-{n:06x}{i:06x}", launcher_pid=p) for i, p in
                  enumerate([pid, *more][: self.limit])]  # fmt: skip
        first = placed[0]
        first.more_placed.extend(placed[1:])
        return first


def test_a_pool_short_of_several_launchers_places_them_in_one_call():
    import os
    import time

    from agentd.sdk.ahead import LauncherPool

    daemon = _BatchDaemon(limit=2)  # places 2 of a batch of 3: the third is aborted
    pool = LauncherPool(daemon.begin, lambda tool_call_id: None, depth=3)
    try:
        pool.prepare(pb.Intent())
        pool.wait_prepared(10)
        # Empty pool: the three in one call, the one not placed then alone.
        assert [len(b) for b in daemon.batches] == [3, 1]
        aborted = daemon.batches[0][2]
        # Aborted: it read EOF, exited without running anything and was reaped.
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{aborted}") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not os.path.exists(f"/proc/{aborted}")
        ready = pool.ready_ids()
        assert len(ready) == 3 and len(set(ready)) == 3
        taken = pool.take(intent_key(pb.Intent()))
        assert taken is not None and taken.pid == daemon.batches[0][0]
        taken.abort()
    finally:
        pool.close()


def test_the_sdk_logs_through_logging_not_to_the_harness_stdout(tmp_path):
    """In an agent's harness that configured nothing: no line on stdout (it may be the
    harness's protocol), debug and info dropped, a warning on stderr; once the
    application configures logging, its handlers get every level it asked for."""
    code = (
        "import logging\n"
        "from agentd.sdk.ahead import log\n"
        "log.debug('ahead.prepare_failed', error='x')\n"
        "log.info('report.refused', method='EndToolCall')\n"
        "log.warning('report.failed', method='EndToolCall', error='gone')\n"
        "logging.basicConfig(level=logging.DEBUG, format='%(name)s %(message)s')\n"
        "log.debug('after.configure', n=1)\n"
    )
    done = subprocess.run(
        # Not from the checkout (`-c` puts the working directory first on the path):
        # the installed package, with its generated protobuf modules.
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines == [
        "event='report.failed' method='EndToolCall' error='gone'",
        "agentd.sdk event='after.configure' n=1",
    ], done.stderr
