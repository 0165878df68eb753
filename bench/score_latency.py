#!/usr/bin/env python3
"""A 10-candidate ScorePlacement over gRPC (loopback TCP, mutual TLS) with a trained
model: the latency a scheduler sees (issue 6's target: p99 < 5 ms).

Trains the default model on the recorded dataset (tests/data/interference.jsonl, as
bench/predict_latency.py does) and starts two daemons: one serving with that model,
one without a model file (the PSI fallback rule: the same call path, no model: the
baseline); and a bare grpc.aio server answering the model daemon's own response
over the same TLS (the floor: grpc and this machine, no agentd code; the server of
bench/grpc_floor.py). One
call at a time, alternating between the three, --calls per round;
prints p50/p99 per round, then the median and min-max of the p99s over --rounds,
and the load average. Each candidate has another label (command class), so the
model's per-class profiles are all used.

Two clients, one call in flight each, on one reused channel (one TLS handshake):
grpc's Python client, and the native (C++) one of bench/native (a scheduler's own
client is native; skipped with a message when it cannot be built); and the model
daemon over its unix socket (Python client, the thread-pool server: the path of
`agentctl predict` and of local callers). Also printed:
how the model daemon answered the candidates (agentd_api_score_cache_candidates:
from the cache or computed) and its handler time. --no-collector runs both daemons
without the interference collector: what its thread costs the calls' tail.

Needs root (the daemons create cgroups):

    cd /tmp && sudo python /path/to/agentd/bench/score_latency.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

DATASET = Path(__file__).resolve().parent.parent / "tests" / "data" / "interference.jsonl"
TARGET_P99_MS = 5.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300, help="per daemon and round")
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--runq", action="store_true", help="eBPF run-queue delay of both ends")
    parser.add_argument(
        "--readers",
        type=int,
        default=0,
        help="[api] readers of both daemons (0: the daemon answers; its handler histogram "
        "then covers every call)",
    )
    parser.add_argument(
        "--native-seconds",
        type=float,
        default=1.5,
        help="per daemon and round for the native client (0: none)",
    )
    parser.add_argument(
        "--no-collector",
        action="store_true",
        help="both daemons without the interference collector ([collector] enabled = false)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        help="the daemons' (info: the production default; debug records cost CPU per call)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("score_latency: needs root (the daemons create cgroups)", file=sys.stderr)
        return 2

    import native_client
    from node_api_support import free_port, node_daemon

    from agentd.metrics.dataset import SoloRule, load_jsonl
    from agentd.predictor.train import DEFAULT_MODEL, train
    from agentd.sdk.node import LocalNodeClient
    from agentd.v1 import agent_pb2 as apb
    from agentd.v1 import node_pb2 as pb
    from agentd.v1 import node_pb2_grpc

    workdir = Path(tempfile.mkdtemp(prefix="agentd-bench-score-"))
    with open(DATASET) as f:
        records = load_jsonl(f)
    model_path = workdir / "predictor.model"
    train(records, SoloRule(2.0), DEFAULT_MODEL).save(model_path)
    labels = sorted({r.label for r in records})
    request = pb.ScorePlacementRequest(
        candidates=[
            pb.Candidate(
                id=f"c{i}",
                intent=apb.Intent(
                    label=labels[i % len(labels)],
                    resources=apb.Resources(memory_max=f"{(i + 1) * 256}M", cpu="1"),
                ),
            )
            for i in range(args.candidates)
        ]
    )
    metrics_port = free_port()
    collector = "[collector]\nenabled = false\n" if args.no_collector else ""
    nodes = {
        "model": node_daemon(
            workdir / "model",
            api=f"rate_limit = 0\nreaders = {args.readers}",
            tables=f'[predictor]\nmodel = "{model_path}"\n'
            f'[prometheus]\nlisten = "127.0.0.1:{metrics_port}"\n{collector}',
            log_level=args.log_level,
        ),
        "fallback": node_daemon(
            workdir / "fallback",
            api=f"rate_limit = 0\nreaders = {args.readers}",
            tables=collector,
            log_level=args.log_level,
        ),
    }
    binary = None
    if args.native_seconds > 0:
        try:
            binary = native_client.build()
        except native_client.NativeClientUnavailable as e:
            print(f"score_latency: no native client: {e}", file=sys.stderr)
    targets: dict[str, Any] = dict(nodes)
    floor = None
    try:
        stubs = {name: node.stub() for name, node in nodes.items()}
        for name, stub in stubs.items():  # connect, and check which model answers
            scores = stub.ScorePlacement(request, timeout=10).scores
            assert len(scores) == args.candidates
            used = scores[0].prediction.model
            assert used.startswith("fallback") == (name == "fallback"), (name, used)
            print(f"{name}: {used}")
            for _ in range(100):  # warm-up
                stub.ScorePlacement(request, timeout=10)
        # The floor: a bare grpc.aio server (same TLS, same certificates) answering the
        # model daemon's own response bytes, no agentd code: what grpc and this machine
        # cost per call in the same rounds.
        response = stubs["model"].ScorePlacement(request, timeout=10).SerializeToString()
        floor = Floor(nodes["model"].certs, response)
        targets[FLOOR] = floor.target
        stubs[FLOOR] = node_pb2_grpc.NodeServiceStub(floor.target.channel())
        for _ in range(100):  # warm-up
            stubs[FLOOR].ScorePlacement(request, timeout=10)
        print(
            f"{args.candidates} candidates, {args.calls} calls per daemon and round, "
            f"{args.readers} reader processes each; {FLOOR}: a bare grpc.aio server"
        )
        model_pid = nodes["model"].daemon.process.pid  # type: ignore[union-attr]
        runq = RunqProbe({"daemon": model_pid, "client": os.getpid()}) if args.runq else None
        handler_before = handler_buckets(metrics_port)
        answered_before = answered(metrics_port)
        p99s: dict[str, list[float]] = {name: [] for name in stubs}
        native_p99s: dict[str, list[float]] = {name: [] for name in stubs}
        unix_p99s: list[float] = []
        local = LocalNodeClient(nodes["model"].daemon.socket)
        for _ in range(100):  # warm-up
            local.call("ScorePlacement", request)
        for r in range(1, args.rounds + 1):
            times: dict[str, list[float]] = {name: [] for name in stubs}
            for _ in range(args.calls):
                for name, stub in stubs.items():
                    began = time.perf_counter()
                    stub.ScorePlacement(request, timeout=10)
                    times[name].append((time.perf_counter() - began) * 1000)
            parts = []
            for name, values in times.items():
                p99s[name].append(pct(values, 99))
                parts.append(f"{name} p50 {pct(values, 50):.2f} p99 {pct(values, 99):.2f} ms")
            print(f"round {r}: " + " | ".join(parts) + f" | load {os.getloadavg()[0]:.1f}")
            unix_times = []
            for _ in range(args.calls):  # the agentctl predict path: unix socket, thread pool
                began = time.perf_counter()
                local.call("ScorePlacement", request)
                unix_times.append((time.perf_counter() - began) * 1000)
            unix_p99s.append(pct(unix_times, 99))
            print(
                f"round {r} unix socket: model p50 {pct(unix_times, 50):.2f} "
                f"p99 {pct(unix_times, 99):.2f} ms | load {os.getloadavg()[0]:.1f}"
            )
            if binary is not None:
                parts = []
                for name, target in targets.items():
                    values = native_round(
                        binary, target, request, args.native_seconds, workdir / f"native-{name}"
                    )
                    native_p99s[name].append(pct(values, 99))
                    parts.append(
                        f"{name} p50 {pct(values, 50):.2f} p99 {pct(values, 99):.2f} ms "
                        f"({len(values)} calls)"
                    )
                print(
                    f"round {r} native: " + " | ".join(parts) + f" | load {os.getloadavg()[0]:.1f}"
                )
        handler = shares(handler_before, handler_buckets(metrics_port))
        sources = {k: v - answered_before.get(k, 0.0) for k, v in answered(metrics_port).items()}
        scored = sum(sources.values())
        if scored:
            print(
                "model daemon's candidates: "
                + ", ".join(f"{share / scored:.2%} {k}" for k, share in sorted(sources.items()))
            )
        print(
            "model daemon's handler time (its own histogram): "
            + ", ".join(f"{share:.1%} under {le} ms" for le, share in handler.items())
        )
        if runq is not None:
            runq.report(calls=args.calls * args.rounds * len(stubs))
        for name, values in p99s.items():
            print(
                f"{name}: p99 median {statistics.median(values):.2f} ms "
                f"[{min(values):.2f}-{max(values):.2f}] over {args.rounds} rounds"
            )
        print(
            f"model over the unix socket (agentctl predict's path): p99 median "
            f"{statistics.median(unix_p99s):.2f} ms [{min(unix_p99s):.2f}-{max(unix_p99s):.2f}]"
        )
        for name, values in native_p99s.items():
            if values:
                print(
                    f"{name} (native client): p99 median {statistics.median(values):.2f} ms "
                    f"[{min(values):.2f}-{max(values):.2f}] over {args.rounds} rounds"
                )
        model_p99 = statistics.median(p99s["model"])
        print(
            f"target (p99 < {TARGET_P99_MS:g} ms for {args.candidates} candidates with the "
            f"model): {'met' if model_p99 < TARGET_P99_MS else 'NOT met'}; "
            f"model / fallback p99: {model_p99 / statistics.median(p99s['fallback']):.2f}, "
            f"model / {FLOOR} p99: {model_p99 / statistics.median(p99s[FLOOR]):.2f}"
        )
    finally:
        if floor is not None:
            floor.stop()
        for node in nodes.values():
            leftovers = node.daemon.cleanup()
            if leftovers:
                print(f"score_latency: groups left behind: {leftovers}", file=sys.stderr)
    return 0


def handler_buckets(port: int) -> dict[str, float]:
    """ScorePlacement's cumulative bucket counts (seconds) of the daemon's histogram."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if (
            line.startswith("agentd_api_request_duration_seconds_bucket")
            and "ScorePlacement" in line
            and 'transport="tcp"' in line
        ):
            out[line.split('le="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return out


def native_round(binary: Path, node: Any, request: Any, seconds: float, out: Path) -> list[float]:
    """Latencies (ms) of the native client, one call in flight on one connection."""
    import native_client

    out.mkdir(exist_ok=True)
    process = native_client.start(
        binary,
        node.address,
        node.certs,
        "kube",
        "/agentd.v1.NodeService/ScorePlacement",
        request.SerializeToString(),
        1,
        1,
        time.time() + 0.2,
        seconds,
        out,
    )
    result = native_client.collect(process, out, timeout=seconds + 30)
    assert result.errors == 0 and result.latencies, "native client: errors or no calls"
    return result.latencies


FLOOR = "floor"


@dataclass
class Target:
    """Where a client connects: a daemon (NodeDaemon) or the floor server."""

    address: str
    certs: Path

    def channel(self) -> Any:
        from agentd.sdk.node import tls_channel

        certs = self.certs
        return tls_channel(
            self.address, certs / "ca.pem", certs / "client-kube.pem", certs / "client-kube.key"
        )


class Floor:
    def __init__(self, certs: Path, response: bytes) -> None:
        import multiprocessing

        import grpc_floor
        from node_api_support import free_port

        context = multiprocessing.get_context("spawn")
        self.target = Target(f"127.0.0.1:{free_port()}", certs)
        self._stop = context.Event()
        ready = context.Event()
        self._process = context.Process(
            target=grpc_floor.serve,
            args=(self.target.address, str(certs), False, ready, self._stop, response),
            daemon=True,
        )
        self._process.start()
        if not ready.wait(30):
            self.stop()
            raise RuntimeError("the floor server did not start")

    def stop(self) -> None:
        self._stop.set()
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()


def answered(port: int) -> dict[str, float]:
    """agentd_api_score_cache_candidates_total by source."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("agentd_api_score_cache_candidates_total{"):
            out[line.split('source="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return out


def shares(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    calls = after.get("+Inf", 0.0) - before.get("+Inf", 0.0)
    if calls <= 0:
        return {}
    return {
        f"{float(le) * 1000:g}": (after[le] - before.get(le, 0.0)) / calls
        for le in ("0.001", "0.0025", "0.005")
        if le in after
    }


class RunqProbe:
    """The run-queue delay of whole processes (all their threads), from the eBPF
    histogram, while the rounds run."""

    def __init__(self, pids: dict[str, int]) -> None:
        from agentd.metrics.runqlat import RunqReader
        from agentd.tracking.ebpf import EbpfSource

        self.source = EbpfSource()
        self.source.start(lambda ev: None)
        self.reader = RunqReader(self.source)
        self.keys = {name: 80_000 + i for i, name in enumerate(pids)}
        for name, pid in pids.items():
            self.source.watch(pid, self.keys[name])
        self.reader.start()

    def report(self, calls: int) -> None:
        from agentd.metrics.runqlat import histogram_of, quantile

        self.reader.refresh()
        for name, key in self.keys.items():
            sample = self.reader.key_sample(key)
            hist = histogram_of(sample)
            waits = sample["rql_count"]
            print(
                f"run-queue waits of the {name}'s threads: {waits / calls:.1f} per call, "
                f"p50 {quantile(hist, 0.5) / 1e3:.0f} us, p99 {quantile(hist, 0.99) / 1e3:.0f} us,"
                f" {sample['rql_sum_ns'] / 1e6 / calls:.2f} ms per call in all"
            )
        self.reader.close()
        self.source.stop()


if __name__ == "__main__":
    sys.exit(main())
