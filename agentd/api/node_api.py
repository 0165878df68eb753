"""Builds NodeService and its parts from the configuration, for the daemon: one
call to construct, one per second of housekeeping, one to stop."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import time
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2

from agentd.api import snapshot
from agentd.api.audit import AuditLog
from agentd.api.auth import Authenticator
from agentd.api.node_sampler import NodeSampler
from agentd.api.node_service import NodeService, WatchLimits
from agentd.api.peercred import TokenRegistry
from agentd.api.ratelimit import RateLimiter
from agentd.api.reader import ReaderSpec
from agentd.api.readers import ReaderPool, ReaderStartError
from agentd.api.reuseport import Balancer, BalanceUnavailable
from agentd.api.server import NODE_SERVICE_NAME
from agentd.api.server import SERVICE_NAME as AGENT_SERVICE_NAME
from agentd.api.shared_ratelimit import SharedRateLimiter
from agentd.api.snapshot import ChangeCounter, NodeSnapshot, SnapshotPublisher
from agentd.api.tcp_server import MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, CodeOnlyContext, TcpServer
from agentd.config import Config
from agentd.control import Control
from agentd.manager import Manager, NodeLimits
from agentd.observability.interceptor import API_METRICS
from agentd.predictor import model_path
from agentd.reservations import Reservations
from agentd.scoring import Capacity, Predictor

log = structlog.get_logger("agentd.api.node")

#: The services whose health a reader answers from the snapshot (the ones the daemon
#: sets: the unix server's, server.py).
HEALTH_SERVICES = ("", AGENT_SERVICE_NAME, NODE_SERVICE_NAME)


def _pid_capacity() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return 32768  # the kernel's default pid_max


def health_statuses(servicer: health.HealthServicer) -> dict[str, int]:
    """The status the daemon's HealthServicer has for each service it serves over
    TCP (asked through its public Check; the ones it does not know are left out)."""
    out = {}
    for name in HEALTH_SERVICES:
        probe = CodeOnlyContext()
        response = servicer.Check(health_pb2.HealthCheckRequest(service=name), probe)
        if probe.code is not grpc.StatusCode.NOT_FOUND:
            out[name] = response.status
    return out


def _publish_health_changes(servicer: health.HealthServicer, publisher: SnapshotPublisher) -> None:
    """Every status the daemon sets (SERVING once its socket serves, NOT_SERVING at
    shutdown) makes the readers wait for the snapshot that has it, as a session
    opened does: they answer health checks from snapshots (reader_health.py).
    HealthServicer.enter_graceful_shutdown goes through `set` too."""
    set_status = servicer.set

    def set_and_publish(service: str, status: int) -> None:
        set_status(service, status)
        publisher.changed()

    servicer.set = set_and_publish  # type: ignore[method-assign]


def build_snapshot(
    service: NodeService, generation: int, health_servicer: health.HealthServicer | None = None
) -> NodeSnapshot:
    """What the reader processes answer from, as the daemon sees it now."""
    state = service.node_state()  # first: its resume token precedes what it shows
    room, stall = service.scoring_inputs()
    window = getattr(service.predictor, "window", None)  # PlacementPredictor's
    return NodeSnapshot(
        state=state.SerializeToString(),
        room=room,
        stall_percent=stall,
        capacity=service.capacity,
        window=window().as_dict() if window is not None else {},
        published_at=time.time(),
        generation=generation,
        health=health_statuses(health_servicer) if health_servicer is not None else {},
    )


class NodeApi:
    def __init__(
        self,
        cfg: Config,
        manager: Manager,
        node: NodeLimits,
        tokens: TokenRegistry,
        predictor: Predictor | None = None,
        control: Control | None = None,
    ) -> None:
        self.cfg = cfg
        # The daemon passes its one Control, shared with the pressure policy: one writer
        # of these knobs and one anti-flapping clock.
        self.control = control if control is not None else Control(manager)
        self.reservations = Reservations()
        self.sampler = NodeSampler(manager.backend)
        self.sampler.sample()
        self.audit = AuditLog(cfg.api.audit_log or cfg.daemon.state_dir / "audit.log")
        self.service = NodeService(
            manager,
            self.control,
            self.reservations,
            self.sampler,
            Authenticator(tokens),
            RateLimiter(cfg.api.rate_limit, cfg.api.rate_burst),
            self.audit,
            node_name=socket.gethostname(),
            capacity=Capacity(memory=node.allocatable_memory, cpus=node.cpus, pids=_pid_capacity()),
            predictor=predictor,
            watch_limits=WatchLimits(tcp=cfg.api.max_watchers),
        )
        self.tcp: TcpServer | None = None
        self.readers: ReaderPool | None = None
        self.balancer: Balancer | None = None
        self.publisher: SnapshotPublisher | None = None
        self.snapshots = Path(cfg.daemon.state_dir) / "api-readers"

    def start_tcp(self, health_servicer: health.HealthServicer) -> None:
        """The TCP listener when configured; an unusable one (port taken, unreadable
        certificate) stops the start: a scheduler would otherwise see a node that is
        silently missing."""
        api = self.cfg.api
        if not api.tcp_listen:
            return
        assert api.tls_cert and api.tls_key and api.tls_client_ca  # config.py checks
        if api.readers > 0:
            self._start_readers(health_servicer)
            return
        self.tcp = TcpServer(
            api.tcp_listen,
            api.tls_cert,
            api.tls_key,
            api.tls_client_ca,
            self.service,
            health_servicer,
        )
        self.tcp.start()
        log.info("api.tcp_listening", address=api.tcp_listen, port=self.tcp.port)

    def _start_readers(self, health_servicer: health.HealthServicer) -> None:
        """`[api] readers` processes on the TCP port (docs/node-api.md): the snapshot
        they answer reads from, the forward socket they pass the rest to, then them."""
        api = self.cfg.api
        assert api.tls_cert and api.tls_key and api.tls_client_ca
        directory = Path(self.cfg.daemon.state_dir) / "api-readers"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)  # it holds the socket that is trusted to name callers
        service = self.service
        # One bucket per caller across the daemon and the readers.
        buckets = directory / "ratelimit.buckets"
        snapshot.remove(buckets)  # a previous run's
        service.limiter = SharedRateLimiter(buckets, api.rate_limit, api.rate_burst)
        self.snapshots = snapshot.snapshot_directory(directory)
        self.publisher = SnapshotPublisher(
            self.snapshots / "node.snapshot",
            ChangeCounter(self.snapshots / "generation", writer=True),
            lambda generation: build_snapshot(service, generation, health_servicer),
            service.manager.bus,
        )
        self.publisher.start()
        _publish_health_changes(health_servicer, self.publisher)
        service.after_change = self.publisher.publish
        service.events_visible = self.publisher.visible_seq
        self.reservations.on_change = self.publisher.changed
        metrics = self.snapshots / "metrics"
        shutil.rmtree(metrics, ignore_errors=True)  # a previous run's (no tmpfs: kept)
        metrics.mkdir(mode=0o700)
        API_METRICS.readers_dir = metrics
        forward = directory / "forward.sock"
        snapshot.remove(forward)  # a previous run's
        self.tcp = TcpServer("", None, None, None, service, health_servicer, forward_socket=forward)
        self.tcp.start()
        spec = functools.partial(
            ReaderSpec,
            address=api.tcp_listen,
            tls_cert=str(api.tls_cert),
            tls_key=str(api.tls_key),
            tls_client_ca=str(api.tls_client_ca),
            snapshot=str(self.publisher.path),
            generation=str(self.snapshots / "generation"),
            forward_socket=str(forward),
            rate_limit=api.rate_limit,
            rate_burst=api.rate_burst,
            rate_buckets=str(buckets),
            max_request_bytes=MAX_REQUEST_BYTES,
            max_response_bytes=MAX_RESPONSE_BYTES,
            model=str(model_path(self.cfg)),
            daemon_pid=os.getpid(),
            log_format=self.cfg.daemon.log_format,
            log_level=self.cfg.daemon.log_level,
            max_watchers=api.max_watchers,
            event_history=api.event_history,
        )
        self.balancer = self._balancer(api.readers)
        inherited = self.balancer.fds if self.balancer is not None else ()
        fds = inherited or (-1, -1, -1)
        self.readers = ReaderPool(
            api.readers,
            lambda ready, slot: spec(
                ready_fd=ready,
                slot=slot,
                balance_program_fd=fds[0],
                balance_sockets_fd=fds[1],
                balance_streaming_fd=fds[2],
            ),
            inherited_fds=inherited,
            metrics_dir=str(metrics),
        )
        try:
            self.readers.start()
        except ReaderStartError as e:
            raise RuntimeError(str(e)) from None
        log.info("api.readers_listening", address=api.tcp_listen, pids=self.readers.pids)

    @staticmethod
    def _balancer(readers: int) -> Balancer | None:
        """The readers' even spreading of connections (reuseport.py), or None: the
        kernel's hash, said once in the log."""
        if readers < 2:
            return None
        try:
            balancer = Balancer.create(readers)
        except BalanceUnavailable as e:
            log.warning("api.readers_balance_unavailable", error=str(e), fallback="kernel hash")
            return None
        log.info(
            "api.readers_balanced", readers=readers, policy="in turn, readers without streams first"
        )
        return balancer

    def housekeeping(self) -> None:
        self.sampler.sample()
        for reservation in self.reservations.expire():
            log.info("reservation.expired", id=reservation.id, owner=reservation.owner)

    def stop(self) -> None:
        self.service.stopping.set()
        if self.readers is not None:
            self.readers.stop()
        if self.balancer is not None:
            self.balancer.close()
            self.balancer = None
        if self.tcp is not None:
            self.tcp.stop()
        if self.publisher is not None:
            self.publisher.stop()
            API_METRICS.readers_dir = None
            snapshot.remove_directory(self.snapshots)
        self.audit.close()
