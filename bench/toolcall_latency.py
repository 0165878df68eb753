#!/usr/bin/env python3
"""What agentd adds to the latency of starting a command: a tool call of `/bin/true`
through the SDK (launcher, BeginToolCall, group creation and placement, EndToolCall,
group removal) against a bare `subprocess.run(["/bin/true"])`.

The two are measured interleaved in one loop (alternating which goes first), so that
both see the same machine state; the machine is shared and noisy, so the result is
the *difference* and the *ratio* of the medians, with their spread over several
rounds, never a single absolute time.

Needs root (the daemon creates cgroups). Starts its own agentd with a unique socket,
state directory and cgroup root, and removes all of them at the end:

    sudo python bench/toolcall_latency.py --runs 500 --rounds 5 --json /tmp/latency.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from threadcpu import delta, label, snapshot, thread_names

from agentd.sdk.client import Client, Session, wait_for_socket
from agentd.sdk.errors import AgentdError

NOISE_CAVEAT = (
    "This machine is shared and noisy: absolute times vary from run to run and from "
    "machine to machine. Compare the difference/ratio and their spread across rounds, "
    "not any single time."
)

ROOT_NAME = re.compile(r"^agentd-bench-[0-9a-f]{8}$")


# ---- statistics ----------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Figures:
    """Percentiles of one sample set, in milliseconds."""

    p50_ms: float
    p99_ms: float
    n: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Figures:
        return cls(
            p50_ms=percentile(seconds, 50) * 1e3,
            p99_ms=percentile(seconds, 99) * 1e3,
            n=len(seconds),
        )


@dataclass
class Comparison:
    toolcall: Figures
    subprocess: Figures
    p50_diff_ms: float
    p50_ratio: float

    @classmethod
    def of(cls, toolcall: Sequence[float], bare: Sequence[float]) -> Comparison:
        t, s = Figures.of(toolcall), Figures.of(bare)
        return cls(t, s, t.p50_ms - s.p50_ms, t.p50_ms / s.p50_ms if s.p50_ms else float("inf"))


@dataclass
class Result:
    rounds: list[Comparison] = field(default_factory=list)
    # CPU time the daemon spent per tool call, per round (ms): unlike latency, this
    # hardly depends on what else the machine runs.
    daemon_cpu_ms_per_call: list[float] = field(default_factory=list)
    overall: Comparison | None = None
    p50_diff_spread_ms: tuple[float, float] = (0.0, 0.0)
    environment: dict[str, Any] = field(default_factory=dict)


# ---- the daemon under test --------------------------------------------------------------


def cgroup_mounts() -> list[str]:
    """Every cgroup (v1 or v2) mount point of this machine."""
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype = right.split()[0] if right else ""
            if fstype in ("cgroup", "cgroup2"):
                mounts.append(left.split()[4].replace("\\040", " "))
    return mounts


def leftover_groups(root: str) -> list[str]:
    return [f"{m}/{root}" for m in cgroup_mounts() if os.path.isdir(f"{m}/{root}")]


def remove_group_tree(path: str) -> None:
    """rmdir a cgroup directory and its children, deepest first (cgroupfs has no rm -r)."""
    for current, _, _ in sorted(os.walk(path), key=lambda w: w[0].count("/"), reverse=True):
        os.rmdir(current)


class Daemon:
    """An agentd of our own: unique socket, state dir and cgroup root; stopped by PID."""

    def __init__(
        self,
        workdir: Path,
        backend: str | None,
        config_text: str = "",
        pythonpath: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.root = f"agentd-bench-{secrets.token_hex(4)}"
        self.socket = str(workdir / "agentd.sock")
        self.log_path = workdir / "daemon.log"
        # An empty config file (unless a benchmark asks for settings) so that a host's
        # /etc/agentd/agentd.toml does not change what is measured.
        self.config = workdir / "bench.toml"
        self.config.write_text(config_text)
        self.backend = backend
        # Another build of agentd (e.g. `pip install --target DIR` of an older commit)
        # to run instead of the installed one: an A/B in the same run.
        self.pythonpath = pythonpath
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        argv = [
            sys.executable,
            "-m",
            "agentd.daemon",
            "--config",
            str(self.config),
            "--socket",
            self.socket,
            "--state-dir",
            str(self.workdir / "state"),
            "--cgroup-root",
            self.root,
            "--log-format",
            "json",
            "--log-level",
            "warning",
        ]
        if self.backend:
            argv += ["--cgroup-backend", self.backend]
        # Our own AGENTD_* variables must not configure the daemon under test; cwd is
        # the workdir so `-m` imports the installed agentd, not a source checkout.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTD_")}
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        with open(self.log_path, "wb") as log:
            # Its own session: the terminal's Ctrl-C reaches only the benchmark, which
            # then closes the session and stops the daemon in that order.
            self.process = subprocess.Popen(
                argv,
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_socket(self.socket, timeout=timeout)
        except Exception:
            code = self.process.poll()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            state = f"exited {code}" if code is not None else "still running"
            raise RuntimeError(f"agentd did not come up ({state}); its log ends:\n{tail}") from None

    def stop(self, timeout: float = 15.0) -> str:
        """SIGTERM by PID, SIGKILL if it does not stop; returns how it ended."""
        process = self.process
        if process is None or process.poll() is not None:
            return "not running"
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
            return f"stopped by SIGTERM (exit {process.returncode})"
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return f"did not stop within {timeout:g}s of SIGTERM; killed"

    def remove_cgroups(self) -> list[str]:
        """Remove our root group in every hierarchy if the daemon left it; returns what
        is still there (should be nothing)."""
        if not ROOT_NAME.match(self.root):  # never rmdir anything but our own root
            raise AssertionError(f"refusing to remove {self.root!r}")
        left_by_daemon = leftover_groups(self.root)
        if left_by_daemon:
            print(f"daemon left its root group in {len(left_by_daemon)} hierarchies; removing")
        for path in left_by_daemon:
            try:
                remove_group_tree(path)
            except OSError as e:
                print(f"warning: could not remove {path}: {e}", file=sys.stderr)
        return leftover_groups(self.root)


# ---- measurement -------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_round(
    session: Session, runs: int, command: list[str], settle: bool = True, gap: float = 0.0
) -> tuple[list[float], list[float], float]:
    """`runs` samples of each, interleaved (which one goes first alternates so that
    neither always runs right after the other's side effects), and the fraction of
    tool calls that found a launcher placed (back to back: whether placing keeps up).

    `settle`: after each tool call, and outside the timed region, wait for the SDK's
    background work (placing the next launcher, reporting the end) to finish, as it
    would between an agent's tool calls, which come seconds apart. Without it the
    next sample (either kind) competes with that work for the CPU and the GIL.
    `gap`: instead, a fixed pause (seconds) before each sample, outside the timed
    region, whatever the SDK is doing: an agent whose tool calls come that fast.
    """

    def via_agentd() -> None:
        result = session.run(command)
        if result.returncode != 0:
            raise RuntimeError(f"tool call {result.tool_call_id} exited {result.returncode}")

    def settled() -> None:
        if gap:
            time.sleep(gap)
        elif settle:
            session.settle()

    def bare() -> None:
        subprocess.run(command, check=True)

    toolcall: list[float] = []
    baseline: list[float] = []
    ready = 0  # runs that found a launcher placed (back to back: did the pool keep up?)
    for i in range(runs):
        settled()
        if i % 2 == 0:
            ready += session.placed_ahead() is not None
            toolcall.append(timed(via_agentd))
            settled()
            baseline.append(timed(bare))
        else:
            baseline.append(timed(bare))
            ready += session.placed_ahead() is not None
            toolcall.append(timed(via_agentd))
    return toolcall, baseline, ready / runs


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No collector pauses inside a round: they would land on either side at random."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def environment(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    status = client.status()
    return {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
        "cgroup_mode": status.cgroup_mode,
        "cgroup_backend": status.cgroup_backend,
        "runs_per_round": args.runs,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "command": args.command,
        "launchers_ahead": not args.no_ahead,
        "settle": args.settle,
        "gap_ms": args.gap_ms,
    }


def run_benchmark(args: argparse.Namespace, daemon: Daemon) -> Result:
    result = Result()
    with Client(daemon.socket, ahead=not args.no_ahead) as client:
        result.environment = environment(client, args)
        session = client.session(f"bench-{secrets.token_hex(4)}")
        try:
            gap = args.gap_ms / 1e3
            # Excluded: caches, imports.
            measure_round(session, args.warmup, args.command, args.settle, gap)
            all_toolcall: list[float] = []
            all_bare: list[float] = []
            assert daemon.process is not None
            pid = daemon.process.pid
            names = thread_names(pid) if args.threads else {}
            per_thread: dict[str, list[float]] = {}
            for number in range(1, args.rounds + 1):
                # The daemon's threads and its children (the warm helper), as run time.
                before = snapshot(pid)
                with gc_paused():
                    toolcall, bare, ready = measure_round(
                        session, args.runs, args.command, args.settle, gap
                    )
                spent = delta(before, snapshot(pid))
                cpu_ms = sum(spent.values()) / 1e6 / args.runs
                result.daemon_cpu_ms_per_call.append(cpu_ms)
                by_name: dict[str, float] = {}
                for key, ns in spent.items():
                    name = label(pid, key, names)
                    by_name[name] = by_name.get(name, 0.0) + ns / 1e6 / args.runs
                for name, ms in by_name.items():
                    per_thread.setdefault(name, []).append(ms)
                comparison = Comparison.of(toolcall, bare)
                result.rounds.append(comparison)
                all_toolcall += toolcall
                all_bare += bare
                print_round(f"round {number}/{args.rounds}", comparison)
                print(
                    f"{'':<14} daemon CPU per tool call {cpu_ms:.2f} ms, "
                    f"a launcher was placed before {ready * 100:.0f}% of the runs",
                    flush=True,
                )
            if args.threads:
                print("daemon CPU per tool call by thread (ms, median of rounds):")
                medians = {
                    name: statistics.median(v + [0.0] * (args.rounds - len(v)))
                    for name, v in per_thread.items()
                }
                for name, ms in sorted(medians.items(), key=lambda kv: -kv[1])[:12]:
                    print(f"  {ms:6.3f}  {name}")
            result.overall = Comparison.of(all_toolcall, all_bare)
            diffs = [r.p50_diff_ms for r in result.rounds]
            result.p50_diff_spread_ms = (min(diffs), max(diffs))
            result.environment["loadavg_at_end"] = list(os.getloadavg())
        finally:
            try:
                session.close()
            except AgentdError as e:
                # Cleanup goes on: removing the root group below also removes this one.
                print(f"warning: could not close session {session.id}: {e}", file=sys.stderr)
    return result


# ---- output --------------------------------------------------------------------------------


def print_round(title: str, c: Comparison) -> None:
    print(
        f"{title:<14} tool call p50 {c.toolcall.p50_ms:7.2f} ms  p99 {c.toolcall.p99_ms:7.2f} ms"
        f" | subprocess p50 {c.subprocess.p50_ms:7.2f} ms  p99 {c.subprocess.p99_ms:7.2f} ms"
        f" | p50 diff {c.p50_diff_ms:+7.2f} ms  ratio {c.p50_ratio:5.2f}x",
        flush=True,
    )


def print_summary(result: Result) -> None:
    assert result.overall is not None
    env = result.environment
    low, high = result.p50_diff_spread_ms
    print()
    print_round("overall", result.overall)
    print(
        f"p50 difference across {len(result.rounds)} rounds: {low:.2f} .. {high:.2f} ms "
        f"(ratio {min(r.p50_ratio for r in result.rounds):.2f}x .. "
        f"{max(r.p50_ratio for r in result.rounds):.2f}x)"
    )
    cpu = result.daemon_cpu_ms_per_call
    print(
        f"daemon CPU per tool call: {statistics.median(cpu):.2f} ms median "
        f"({min(cpu):.2f} .. {max(cpu):.2f} across rounds)"
    )
    print(
        f"environment: {env['cpus']} CPUs, load {env['loadavg_at_start'][0]:.2f} -> "
        f"{env['loadavg_at_end'][0]:.2f}, cgroup {env['cgroup_mode']} "
        f"(backend {env['cgroup_backend']}), kernel {env['kernel']}, Python {env['python']}"
    )
    cadence = (
        f"a {env['gap_ms']:g} ms pause before each sample"
        if env["gap_ms"]
        else "settle before each sample"
        if env["settle"]
        else "back to back"
    )
    print(f"launchers placed ahead: {'on' if env['launchers_ahead'] else 'off'}, {cadence}")
    print(f"note: {NOISE_CAVEAT}")


def result_json(result: Result) -> dict[str, Any]:
    low, high = result.p50_diff_spread_ms
    return {
        "benchmark": "toolcall_latency",
        "caveat": NOISE_CAVEAT,
        "unit": "ms",
        "rounds": [asdict(r) for r in result.rounds],
        "overall": asdict(result.overall) if result.overall else None,
        "p50_diff_spread_ms": {"min": low, "max": high},
        "environment": result.environment,
    }


# ---- entry point ---------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Latency agentd adds to starting a command (tool call of /bin/true vs "
        "subprocess.run), measured interleaved over several rounds.",
        epilog=NOISE_CAVEAT,
    )
    parser.add_argument("--runs", type=positive_int, default=500, help="samples per round")
    parser.add_argument("--rounds", type=positive_int, default=5, help="rounds (default 5)")
    parser.add_argument(
        "--warmup", type=int, default=50, help="unrecorded runs before the first round"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument(
        "--cgroup-backend", choices=("auto", "v1", "v2"), help="passed to the daemon"
    )
    parser.add_argument(
        "--no-ahead",
        action="store_true",
        help="the ordinary path: no launcher placed ahead (Client(ahead=False))",
    )
    parser.add_argument(
        "--no-settle",
        dest="settle",
        action="store_false",
        help="back to back: do not wait for the SDK's background work between samples",
    )
    parser.add_argument(
        "--gap-ms",
        type=float,
        default=0.0,
        help="pause this long before each sample instead of settling (agent cadence "
        "without waiting for the SDK)",
    )
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep the daemon's log and state dir"
    )
    parser.add_argument(
        "--threads",
        action="store_true",
        help="also print the daemon's CPU per tool call by thread (names from py-spy)",
    )
    args = parser.parse_args(argv)
    args.command = ["/bin/true"]
    if os.geteuid() != 0:
        print("toolcall_latency: needs root (agentd creates cgroups)", file=sys.stderr)
        return 2

    # SIGTERM/SIGHUP clean up like Ctrl-C; SIGINT is re-enabled because a shell
    # starts background jobs with it ignored, which would make cleanup unreachable.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="agentd-bench-"))
    daemon = Daemon(workdir, args.cgroup_backend)
    print(f"agentd under test: socket {daemon.socket}, cgroup root {daemon.root}", flush=True)
    print(f"note: {NOISE_CAVEAT}", flush=True)
    status = 0
    try:
        daemon.start()
        result = run_benchmark(args, daemon)
        print_summary(result)
        if args.json:
            Path(args.json).write_text(json.dumps(result_json(result), indent=2) + "\n")
            print(f"figures written to {args.json}")
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        status = 130
    except (RuntimeError, AgentdError) as e:
        print(f"toolcall_latency: {e}", file=sys.stderr)
        status = 1
    finally:
        print(f"daemon: {daemon.stop()}")
        left = daemon.remove_cgroups()
        if left:
            print(f"error: cgroups left behind: {', '.join(left)}", file=sys.stderr)
            status = status or 1
        else:
            gone = not os.path.exists(f"/sys/fs/cgroup/memory/{daemon.root}")
            print(f"cgroups: none left under {daemon.root} (memory hierarchy gone: {gone})")
        if args.keep_workdir:
            print(f"workdir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
