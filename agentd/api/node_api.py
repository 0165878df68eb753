"""Builds NodeService and its parts from the configuration, for the daemon: one
call to construct, one per second of housekeeping, one to stop."""

from __future__ import annotations

import socket
from pathlib import Path

import structlog
from grpc_health.v1 import health

from agentd.api.audit import AuditLog
from agentd.api.auth import Authenticator
from agentd.api.node_sampler import NodeSampler
from agentd.api.node_service import NodeService, WatchLimits
from agentd.api.peercred import TokenRegistry
from agentd.api.ratelimit import RateLimiter
from agentd.api.tcp_server import TcpServer
from agentd.config import Config
from agentd.control import Control
from agentd.manager import Manager, NodeLimits
from agentd.reservations import Reservations
from agentd.scoring import Capacity, Predictor

log = structlog.get_logger("agentd.api.node")


def _pid_capacity() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return 32768  # the kernel's default pid_max


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

    def start_tcp(self, health_servicer: health.HealthServicer) -> None:
        """The TCP listener when configured; an unusable one (port taken, unreadable
        certificate) stops the start: a scheduler would otherwise see a node that is
        silently missing."""
        api = self.cfg.api
        if not api.tcp_listen:
            return
        assert api.tls_cert and api.tls_key and api.tls_client_ca  # config.py checks
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

    def housekeeping(self) -> None:
        self.sampler.sample()
        for reservation in self.reservations.expire():
            log.info("reservation.expired", id=reservation.id, owner=reservation.owner)

    def stop(self) -> None:
        self.service.stopping.set()
        if self.tcp is not None:
            self.tcp.stop()
        self.audit.close()
