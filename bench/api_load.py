#!/usr/bin/env python3
"""NodeService under load on loopback TCP with mutual TLS: scheduler-style unary calls
(ScorePlacement, GetNodeState) from concurrent client processes while watchers hold
event streams, against a baseline measured in the same run: the gRPC health check
over the same TLS channels (what grpcio itself costs per call on this machine).

Per run, each workload runs for --seconds with --procs client processes of
--concurrency closed-loop calls in flight each (grpc.aio clients: the load generator
shares the two cores with the daemon, so it must cost little; each call is timed
end to end on its own); throughput and p50/p99 latency are printed per
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
import asyncio
import contextlib
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import native_client
import slow_calls

TARGET_CALLS_PER_SECOND = 2000
TARGET_P99_MS = 10.0
SCORED_CANDIDATES = 4
WORKLOADS = ("score", "state", "health")
#: Clients run by the native binary: `open` is it in an open loop at --open-rate.
NATIVE_CLIENTS = ("native", "open")
METHOD_PATHS = {
    "score": "/agentd.v1.NodeService/ScorePlacement",
    "state": "/agentd.v1.NodeService/GetNodeState",
    "health": "/grpc.health.v1.Health/Check",
}


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
            for i in range(SCORED_CANDIDATES)
        ]
        return "ScorePlacement", pb.ScorePlacementRequest(candidates=candidates)
    if workload == "state":
        return "GetNodeState", pb.GetNodeStateRequest()
    return "Check", health_pb2.HealthCheckRequest()


def valid(workload: str, response: Any) -> bool:
    """A response is counted only if it answers the request: a score per candidate,
    a state with a resume token, SERVING."""
    if workload == "score":
        return len(response.scores) == SCORED_CANDIDATES and all(
            s.candidate_id == f"c{i}" for i, s in enumerate(response.scores)
        )
    if workload == "state":
        return bool(response.resume_token) and response.state.capacity.cpus > 0
    return response.status == 1  # HealthCheckResponse.SERVING


def aio_channel(address: str, certs: str, client: str, connection: int = 0) -> Any:
    """A grpc.aio channel with the client certificate `client-<client>.pem` (the
    asyncio twin of agentd.sdk.node.tls_channel). Channels of different `connection`
    numbers do not share their HTTP/2 connection (SO_REUSEPORT listeners each get
    some)."""
    import grpc

    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(f"{certs}/ca.pem").read_bytes(),
        private_key=Path(f"{certs}/client-{client}.key").read_bytes(),
        certificate_chain=Path(f"{certs}/client-{client}.pem").read_bytes(),
    )
    options = [("grpc.use_local_subchannel_pool", 1), ("agentd.bench.connection", connection)]
    return grpc.aio.secure_channel(address, credentials, options=options)


def client_process(
    address: str,
    certs: str,
    workload: str,
    concurrency: int,
    start_at: float,
    seconds: float,
    connections: int = 1,
) -> tuple[list[float], int, float]:
    """Closed-loop calls from `concurrency` coroutines over `connections` grpc.aio
    channels (one event loop: a client costs the shared cores far less than a thread
    per call in flight); latencies in ms, each timed around its own call, the error
    count and the CPU seconds this process used meanwhile."""
    import asyncio

    return asyncio.run(
        _client(address, certs, workload, concurrency, start_at, seconds, connections)
    )


async def _client(
    address: str,
    certs: str,
    workload: str,
    concurrency: int,
    start_at: float,
    seconds: float,
    connections: int,
) -> tuple[list[float], int, float]:
    import asyncio

    from grpc_health.v1 import health_pb2_grpc

    from agentd.v1 import node_pb2_grpc

    channels = [aio_channel(address, certs, "bench", n) for n in range(connections)]
    method, request = _request(workload)
    calls = []
    for channel in channels:
        stub = (
            health_pb2_grpc.HealthStub(channel)
            if workload == "health"
            else node_pb2_grpc.NodeServiceStub(channel)
        )
        calls.append(getattr(stub, method))
        await calls[-1](request, timeout=10)  # connect and handshake outside the window
    latencies: list[float] = []
    errors = 0

    async def loop(call: Any) -> None:
        nonlocal errors
        await asyncio.sleep(max(start_at - time.time(), 0))
        end = start_at + seconds
        while True:
            began = time.perf_counter()
            if time.time() >= end:
                return
            try:
                response = await call(request, timeout=5)
            except Exception:  # a non-OK status
                errors += 1
                continue
            if not valid(workload, response):
                errors += 1
                continue
            latencies.append((time.perf_counter() - began) * 1000)

    await asyncio.sleep(max(start_at - time.time(), 0))
    cpu_began = time.process_time()
    await asyncio.gather(*(loop(calls[n % connections]) for n in range(concurrency)))
    cpu = time.process_time() - cpu_began
    for channel in channels:
        await channel.close()
    return latencies, errors, cpu


# ---- watchers and the event generator ---------------------------------------------------


class Watchers:
    """`count` event streams on one grpc.aio channel, read by coroutines on an event
    loop in a thread of this process, all from GetNodeState's resume token."""

    def __init__(self, address: str, certs: Path, count: int) -> None:
        self.received: list[list[tuple[int, str]]] = [[] for _ in range(count)]
        self.failures: dict[int, str] = {}  # none seen: the aio streams end quietly
        self.calls: list[Any] = []
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self._watch(address, certs),), daemon=True
        )
        self.thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the watchers did not start")

    async def _watch(self, address: str, certs: Path) -> None:
        from agentd.v1 import node_pb2 as pb
        from agentd.v1 import node_pb2_grpc

        channel = aio_channel(address, str(certs), "watch")
        stub = node_pb2_grpc.NodeServiceStub(channel)
        token = (await stub.GetNodeState(pb.GetNodeStateRequest(), timeout=10)).resume_token
        request = pb.WatchNodeEventsRequest(resume_token=token)
        self.calls = [stub.WatchNodeEvents(request) for _ in self.received]
        self._ready.set()
        await asyncio.gather(
            *(self._read(call, out) for call, out in zip(self.calls, self.received, strict=True))
        )
        await channel.close()

    @staticmethod
    async def _read(call: Any, out: list[tuple[int, str]]) -> None:
        with contextlib.suppress(Exception, asyncio.CancelledError):  # cancelled at the end
            async for response in call:
                out.append((response.event.kind, response.event.session_id))

    def stop(self) -> None:
        for call in self.calls:
            self.loop.call_soon_threadsafe(call.cancel)
        self.thread.join(timeout=30)

    def client_cpu_seconds(self) -> float:
        return 0.0  # a thread of this process: in its CPU

    def summary(self) -> str:
        return "in the bench process (grpc.aio)"


