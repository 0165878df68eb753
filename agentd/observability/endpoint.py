"""The Prometheus HTTP endpoint: serves the default registry (so metrics that other
modules define with prometheus_client appear too) plus agentd's scrape-time collector."""

from __future__ import annotations

import ipaddress
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import REGISTRY, start_http_server

from agentd.events import EventBus
from agentd.manager import Manager
from agentd.observability.address import split_listen
from agentd.observability.collector import NodeCollector
from agentd.observability.toolcalls import ToolCallCounter
from agentd.tracking import Tracker

log = structlog.get_logger("agentd.metrics")


class MetricsEndpoint:
    def __init__(
        self,
        listen: str,
        manager: Manager,
        tracker: Tracker | None,
        bus: EventBus,
        session_metrics: bool = True,
    ) -> None:
        self.host, self.port = split_listen(listen)
        self.collector = NodeCollector(manager, tracker, session_metrics)
        self.counter = ToolCallCounter(bus)
        self._server: WSGIServer | None = None

    def start(self) -> None:
        REGISTRY.register(self.collector)
        self.counter.start()
        self._server, _ = start_http_server(self.port, self.host, REGISTRY)
        self.port = self._server.server_port  # the real one when 0 was asked for
        if not ipaddress.ip_address(self.host).is_loopback:
            # Session ids and usage are visible to whoever reaches the port.
            log.warning("metrics.exposed", address=f"{self.host}:{self.port}")
        log.info("metrics.listening", address=f"{self.host}:{self.port}")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.counter.stop()
        REGISTRY.unregister(self.collector)
