#!/usr/bin/env python3
"""The floor under bench/api_load.py: what a bare grpc.aio server with a trivial
NodeService.ScorePlacement handler (a fixed response, no agentd code) reaches on this
machine over loopback mutual TLS, with 1..N server processes sharing the port
(SO_REUSEPORT), measured with the Python (grpc.aio) client and the native (C++)
client. No daemon, no root needed.

    cd /tmp && python /path/to/agentd/bench/grpc_floor.py --runs 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import native_client
from api_load import client_process, percentile, process_cpu_seconds

METHOD = "/agentd.v1.NodeService/ScorePlacement"


def serve(
    address: str, certs: str, reuseport: bool, ready: Any, stop: Any, response: bytes = b""
) -> None:
    """`response`: the serialized ScorePlacementResponse to answer (default: 4 scores)."""
    import asyncio

    import grpc

    from agentd.v1 import node_pb2 as pb
    from agentd.v1 import node_pb2_grpc

    fixed = pb.ScorePlacementResponse.FromString(response)
    if not response:
        for i in range(4):
            fixed.scores.add(candidate_id=f"c{i}", feasible=True, score=50)

    class Trivial(node_pb2_grpc.NodeServiceServicer):
        async def ScorePlacement(self, request: Any, context: Any) -> Any:
            return fixed

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", int(reuseport))])
        node_pb2_grpc.add_NodeServiceServicer_to_server(Trivial(), server)
        credentials = grpc.ssl_server_credentials(
            [(Path(f"{certs}/server.key").read_bytes(), Path(f"{certs}/server.pem").read_bytes())],
            root_certificates=Path(f"{certs}/ca.pem").read_bytes(),
            require_client_auth=True,
        )
        if server.add_secure_port(address, credentials) == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.2)
        await server.stop(0)

    asyncio.run(main())


def summary(
    latencies: list[float], errors: int, seconds: float, cpu: float, server_cpu: float
) -> dict[str, float]:
    calls = max(len(latencies), 1)
    return {
        "rate": len(latencies) / seconds,
        "p50": percentile(latencies, 50) if latencies else 0.0,
        "p99": percentile(latencies, 99) if latencies else 0.0,
        "errors": errors,
        "client_us": cpu / calls * 1e6,
        "server_us": server_cpu / calls * 1e6,
    }


def servers_cpu(procs: list[Any]) -> float:
    return sum(process_cpu_seconds(p.pid) for p in procs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--servers", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2])
    parser.add_argument("--in-flight", type=int, default=8, help="calls in flight in all")
    args = parser.parse_args()

    from node_api_support import free_port, make_certs

    from agentd.v1 import agent_pb2 as apb
    from agentd.v1 import node_pb2 as pb

    workdir = Path(tempfile.mkdtemp(prefix="agentd-bench-floor-"))
    certs = make_certs(workdir / "certs", [("scheduler", "bench")])
    request = pb.ScorePlacementRequest(
        candidates=[
            pb.Candidate(id=f"c{i}", intent=apb.Intent(resources=apb.Resources(cpu="0.5")))
            for i in range(4)
        ]
    ).SerializeToString()
    try:
        binary: Path | None = native_client.build()
    except native_client.NativeClientUnavailable as e:
        print(f"grpc_floor: no native client: {e}", file=sys.stderr)
        binary = None
    context = multiprocessing.get_context("spawn")
    print(
        f"bare grpc.aio server, trivial handler, mutual TLS; {args.in_flight} calls in flight; "
        f"{os.cpu_count()} CPUs; {args.runs} runs x {args.seconds:g} s"
    )
    for servers in args.servers:
        address = f"127.0.0.1:{free_port()}"
        stop = context.Event()
        readies = [context.Event() for _ in range(servers)]
        procs = [
            context.Process(target=serve, args=(address, str(certs), servers > 1, r, stop))
            for r in readies
        ]
        for p in procs:
            p.start()
        for r in readies:
            r.wait(30)
        rows: dict[str, list[dict[str, float]]] = {"python": [], "native": []}
        loads = []
        try:
            with context.Pool(2) as pool:
                for _ in range(args.runs):
                    start_at = time.time() + 2.0
                    jobs = [
                        pool.apply_async(
                            client_process,
                            (
                                address,
                                str(certs),
                                "score",
                                args.in_flight // 2,
                                start_at,
                                args.seconds,
                                2,
                            ),
                        )
                        for _ in range(2)
                    ]
                    time.sleep(max(start_at - time.time(), 0))
                    began = servers_cpu(procs)
                    time.sleep(args.seconds)
                    server_cpu = servers_cpu(procs) - began
                    results = [j.get(timeout=args.seconds + 60) for j in jobs]
                    rows["python"].append(
                        summary(
                            [x for lat, _, _ in results for x in lat],
                            sum(e for _, e, _ in results),
                            args.seconds,
                            sum(c for _, _, c in results),
                            server_cpu,
                        )
                    )
                    if binary is not None:
                        start_at = time.time() + 1.0
                        proc = native_client.start(
                            binary,
                            address,
                            certs,
                            "bench",
                            METHOD,
                            request,
                            args.in_flight,
                            args.in_flight,
                            start_at,
                            args.seconds,
                            workdir,
                        )
                        time.sleep(max(start_at - time.time(), 0))
                        began = servers_cpu(procs)
                        time.sleep(args.seconds)
                        server_cpu = servers_cpu(procs) - began
                        got = native_client.collect(proc, workdir, args.seconds + 60)
                        decoded = pb.ScorePlacementResponse.FromString(got.last_response)
                        assert len(decoded.scores) == 4, "unexpected response"
                        rows["native"].append(
                            summary(
                                got.latencies, got.errors, args.seconds, got.cpu_seconds, server_cpu
                            )
                        )
                    loads.append(os.getloadavg()[0])
        finally:
            stop.set()
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
        for client, runs in rows.items():
            if not runs:
                continue

            def med(key: str, runs: list[dict[str, float]] = runs) -> str:
                values = [r[key] for r in runs]
                return f"{statistics.median(values):.0f} [{min(values):.0f}-{max(values):.0f}]"

            print(
                f"{servers} server process(es), {client:6s} client: {med('rate')} calls/s, "
                f"p50 {statistics.median(r['p50'] for r in runs):.2f} ms, p99 "
                f"{statistics.median(r['p99'] for r in runs):.2f} ms, server CPU/call "
                f"{med('server_us')} us, client CPU/call {med('client_us')} us, errors "
                f"{sum(r['errors'] for r in runs):.0f} | load "
                f"{min(loads):.1f}-{max(loads):.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