class NativeWatchers:
    """The same streams from the native watcher client (bench/native/watch_load.cc,
    one channel, one thread), a process of its own; `stop` decodes what each received."""

    def __init__(self, binary: Path, address: str, certs: Path, count: int, workdir: Path) -> None:
        from agentd.sdk.node import tls_channel
        from agentd.v1 import node_pb2 as pb
        from agentd.v1 import node_pb2_grpc

        with tls_channel(
            address, certs / "ca.pem", certs / "client-watch.pem", certs / "client-watch.key"
        ) as channel:
            stub = node_pb2_grpc.NodeServiceStub(channel)
            token = stub.GetNodeState(pb.GetNodeStateRequest(), timeout=10).resume_token
        self.client = native_client.WatchClient(
            binary,
            address,
            certs,
            "watch",
            "/agentd.v1.NodeService/WatchNodeEvents",
            pb.WatchNodeEventsRequest(resume_token=token).SerializeToString(),
            count,
            workdir,
        )
        self.received: list[list[tuple[int, str]]] = []
        self.failures: dict[int, str] = {}
        self.result: native_client.WatchResult | None = None

    def client_cpu_seconds(self) -> float:
        return process_cpu_seconds(self.client.pid)

    def stop(self) -> None:
        from agentd.v1 import node_pb2 as pb

        self.result = self.client.stop()
        self.failures = self.result.failures()
        decoded: dict[bytes, tuple[int, str]] = {}  # the streams get the same bytes
        for messages in self.result.messages:
            got = []
            for message in messages:
                if message not in decoded:
                    event = pb.WatchNodeEventsResponse.FromString(message).event
                    decoded[message] = (event.kind, event.session_id)
                got.append(decoded[message])
            self.received.append(got)

    def summary(self) -> str:
        assert self.result is not None
        received = sum(len(m) for m in self.result.messages)
        return (
            f"native client, {self.result.cpu_seconds:.2f} CPU s while watching, "
            f"{self.result.cpu_seconds / max(received, 1) * 1e6:.1f} us per message "
            f"received ({received})"
        )


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


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(pid: int) -> float:
    """The daemon's CPU and its reader processes' (its children)."""
    total = process_cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    total += process_cpu_seconds(int(child))
    return total


