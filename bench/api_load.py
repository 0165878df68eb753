#!/usr/bin/env python3
"""NodeService under load on loopback TCP with mutual TLS: scheduler-style unary calls
(ScorePlacement, GetNodeState) from concurrent client processes while watchers hold
event streams, against a baseline measured in the same run: the gRPC health check
over the same TLS channels (what grpcio itself costs per call on this machine).

Per run, each workload runs for --seconds with --procs client processes of
--threads closed-loop threads each; throughput and p50/p99 latency are printed per
run, then the median and min-max over --runs. Meanwhile --watchers streams watch
every event (list-then-watch, GetNodeState's resume token) while a generator opens
and closes sessions; at the end each watcher must have received every generated
event, in order.

Needs root (the daemon creates cgroups); starts its own daemon and certificates and
removes them at the end:

    cd /tmp && sudo python /path/to/agentd/bench/api_load.py --runs 10
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

TARGET_CALLS_PER_SECOND = 2000
TARGET_P99_MS = 10.0


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# ---- client processes -------------------------------------------------------------------


def _request(workload: str) -> tuple[str, Any]:
    from grpc_health.v1 import health_pb2

    from agentd.v1 import agent_pb2 as apb
    from agentd.v1 import node_pb2 as pb

    if workload == "score":
        candidates = [
            pb.Candidate(
                id=f"c{i}",
                intent=apb.Intent(resources=apb.Resources(memory_max=f"{256 << i}M", cpu="0.5")),
            )
            for i in range(4)
        ]
        return "ScorePlacement", pb.ScorePlacementRequest(candidates=candidates)
    if workload == "state":
        return "GetNodeState", pb.GetNodeStateRequest()
    return "Check", health_pb2.HealthCheckRequest()


def client_process(
    address: str, certs: str, workload: str, threads: int, start_at: float, seconds: float
) -> tuple[list[float], int]:
    """Closed-loop calls from `threads` threads; latencies in ms and the error count."""
    from grpc_health.v1 import health_pb2_grpc

    from agentd.sdk.node import tls_channel
    from agentd.v1 import node_pb2_grpc

    channel = tls_channel(
        address, f"{certs}/ca.pem", f"{certs}/client-bench.pem", f"{certs}/client-bench.key"
    )
    stub = (
        health_pb2_grpc.HealthStub(channel)
        if workload == "health"
        else node_pb2_grpc.NodeServiceStub(channel)
    )
    method, request = _request(workload)
    call = getattr(stub, method)
    call(request, timeout=10)  # connect and handshake outside the measurement
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0]

    def loop(out: list[float]) -> None:
        while time.time() < start_at:
            time.sleep(0.001)
        end = start_at + seconds
        while True:
            began = time.perf_counter()
            if time.time() >= end:
                return
            try:
                call(request, timeout=5)
            except Exception:
                errors[0] += 1
                continue
            out.append((time.perf_counter() - began) * 1000)

    workers = [threading.Thread(target=loop, args=(out,)) for out in latencies]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    channel.close()
    return [x for out in latencies for x in out], errors[0]


# ---- watchers and the event generator ---------------------------------------------------


class Watchers:
    def __init__(self, address: str, certs: Path, count: int) -> None:
        from agentd.sdk.node import tls_channel
        from agentd.v1 import node_pb2 as pb
        from agentd.v1 import node_pb2_grpc

        self.received: list[list[tuple[int, str]]] = [[] for _ in range(count)]
        self.streams: list[Any] = []
        self.threads: list[threading.Thread] = []
        channel = tls_channel(
            address, certs / "ca.pem", certs / "client-watch.pem", certs / "client-watch.key"
        )
        stub = node_pb2_grpc.NodeServiceStub(channel)
        token = stub.GetNodeState(pb.GetNodeStateRequest(), timeout=10).resume_token
        for out in self.received:
            stream = stub.WatchNodeEvents(pb.WatchNodeEventsRequest(resume_token=token))
            self.streams.append(stream)
            thread = threading.Thread(target=self._read, args=(stream, out), daemon=True)
            thread.start()
            self.threads.append(thread)

    @staticmethod
    def _read(stream: Any, out: list[tuple[int, str]]) -> None:
        with contextlib.suppress(Exception):  # cancelled at the end
            for response in stream:
                out.append((response.event.kind, response.event.session_id))

    def stop(self) -> None:
        for stream in self.streams:
            stream.cancel()


def generate_events(socket: str, stop: threading.Event, generated: list[tuple[int, str]]) -> None:
    """Open and close sessions (two events each) at ~20 events/s until stopped."""
    from agentd.sdk import Client, HostUnavailable
    from agentd.v1 import node_pb2 as pb

    n = 0
    with Client(socket) as client:
        while not stop.wait(0.1):
            name = f"bench-{n}"
            session = client.session(name, memory="16M")
            for _ in range(20):
                try:
                    session.close()
                    break
                except HostUnavailable:
                    # A known race (manager.make_spares creating a spare group while
                    # the session's group is removed); the next close succeeds.
                    time.sleep(0.05)
            generated += [
                (pb.NODE_EVENT_KIND_SESSION_OPENED, name),
                (pb.NODE_EVENT_KIND_SESSION_CLOSED, name),
            ]
            n += 1


# ---- main -------------------------------------------------------------------------------


def run_workload(
    pool: Any, address: str, certs: Path, workload: str, args: argparse.Namespace
) -> dict[str, float]:
    start_at = time.time() + 2.0  # every process connected and waiting (busy host)
    jobs = [
        pool.apply_async(
            client_process,
            (address, str(certs), workload, args.threads, start_at, args.seconds),
        )
        for _ in range(args.procs)
    ]
    results = [job.get(timeout=args.seconds + 60) for job in jobs]
    latencies = [x for lat, _ in results for x in lat]
    errors = sum(e for _, e in results)
    return {
        "rate": len(latencies) / args.seconds,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=3.0, help="per workload and run")
    parser.add_argument("--procs", type=int, default=3, help="client processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per client process")
    parser.add_argument("--watchers", type=int, default=100)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("api_load: needs root (the daemon creates cgroups)", file=sys.stderr)
        return 2

    from node_api_support import node_daemon

    workdir = Path(tempfile.mkdtemp(prefix="agentd-bench-api-"))
    node = node_daemon(
        workdir,
        api=f"rate_limit = 0\nmax_watchers = {args.watchers + 8}",
        clients=[("scheduler", "bench"), ("observer", "watch")],
    )
    context = multiprocessing.get_context("spawn")
    results: dict[str, list[dict[str, float]]] = {"score": [], "state": [], "health": []}
    loads: list[tuple[float, float, float]] = []
    try:
        watchers = Watchers(node.address, node.certs, args.watchers)
        stop = threading.Event()
        generated: list[tuple[int, str]] = []
        generator = threading.Thread(
            target=generate_events, args=(node.daemon.socket, stop, generated), daemon=True
        )
        generator.start()
        print(
            f"{args.runs} runs x 3 workloads x {args.seconds:g} s; {args.procs} client "
            f"processes x {args.threads} threads; {args.watchers} watchers; "
            f"{os.cpu_count()} CPUs; events generated meanwhile at ~20/s"
        )
        with context.Pool(args.procs) as pool:
            for run in range(1, args.runs + 1):
                line = [f"run {run:2d}"]
                # Rotate the order so that no workload always runs first.
                order = ["score", "state", "health"]
                order = order[run % 3 :] + order[: run % 3]
                for workload in order:
                    results[workload].append(
                        run_workload(pool, node.address, node.certs, workload, args)
                    )
                for workload in ("score", "state", "health"):
                    r = results[workload][-1]
                    line.append(
                        f"{workload} {r['rate']:7.0f}/s p50 {r['p50']:5.2f} p99 "
                        f"{r['p99']:6.2f} ms"
                        + (f" ({r['errors']:.0f} errors)" if r["errors"] else "")
                    )
                loads.append(os.getloadavg())
                line.append(f"load {loads[-1][0]:.1f}")
                print(" | ".join(line), flush=True)
        stop.set()
        generator.join()
        time.sleep(2.0)  # the last events reach every watcher
        watchers.stop()
        complete = sum(1 for got in watchers.received if got[: len(generated)] == generated)
        print()
        print("median [min-max] over runs:")
        for workload in ("score", "state", "health"):
            rows = results[workload]
            for key, unit in (("rate", "calls/s"), ("p50", "ms"), ("p99", "ms")):
                values = [r[key] for r in rows]
                print(
                    f"  {workload:6s} {key:4s} {statistics.median(values):8.2f} "
                    f"[{min(values):.2f}-{max(values):.2f}] {unit}"
                )
        ratios = [
            s["rate"] / h["rate"] for s, h in zip(results["score"], results["health"], strict=True)
        ]
        print(
            f"  ScorePlacement throughput / health-check throughput: "
            f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"
        )
        print(
            f"  load average 1 min over runs: {min(load[0] for load in loads):.1f}-"
            f"{max(load[0] for load in loads):.1f} on {os.cpu_count()} CPUs"
        )
        print(
            f"  watchers: {complete}/{args.watchers} received all {len(generated)} "
            "generated events in order"
        )
        rate = statistics.median(r["rate"] for r in results["score"])
        p99 = statistics.median(r["p99"] for r in results["score"])
        met = rate >= TARGET_CALLS_PER_SECOND and p99 < TARGET_P99_MS
        print(
            f"target (>= {TARGET_CALLS_PER_SECOND} ScorePlacement/s with p99 < "
            f"{TARGET_P99_MS:g} ms; every watcher gets every event): "
            f"{'met' if met and complete == args.watchers else 'NOT met'} "
            f"(median {rate:.0f}/s, p99 {p99:.2f} ms)"
        )
    finally:
        leftovers = node.daemon.cleanup()
        if leftovers:
            print(f"api_load: groups left behind: {leftovers}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
