"""The composition root: builds the parts, runs them, shuts them down.

Shutting down never touches tool calls: their groups and processes stay, and the
next start finds them again (Manager.recover). Only closing a session ends work.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import psutil
import structlog

from agentd import __version__, capabilities
from agentd.api.agent_service import AgentService
from agentd.api.node_api import NodeApi
from agentd.api.peercred import TokenRegistry
from agentd.api.server import UnixServer
from agentd.capabilities import ensure_tracefs
from agentd.cgroups.base import CgroupBackend, CgroupError, GroupLimits
from agentd.cgroups.detect import (
    CgroupLayout,
    choose_backend,
    detect_layout,
    is_delegated_service,
    own_cgroup_v2,
)
from agentd.cgroups.v2 import V2Backend
from agentd.cgroups.warmer import MigrationWarmer
from agentd.config import Config, ConfigError, GuardConfig, add_arguments, load_config
from agentd.control import Control
from agentd.enforcement.controller import start_pressure
from agentd.enforcement.guard import Guard, GuardSettings
from agentd.enforcement.guard_policy import PolicySettings
from agentd.enforcement.maps import GuardMaps
from agentd.enforcement.priorities import PriorityTable
from agentd.events import Event, EventBus
from agentd.executors import Executors
from agentd.log import configure_logging
from agentd.manager import Caller, Manager, NodeLimits
from agentd.metrics import build_collector
from agentd.metrics.window import NodeWindow
from agentd.model import Resources, ToolCall
from agentd.observability.endpoint import MetricsEndpoint
from agentd.predictor import load_predictor
from agentd.predictor.placement import PlacementPredictor
from agentd.sdk.launcher import launcher_path
from agentd.sdnotify import Notifier
from agentd.store import Store
from agentd.tracking import Tracker
from agentd.tracking.ebpf import EbpfSource

log = structlog.get_logger("agentd")

HOUSEKEEPING_SECONDS = 1.0
ROOT = Caller(uid=0, gid=0, pid=os.getpid())


def select_backend(cfg: Config, layout: CgroupLayout) -> tuple[CgroupBackend, str]:
    """The backend and how its root was chosen.

    In order: a cgroup that systemd delegated for the workloads (the shipped units:
    agentd-workloads.service, see docs/systemd.md); the daemon's own service cgroup
    when it runs with Delegate=yes on cgroup v2 (it moves itself into a leaf first;
    safe across restarts only with systemd >= 254's DelegateSubgroup=); otherwise a
    top group named cfg.cgroup.root under the mount(s).
    """
    if cfg.cgroup.delegated:
        if layout.mode != "v2" or not layout.v2_mount:
            raise CgroupError(
                f"[cgroup] delegated = {cfg.cgroup.delegated!r} needs a pure cgroup v2 "
                f"hierarchy; this host is {layout.mode}"
            )
        backend = V2Backend(layout.v2_mount, cfg.cgroup.delegated)
        if not backend.exists(""):
            raise CgroupError(
                f"delegated cgroup {backend.root_path()} does not exist: is "
                "agentd-workloads.service running?"
            )
        return backend, "delegated by systemd (agentd-workloads.service)"
    if cfg.cgroup.backend in ("auto", "v2") and layout.mode == "v2" and layout.v2_mount:
        own = own_cgroup_v2()
        if os.environ.get("INVOCATION_ID") and is_delegated_service(own, layout.v2_mount):
            backend = V2Backend(layout.v2_mount, own or "")
            backend.move_self_to_leaf("daemon")
            return backend, "systemd delegation"
    return choose_backend(layout, cfg.cgroup.backend, cfg.cgroup.root), "configured name"


def start_tracker(prefer: str, process_usage: bool = True, guard: bool = False) -> Tracker | None:
    """The process-event source: a failure is logged and the daemon runs without
    process trees rather than not at all (its cgroups still hold every process)."""
    if prefer == "off":
        return None
    if prefer in ("auto", "ebpf"):
        error = ensure_tracefs()  # bcc reads tracepoint formats from tracefs
        if error:
            log.warning("tracking.tracefs_unavailable", error=error)
    started = time.monotonic()
    try:
        tracker = Tracker.start(prefer=prefer, process_usage=process_usage, guard=guard)
    except Exception as e:
        log.error("tracking.unavailable", prefer=prefer, error=str(e))
        return None
    log.info(
        "tracking.started",
        source=tracker.source_name,
        reason=tracker.reason,
        seconds=round(time.monotonic() - started, 3),
    )
    return tracker


def start_guard(
    cfg: GuardConfig,
    tracker: Tracker | None,
    backend: CgroupBackend,
    bus: EventBus,
    persist: Callable[[ToolCall], None] | None = None,
    allocatable_memory: int = 0,
) -> Guard | None:
    """The in-kernel guards, when enabled and the eBPF source carries them; otherwise
    the cgroup limits alone enforce (logged)."""
    if not cfg.enabled:
        return None
    source = tracker.source if tracker is not None else None
    if not isinstance(source, EbpfSource) or not source.guard:
        log.warning("guard.unavailable", reason="needs the eBPF tracking source")
        return None
    settings = GuardSettings(
        memory_action=cfg.memory_action,
        memory_headroom=cfg.memory_headroom,
        fork_rate=cfg.fork_rate,
        fork_burst=cfg.fork_burst,
        max_processes=cfg.max_processes,
        fork_refusals=cfg.fork_refusals,
        fork_action=cfg.fork_action,
        # The sessions group's limit is the allocatable: the node bound keeps the same
        # headroom below it as a session's guard budget below the session's limit.
        node_budget=int(allocatable_memory / (1 + cfg.memory_headroom)) if cfg.node_memory else 0,
        node_limit=allocatable_memory if cfg.node_memory else 0,
        node_turn=cfg.node_turn,
        policy=PolicySettings(grant_step=cfg.grant_step, wait_seconds=cfg.wait_seconds),
    )
    assert tracker is not None
    guard = Guard(settings, GuardMaps(source), tracker, backend, bus, persist)
    source.on_guard = guard.on_record
    guard.start()
    log.info("guard.started", **{k: v for k, v in vars(cfg).items() if k != "enabled"})
    return guard


def forward_process_events(
    tracker: Tracker, manager: Manager, bus: EventBus, stop: threading.Event
) -> None:
    """Process events from the tracker to watchers, tagged with session and owner."""
    subscription = tracker.subscribe()
    while not stop.is_set():
        try:
            tool_call_id, event = subscription.get(timeout=0.5)
        except queue.Empty:
            continue
        owner = manager.session_of(tool_call_id)
        if owner is None:
            continue
        session_id, owner_uid = owner
        bus.publish(
            Event(
                session_id=session_id,
                tool_call_id=tool_call_id,
                owner_uid=owner_uid,
                kind="process",
                payload=event,
            )
        )


def start_metrics(
    cfg: Config, manager: Manager, tracker: Tracker | None, bus: EventBus
) -> MetricsEndpoint | None:
    """The Prometheus endpoint, or None when off or its port is unusable: metrics are
    worth a log line, not the node's tool calls."""
    if not cfg.prometheus.listen:
        return None
    endpoint = MetricsEndpoint(
        cfg.prometheus.listen, manager, tracker, bus, cfg.prometheus.session_metrics
    )
    try:
        endpoint.start()
    except OSError as e:
        log.error("metrics.unavailable", listen=cfg.prometheus.listen, error=str(e))
        endpoint.stop()
        return None
    return endpoint


def node_limits(cfg: Config) -> NodeLimits:
    total = psutil.virtual_memory().total
    allocatable = max(total - cfg.node.reserved_memory, 0)
    cpus = float(os.cpu_count() or 1)
    return NodeLimits(
        allocatable_memory=allocatable,
        cpus=cpus,
        default_session=Resources(
            memory_max=min(cfg.defaults.session_memory, allocatable),
            cpu=cfg.defaults.session_cpu or cpus,
            pids_max=cfg.defaults.session_pids,
        ),
        tool_call_grace_seconds=cfg.defaults.tool_call_grace_seconds,
    )


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stop_requested = threading.Event()
        # Unset NOTIFY_SOCKET & co. so that no child of ours can talk to systemd for us.
        self.notifier = Notifier(unset_environment=True)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("daemon.signal", signal=signal.Signals(signum).name)
        self.stop_requested.set()

    def run(self) -> int:
        cfg = self.cfg
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        # Nothing traces yet, so bcc is only looked for, not imported (~60 MB of LLVM).
        caps = capabilities.detect_capabilities(import_bcc=False)
        layout = detect_layout()
        try:
            backend, how = select_backend(cfg, layout)
            backend.ensure_root()
        except CgroupError as e:
            log.error("daemon.cgroup_unusable", error=str(e), mode=layout.mode)
            return 1
        node = node_limits(cfg)
        try:
            # The sessions group bounds all sessions together: the node level of the hierarchy.
            backend.set_limits("sessions", GroupLimits(memory_max=node.allocatable_memory))
        except CgroupError as e:
            log.warning("daemon.root_limit_failed", error=str(e))
        log.info(
            "daemon.starting",
            version=__version__,
            cgroup_mode=layout.mode,
            cgroup_backend=backend.name,
            cgroup_root=backend.root_path(),
            root_chosen_by=how,
            controllers=backend.controllers(),
            capabilities=caps.summary(),
            allocatable_memory=node.allocatable_memory,
            cpus=node.cpus,
        )
        store = Store(cfg.daemon.state_dir)
        tracker = start_tracker(cfg.tracking.source, cfg.tracking.process_usage, cfg.guard.enabled)
        bus = EventBus(history=cfg.api.event_history)
        priorities = PriorityTable.from_config(cfg.priorities)
        manager = Manager(backend, store, node, tracker=tracker, bus=bus, priorities=priorities)
        manager.guard = start_guard(
            cfg.guard, tracker, backend, bus, store.save_tool_call, node.allocatable_memory
        )
        recovered = manager.recover()
        # Interference metrics and the dataset (docs/metrics.md); the predictor reads
        # the collector's node window (self.collector.node_window()).
        self.collector = build_collector(cfg, backend, bus, tracker)
        if self.collector is not None:
            self.collector.start()
        self.predictor = load_predictor(cfg)
        if tracker is not None:
            threading.Thread(
                target=forward_process_events,
                args=(tracker, manager, bus, self.stop_requested),
                name="agentd-events",
                daemon=True,
            ).start()
        warmer = MigrationWarmer(
            backend,
            launcher_path(),
            active=lambda: cfg.cgroup.fast_placement and manager.has_open_sessions(),
        )
        manager.warmer = warmer  # told of placements and of sessions opening or closing
        warmer.start()
        # The one writer of throttle / freeze / resume, shared by the scheduler API and
        # the pressure policy. Its floor between two changes of a knob is short enough
        # for a scheduler's freeze-then-resume; the policy paces itself more slowly
        # ([pressure] min_rewrite_interval_seconds).
        control = Control(manager)
        pressure = start_pressure(
            cfg.pressure, manager, control, priorities, node.allocatable_memory
        )
        groups = threading.Thread(
            target=self._group_worker, args=(manager,), name="agentd-groups", daemon=True
        )
        groups.start()
        tokens = TokenRegistry()
        node_info: dict[str, Any] = {
            "cgroup_mode": layout.mode,
            "capabilities": caps.summary(),
            "process_tracking": tracker.source_name if tracker else "off",
        }
        metrics = start_metrics(cfg, manager, tracker, bus)
        executors = Executors(manager, tracker)
        service = AgentService(manager, tokens, lambda: node_info, executors)
        window = self.collector.node_window if self.collector is not None else NodeWindow
        node_api = NodeApi(
            cfg,
            manager,
            node,
            tokens,
            predictor=PlacementPredictor(self.predictor, window),
            control=control,
        )
        node_api.service.on_session_evicted = executors.drop_session
        service.reservations = node_api.reservations
        socket_path = str(cfg.daemon.socket)
        server = UnixServer(
            socket_path,
            cfg.daemon.socket_mode,
            cfg.daemon.socket_gid,
            service,
            tokens,
            node_service=node_api.service,
        )
        try:
            # Before the socket serves: a node a scheduler cannot reach must not look up.
            node_api.start_tcp(server.health)
        except (OSError, RuntimeError) as e:
            log.error("daemon.tcp_unusable", address=cfg.api.tcp_listen, error=str(e))
            return 1
        if node_api.publisher is not None:
            service.before_reply = node_api.publisher.before_reply
        server.start()
        log.info("daemon.ready", socket=socket_path, **recovered)
        self.notifier.ready(
            f"serving on {socket_path}; {recovered['sessions']} sessions, "
            f"{recovered['tool_calls_running']} tool calls recovered"
        )
        try:
            self._housekeeping(manager, tokens, node_api.housekeeping)
        finally:
            self.notifier.stopping()
            service.stopping.set()
            node_api.stop()
            server.stop()
            warmer.stop()
            if pressure is not None:
                pressure.stop()
            executors.stop()
            if metrics is not None:
                metrics.stop()
            groups.join(2.0)
            # Each step on its own: one failing must not keep the others from running.
            for step in (
                self.collector.stop if self.collector is not None else lambda: None,
                manager.remove_pending,
                lambda: manager.save_trees(now=float("inf")),  # needs the tracker alive
                manager.guard.stop if manager.guard is not None else lambda: None,
                tracker.stop if tracker is not None else lambda: None,
            ):
                try:
                    step()
                except Exception:
                    log.exception("daemon.shutdown_step_failed")
            running = manager.tool_calls_running()
            store.close()
            log.info("daemon.stopped", tool_calls_left_running=running)
        return 0

    def _group_worker(self, manager: Manager) -> None:
        """Off the request path: remove ended tool calls' groups, keep spares ready."""
        while not self.stop_requested.is_set():
            manager.spares_wanted.wait(0.5)
            manager.spares_wanted.clear()
            try:
                manager.remove_pending()
                manager.make_spares()
                manager.save_trees()
            except Exception:
                log.exception("daemon.group_worker_failed")

    def _housekeeping(
        self, manager: Manager, tokens: TokenRegistry, node_api: Callable[[], None]
    ) -> None:
        """Until asked to stop: reap abandoned tool calls, forget dead callers' tokens,
        feed the watchdog (only from here, so a wedged loop gets the daemon restarted)."""
        interval = HOUSEKEEPING_SECONDS
        watchdog = self.notifier.watchdog_interval()
        if watchdog:
            interval = min(interval, watchdog / 2)
        last_status = ""
        while not self.stop_requested.wait(interval):
            started = time.monotonic()
            try:
                manager.reap()
                tokens.prune()
                node_api()  # node figures, expired reservations
                status = (
                    f"{len(manager.list_sessions(ROOT))} sessions, "
                    f"{manager.tool_calls_running()} tool calls running"
                )
                if status != last_status:
                    self.notifier.status(status)
                    last_status = status
            except Exception:
                log.exception("daemon.housekeeping_failed")
            self.notifier.watchdog()
            elapsed = time.monotonic() - started
            if elapsed > interval:
                log.warning("daemon.housekeeping_slow", seconds=round(elapsed, 3))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agentd", description="Per-node host agent for AI agent sandboxes."
    )
    parser.add_argument("--version", action="version", version=f"agentd {__version__}")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args)
    except ConfigError as e:
        print(f"agentd: {e}", file=sys.stderr)
        return 2
    configure_logging(cfg.daemon.log_format, cfg.daemon.log_level)
    return Daemon(cfg).run()


if __name__ == "__main__":
    sys.exit(main())