def background_cores(pid: int, seconds: float = 2.0) -> float:
    """The server's CPU use with no calls (the watchers' fan-out, the session churn,
    the snapshot publishing), in cores: subtracted from its CPU during a workload to
    get a call's own."""
    began = server_cpu_seconds(pid)
    time.sleep(seconds)
    return (server_cpu_seconds(pid) - began) / seconds


def run_workload(
    pool: Any,
    node: Any,
    workload: str,
    client: str,
    args: argparse.Namespace,
    background: float,
    native: Path | None,
    workdir: Path,
) -> dict[str, Any]:
    """One closed-loop window of `workload` from the Python clients (--procs processes
    x --concurrency in flight over --connections channels each) or the native client
    (one process, the same calls in flight and connections in all); `open`: the
    native client in an open loop at --open-rate."""
    start_at = time.time() + 2.0  # every process connected and waiting (busy host)
    in_flight, connections = args.procs * args.concurrency, args.procs * args.connections
    if client in NATIVE_CLIENTS:
        assert native is not None
        from agentd.v1 import node_pb2 as pb

        _, request = _request(workload)
        process = native_client.start(
            native,
            node.address,
            node.certs,
            "bench",
            METHOD_PATHS[workload],
            request.SerializeToString(),
            in_flight,
            connections,
            start_at,
            args.seconds,
            workdir,
            rate=args.open_rate if client == "open" else args.rate,
        )
    else:
        jobs = [
            pool.apply_async(
                client_process,
                (
                    node.address,
                    str(node.certs),
                    workload,
                    args.concurrency,
                    start_at,
                    args.seconds,
                    args.connections,
                ),
            )
            for _ in range(args.procs)
        ]
    # The server's CPU over the same window: what a call costs the server, whatever
    # share of the cores the other tenants of this machine leave it.
    daemon = node.daemon.process.pid
    time.sleep(max(start_at - time.time(), 0))
    server_began = server_cpu_seconds(daemon)
    time.sleep(max(start_at + args.seconds - time.time(), 0))
    server_cpu = server_cpu_seconds(daemon) - server_began
    if client in NATIVE_CLIENTS:
        got = native_client.collect(process, workdir, args.seconds + 60)
        latencies, errors, client_cpu = got.latencies, got.errors, got.cpu_seconds
        slow = slow_calls.analyse(latencies, got.sent_ms, got.connections, TARGET_P99_MS)
        if workload == "state":
            response: Any = pb.GetNodeStateResponse.FromString(got.last_response)
        elif workload == "score":
            response = pb.ScorePlacementResponse.FromString(got.last_response)
        else:
            from grpc_health.v1 import health_pb2

            response = health_pb2.HealthCheckResponse.FromString(got.last_response)
        if latencies and not valid(workload, response):
            raise RuntimeError(f"the native client's {workload} response is wrong: {response}")
    else:
        results = [job.get(timeout=args.seconds + 60) for job in jobs]
        latencies = [x for lat, _, _ in results for x in lat]
        errors = sum(e for _, e, _ in results)
        client_cpu = sum(cpu for _, _, cpu in results)
        slow = None  # the Python clients keep no per-call record
    calls = max(len(latencies), 1)
    return {
        "rate": len(latencies) / args.seconds,
        "p50": percentile(latencies, 50) if latencies else 0.0,
        "p99": percentile(latencies, 99) if latencies else 0.0,
        "errors": errors,
        "server_us": max(server_cpu - background * args.seconds, 0.0) / calls * 1e6,
        "client_us": client_cpu / calls * 1e6,
        "slow": slow,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=3.0, help="per workload and run")
    parser.add_argument("--procs", type=int, default=2, help="Python client processes")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="calls in flight per client process"
    )
    parser.add_argument(
        "--connections", type=int, default=2, help="channels (connections) per client process"
    )
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument(
        "--readers",
        type=int,
        default=3,
        help="[api] readers: reader processes on the TCP port (default 3: the daemon's "
        '"auto" on two CPUs or more; 0 = the daemon alone)',
    )
    parser.add_argument(
        "--workloads",
        type=lambda text: text.split(","),
        default=list(WORKLOADS),
        help="comma-separated, of score,state,health (profiling one; the target needs all)",
    )
    parser.add_argument(
        "--clients",
        type=lambda text: text.split(","),
        default=["python", "native", "open"],
        help="python (grpc.aio), native (C++, built on demand; bench/native_client.py), "
        "open (the native client in an open loop at --open-rate, ScorePlacement only: "
        "the target's p99)",
    )
    parser.add_argument(
        "--open-rate",
        type=float,
        default=TARGET_CALLS_PER_SECOND,
        help="the `open` client's calls a second (default: the target's rate)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="native client only: an open loop of this many calls a second on a fixed "
        "schedule, each timed from when it was due (0: closed loop, --procs x "
        "--concurrency always in flight, the most the server does)",
    )
    parser.add_argument(
        "--watchers-client",
        choices=("python", "native"),
        help="the watchers' client: python (grpc.aio streams in a thread of this process) "
        "or native (C++, one process; bench/native/watch_load.cc); default native when "
        "it builds",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        help="the daemon's and readers' (info: the production default; debug records "
        "cost CPU on every call, grpc's own included)",
    )
    args = parser.parse_args()
    if args.rate > 0 and args.clients != ["native"]:  # `open` too: one rate is enough
        parser.error("--rate needs --clients native (the Python client is closed loop)")
    if os.geteuid() != 0:
        print("api_load: needs root (the daemon creates cgroups)", file=sys.stderr)
        return 2
    native: Path | None = None
    if set(NATIVE_CLIENTS) & set(args.clients):
        try:
            native = native_client.build()
        except native_client.NativeClientUnavailable as e:
            args.clients = [c for c in args.clients if c not in NATIVE_CLIENTS]
            if not args.clients:  # native only (as --rate needs): nothing left to run
                print(f"api_load: no native client ({e})", file=sys.stderr)
                return 2
            print(f"api_load: no native client ({e}); Python client only", file=sys.stderr)
    watch_binary: Path | None = None
    if args.watchers_client != "python":
        try:
            watch_binary = native_client.build("watch_load")
            args.watchers_client = "native"
        except native_client.NativeClientUnavailable as e:
            if args.watchers_client == "native":
                print(f"api_load: no native watcher client ({e})", file=sys.stderr)
                return 2
            print(f"api_load: no native watcher client ({e}); Python watchers", file=sys.stderr)
            args.watchers_client = "python"

    from node_api_support import node_daemon

    workdir = Path(tempfile.mkdtemp(prefix="agentd-bench-api-"))
    node = node_daemon(
        workdir,
        api=f"rate_limit = 0\nmax_watchers = {args.watchers + 8}\nreaders = {args.readers}",
        clients=[("scheduler", "bench"), ("observer", "watch")],
        log_level=args.log_level,
    )
    context = multiprocessing.get_context("spawn")
    keys = [
        (w, c)
        for w in WORKLOADS
        if w in args.workloads
        for c in args.clients
        if c != "open" or w == "score"
    ]
    results: dict[tuple[str, str], list[dict[str, float]]] = {key: [] for key in keys}
    loads: list[tuple[float, float, float]] = []
    background: list[float] = []  # server cores used with no calls, per run
    # The bench process's and the watcher client's cores over each run: the load
    # generator's own cost (besides the unary clients), on the cores the server uses.
    client_side: list[tuple[float, float]] = []
    try:
        watchers: Watchers | NativeWatchers
        if watch_binary is not None:
            watchers = NativeWatchers(
                watch_binary, node.address, node.certs, args.watchers, workdir
            )
        else:
            watchers = Watchers(node.address, node.certs, args.watchers)
        stop = threading.Event()
        generated: list[tuple[int, str]] = []
        generator = threading.Thread(
            target=generate_events, args=(node.daemon.socket, stop, generated), daemon=True
        )
        generator.start()
        print(
            f"{args.runs} runs x {len(keys)} workloads x {args.seconds:g} s; "
            + (
                f"open loop at {args.rate:g} calls/s (timed from when due)"
                if args.rate > 0
                else f"{args.procs * args.concurrency} calls in flight"
                + (
                    f" (open: {args.open_rate:g} calls/s, timed from when due)"
                    if "open" in args.clients
                    else ""
                )
            )
            + " over "
            f"{args.procs * args.connections} connections (Python: {args.procs} processes; "
            f"native: one, C++); daemon + {args.readers} reader processes; {args.watchers} "
            f"{args.watchers_client} watchers; {os.cpu_count()} CPUs; events generated "
            "meanwhile at ~20/s; "
            f"log level {args.log_level}"
        )
        with context.Pool(args.procs) as pool:
            for run in range(1, args.runs + 1):
                line = [f"run {run:2d}"]
                run_began = (time.monotonic(), time.process_time(), watchers.client_cpu_seconds())
                background.append(background_cores(node.daemon.process.pid))
                # Rotate the order so that no workload always runs first.
                order = keys[run % len(keys) :] + keys[: run % len(keys)]
                for workload, client in order:
                    results[(workload, client)].append(
                        run_workload(
                            pool, node, workload, client, args, background[-1], native, workdir
                        )
                    )
                for key in keys:
                    r = results[key][-1]
                    line.append(
                        f"{key[0]}/{key[1]} {r['rate']:5.0f}/s p50 {r['p50']:5.2f} p99 "
                        f"{r['p99']:6.2f} ms cpu/call {r['server_us']:4.0f}+"
                        f"{r['client_us']:.0f} us"
                        + (f" ({r['errors']:.0f} errors)" if r["errors"] else "")
                        + (
                            f" slow {100 * r['slow'].slow / max(r['slow'].calls, 1):.1f}%"
                            f"/{r['slow'].bursts} bursts"
                            if r["slow"] is not None
                            else ""
                        )
                    )
                loads.append(os.getloadavg())
                wall = time.monotonic() - run_began[0]
                client_side.append(
                    (
                        (time.process_time() - run_began[1]) / wall,
                        (watchers.client_cpu_seconds() - run_began[2]) / wall,
                    )
                )
                line.append(
                    f"idle server {background[-1]:.2f} cores | bench {client_side[-1][0]:.2f}"
                    f"+watchers {client_side[-1][1]:.2f} cores | load {loads[-1][0]:.1f}"
                )
                print(" | ".join(line), flush=True)
        stop.set()
        generator.join()
        time.sleep(2.0)  # the last events reach every watcher
        watchers.stop()
        complete = sum(
            1
            for n, got in enumerate(watchers.received)
            if got[: len(generated)] == generated and n not in watchers.failures
        )
        print()
        print("median [min-max] over runs:")
        for key in keys:
            rows = results[key]
            for field, unit in (
                ("rate", "calls/s"),
                ("p50", "ms"),
                ("p99", "ms"),
                ("errors", "errors"),
                ("server_us", "us server CPU/call (daemon + readers)"),
                ("client_us", "us client CPU/call"),
            ):
                values = [r[field] for r in rows]
                print(
                    f"  {key[0]:6s} {key[1]:6s} {field:9s} {statistics.median(values):8.2f} "
                    f"[{min(values):.2f}-{max(values):.2f}] {unit}"
                )
        for key in keys:
            # The run with the median p99: where its slow calls were, and when.
            runs = sorted(results[key], key=lambda r: r["p99"])
            middle = runs[len(runs) // 2]
            if middle["slow"] is not None:
                print(
                    f"  {key[0]:6s} {key[1]:6s} slow calls (run with the median p99): "
                    f"{middle['slow'].summary()}"
                )
        for client in args.clients:
            if ("score", client) in results and ("health", client) in results:
                ratios = [
                    s["rate"] / h["rate"]
                    for s, h in zip(
                        results[("score", client)], results[("health", client)], strict=True
                    )
                    if h["rate"]
                ] or [0.0]
                print(
                    f"  ScorePlacement / health-check throughput ({client} client): "
                    f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"
                )
        print(
            f"  server CPU with no calls (watchers, session churn, snapshots): "
            f"{statistics.median(background):.2f} cores [{min(background):.2f}-"
            f"{max(background):.2f}] (subtracted from the server CPU per call)"
        )
        print(
            f"  load average 1 min over runs: {min(load[0] for load in loads):.1f}-"
            f"{max(load[0] for load in loads):.1f} on {os.cpu_count()} CPUs"
        )
        total_errors = sum(r["errors"] for rows in results.values() for r in rows)
        print(f"  errors (non-OK status or a wrong answer): {total_errors:.0f}")
        print(
            f"  watchers: {complete}/{args.watchers} received all {len(generated)} "
            "generated events in order"
            + "".join(f"; stream {n} ended: {status}" for n, status in watchers.failures.items())
        )
        bench_cores = [b for b, _ in client_side]
        watcher_cores = [w for _, w in client_side]
        together = [b + w for b, w in client_side]
        print(
            f"  load generator CPU besides the unary clients ({args.watchers_client} "
            f"watchers): {statistics.median(together):.3f} cores [{min(together):.3f}-"
            f"{max(together):.3f}] = bench process {statistics.median(bench_cores):.3f} + "
            f"watcher client {statistics.median(watcher_cores):.3f}; watchers "
            f"{watchers.summary()}"
        )
        for client in [c for c in args.clients if c != "open"]:
            rows = results.get(("score", client), [])
            rate = statistics.median([r["rate"] for r in rows] or [0.0])
            p99 = statistics.median([r["p99"] for r in rows] or [0.0])
            how = f"open loop at {args.rate:g}/s" if args.rate > 0 else "closed loop"
            open_rows = results.get(("score", "open"), []) if client == "native" else []
            if open_rows:
                # The closed loop says how many calls the node answers, but its p99
                # hides a stall (the clients wait it out with a few calls in
                # flight); the open loop keeps sending through it.
                p99 = statistics.median([r["p99"] for r in open_rows])
                how = f"rate closed loop, p99 open loop at {args.open_rate:g}/s"
            met = (
                rate >= TARGET_CALLS_PER_SECOND
                and p99 < TARGET_P99_MS
                and complete == args.watchers
                and total_errors == 0
            )
            print(
                f"target ({client} client, {how}; >= {TARGET_CALLS_PER_SECOND} "
                f"ScorePlacement/s with p99 < {TARGET_P99_MS:g} ms; every watcher gets "
                f"every event; no errors): {'met' if met else 'NOT met'} "
                f"(median {rate:.0f}/s, p99 {p99:.2f} ms)"
            )
    finally:
        leftovers = node.daemon.cleanup()
        if leftovers:
            print(f"api_load: groups left behind: {leftovers}", file=sys.stderr)
        # Certificates, requests, latencies and the watchers' dumps (MBs per run).
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
