"""NodeService for the grpc.aio server (the TCP listener, tcp_server.py).

The same NodeService object answers; this adapter only decides where each call runs:
- reads that touch nothing slow (ScorePlacement of up to INLINE_CANDIDATES: the
  periodic sample, the session table, one model call; GetNodeState while the node
  has at most INLINE_SESSIONS sessions) run inline on the event loop: no thread
  hand-off, which is most of what a call costs in the thread-pool server;
- calls that write cgroupfs, take the control locks or write the audit log
  (Throttle, Freeze, Resume, Evict, Admit, ReleaseReservation), bigger scorings and
  GetNodeState of a busy node (cgroupfs reads per session) run in a small thread
  pool, so a slow cgroupfs never stalls the loop and its other callers. The inline
  calls read the session table under the manager's lock, which a session's creation
  holds for its cgroup mkdir and state write (milliseconds): the loop waits that long
  at most;
- event streams are coroutines, not a thread each: they sleep on an asyncio.Event
  that the bus sets (through call_soon_threadsafe) when something is published, and
  then read the bus's ring without waiting.

Identification, rate limits, roles, deadlines, audit and error statuses are
NodeService.serve's, shared with the unix-socket (thread-pool) server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from agentd.api.node_service import NodeService
from agentd.api.reader import FORWARDED_CERT, FORWARDED_PEER
from agentd.api.status import to_status
from agentd.errors import AgentdError
from agentd.events import Event, EventBus
from agentd.manager import Caller
from agentd.v1 import node_pb2 as pb
from agentd.v1 import node_pb2_grpc

#: ScorePlacement runs on the event loop (no file I/O, no lock held for long) up to
#: this many candidates; a bigger one (up to 256) goes to the pool, so that one large
#: model call does not hold up every other caller of the loop.
INLINE_CANDIDATES = 32
#: GetNodeState runs on the loop while the node has at most this many open sessions
#: (it reads each one's usage from cgroupfs: ~5 small reads a session); beyond, in the
#: pool. Measured under load 14-22: offloading every call cost ~0.75 ms more daemon
#: CPU per call than the thread-pool server (the hand-off), for no benefit with few
#: sessions.
INLINE_SESSIONS = 8
_NODE_WIDE = Caller(uid=0, gid=0, pid=0)


class BusWakeup:
    """Tells the event loop's streams that the bus has new events. Publishers run in
    daemon threads: each publish schedules at most one wake-up on the loop (coalesced
    while one is pending), which sets the current asyncio.Event and starts a new one.
    A stream takes `current` before it reads the bus, so an event published after
    its read always wakes it."""

    def __init__(self, bus: EventBus, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.current = asyncio.Event()
        self._pending = False
        # A subscription that accepts nothing: its filter is the publish hook.
        self._subscription = bus.subscribe(self._on_publish, maxsize=1)

    def _on_publish(self, event: Event) -> bool:
        if not self._pending:
            self._pending = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: stopping
                self._loop.call_soon_threadsafe(self.wake)
        return False

    def wake(self) -> None:
        self._pending = False
        woken, self.current = self.current, asyncio.Event()
        woken.set()

    def close(self) -> None:
        self._subscription.close()


class ForwardedContext:
    """A call a reader process passed on (reader.py), on the daemon's forward socket:
    the caller is the client certificate the reader's TLS handshake verified, sent as
    metadata. Only that socket (root-only, in a 0700 directory) wraps its calls in
    this; the same metadata on any other listener is ignored."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        self._metadata = dict(context.invocation_metadata() or ())

    def auth_context(self) -> dict[str, list[bytes]]:
        cert = self._metadata.get(FORWARDED_CERT)
        return {"x509_pem_cert": [cert]} if isinstance(cert, bytes) else {}

    def peer(self) -> str:
        return f"reader:{self._metadata.get(FORWARDED_PEER, '?')}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


async def _abort(context: grpc.aio.ServicerContext, status: grpc.Status) -> None:
    await context.abort(status.code, status.details, status.trailing_metadata)


def _unary(name: str) -> Callable[..., Any]:
    """The aio handler for NodeService's unary method `name`."""
    method = getattr(NodeService, name).__wrapped__

    def inline(service: NodeService, request: Any) -> bool:
        if name == "ScorePlacement":
            return len(request.candidates) <= INLINE_CANDIDATES
        if name == "GetNodeState":
            return len(service.manager.list_sessions(_NODE_WIDE)) <= INLINE_SESSIONS
        return False

    async def handler(self: AioNodeService, request: Any, context: grpc.aio.ServicerContext) -> Any:
        caller = self.caller_context(context)
        if inline(self.service, request):
            result, status = self.service.serve(method, request, caller)
        else:
            call = functools.partial(self.service.serve, method, request, caller)
            result, status = await asyncio.get_running_loop().run_in_executor(self.executor, call)
        if status is not None:
            await _abort(context, status)
        return result

    handler.__name__ = name
    return handler


class AioNodeService(node_pb2_grpc.NodeServiceServicer):
    def __init__(
        self, service: NodeService, executor: ThreadPoolExecutor, forwarded: bool = False
    ) -> None:
        self.service = service
        self.executor = executor
        self.forwarded = forwarded  # the forward socket of the reader processes
        self.wakeup: BusWakeup | None = None  # made on the loop (start)

    def caller_context(self, context: grpc.aio.ServicerContext) -> Any:
        """What NodeService identifies the caller from."""
        return ForwardedContext(context) if self.forwarded else context

    def start(self) -> None:
        """On the event loop, before serving."""
        self.wakeup = BusWakeup(self.service.manager.bus, asyncio.get_running_loop())

    def close(self) -> None:
        if self.wakeup is not None:
            self.wakeup.close()

    def wake_all(self) -> None:
        """On the loop: every stream looks again (at shutdown, once `stopping` is
        set, so that they end at once instead of holding the server's grace)."""
        if self.wakeup is not None:
            self.wakeup.wake()

    GetNodeState = _unary("GetNodeState")
    ScorePlacement = _unary("ScorePlacement")
    Admit = _unary("Admit")
    ReleaseReservation = _unary("ReleaseReservation")
    Throttle = _unary("Throttle")
    Freeze = _unary("Freeze")
    Resume = _unary("Resume")
    Evict = _unary("Evict")

    async def WatchNodeEvents(
        self, request: pb.WatchNodeEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchNodeEventsResponse]:
        """As NodeService.WatchNodeEvents, as a coroutine: a cancelled call (the client
        went away) ends it at its next await."""
        service = self.service
        assert self.wakeup is not None, "start() was not called on the loop"
        try:
            # A session lookup and a token check: cheap, no I/O.
            watch = service.open_watch(request, self.caller_context(context))
        except AgentdError as e:
            await _abort(context, to_status(e))
            return
        try:
            while not service.stopping.is_set():
                published = self.wakeup.current
                batch = service.watch_batch(watch, timeout=0)
                for response in batch:
                    yield response
                if not batch:
                    # No timeout: asyncio.wait_for makes a task per wait, which was
                    # most of an idle stream's cost per event. Stopping wakes every
                    # stream (wake_all) and they see `stopping`.
                    await published.wait()
        finally:
            service.close_watch(watch)
