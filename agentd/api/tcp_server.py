"""The TCP listener: NodeService and health over mutual TLS, on a grpc.aio server.

Same NodeService object as the unix socket (server.py); only the transport, the
identity and the server model differ. grpc verifies the client certificate against
the configured CA during the handshake (require_client_auth), so a client without
one, or with one from another CA, never reaches a method. Roles come from the
certificate (auth.py).

Why asyncio here (docs/node-api.md has the figures): schedulers call ScorePlacement
thousands of times a second and hold an event stream per client. grpcio's
thread-pool server hands every call from its polling thread to a worker thread and
back, and holds a thread per stream; on two cores that, not the handler, bounded it
(~600 scores/s, p99 ~90 ms). The aio server runs the cheap calls on its event loop and
the streams as coroutines, in one thread of its own; the rest of the daemon stays
threaded (node_service_aio.py says which calls go to a small pool).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agentd.api.decode import AioDecodeInterceptor
from agentd.api.event_tail import TAIL_METHOD, serve_tail
from agentd.api.node_service import NodeService
from agentd.api.node_service_aio import AioNodeService
from agentd.observability.interceptor import AioApiMetricsInterceptor
from agentd.v1 import node_pb2, node_pb2_grpc

NODE_SERVICE_NAME = node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name

#: A ScorePlacement of 256 candidates is ~30 KB: anything near this is refused
#: (RESOURCE_EXHAUSTED) before it is parsed.
MAX_REQUEST_BYTES = 256 * 1024
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
#: Threads for the calls that leave the event loop (cgroupfs writes, audit, fresh
#: state).
OFFLOAD_WORKERS = 8
WATCH_POLL_SECONDS = 1.0
START_TIMEOUT_SECONDS = 30.0


class CodeOnlyContext:
    """Enough of a ServicerContext for HealthServicer.Check outside a call."""

    code: grpc.StatusCode | None = None

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code


class AioHealth(health_pb2_grpc.HealthServicer):
    """The daemon's HealthServicer (the unix server's, whose statuses the daemon sets)
    on the aio server: Check answers on the loop (a dict lookup under a lock); Watch
    looks every WATCH_POLL_SECONDS and sends each change (grpc_health's own Watch
    blocks a thread per stream)."""

    def __init__(self, servicer: health.HealthServicer) -> None:
        self.servicer = servicer

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        return self.servicer.Check(request, context)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            probe = CodeOnlyContext()
            status = self.servicer.Check(request, probe).status
            if probe.code is grpc.StatusCode.NOT_FOUND:
                status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            await asyncio.sleep(WATCH_POLL_SECONDS)


class _TailHandler(grpc.GenericRpcHandler):
    def __init__(self, service: NodeService, aio_service: AioNodeService) -> None:
        self.node_service = service
        self.aio_service = aio_service
        self.handler = grpc.unary_stream_rpc_method_handler(self._tail)

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method == TAIL_METHOD:  # type: ignore[attr-defined]
            return self.handler
        return None

    async def _tail(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        start = int.from_bytes(request, "little") if len(request) == 8 else None
        wakeup = self.aio_service.wakeup
        assert wakeup is not None
        async for frame in serve_tail(self.node_service, lambda: wakeup.current, start):
            yield frame


class TcpServer:
    """The TCP listener; or, with `forward_socket`, the unix socket on which the
    reader processes (reader.py) pass on the calls they do not answer, each with the
    certificate their TLS handshake verified (ForwardedContext)."""

    def __init__(
        self,
        address: str,
        cert: Path | None,
        key: Path | None,
        client_ca: Path | None,
        service: NodeService,
        health_servicer: health.HealthServicer,
        forward_socket: Path | None = None,
    ) -> None:
        self.address = f"unix:{forward_socket}" if forward_socket else address
        self.forward_socket = forward_socket
        self.service = service
        self.health = health_servicer
        self.credentials = None
        if forward_socket is None:
            assert cert and key and client_ca
            self.credentials = grpc.ssl_server_credentials(
                [(key.read_bytes(), cert.read_bytes())],
                root_certificates=client_ca.read_bytes(),
                require_client_auth=True,
            )
        self.executor = ThreadPoolExecutor(OFFLOAD_WORKERS, thread_name_prefix="agentd-tcp")
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: grpc.aio.Server | None = None
        self._aio_service = AioNodeService(
            service, self.executor, forwarded=forward_socket is not None
        )
        self._thread = threading.Thread(target=self._run, name="agentd-tcp-loop", daemon=True)
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    def start(self) -> None:
        """Listen and serve; raises OSError when the address cannot be used."""
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_SECONDS):
            raise RuntimeError(f"the TCP listener on {self.address} did not start")
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as e:  # reported by start()
            self._start_error = e
            self._started.set()
        finally:
            self._loop.close()

    def _build(self) -> grpc.aio.Server:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
            # Calls from the readers are timed there as "tcp" (the clients' view, the
            # hop included) and here as "readers" (the daemon's part).
            interceptors=[
                AioApiMetricsInterceptor("readers" if self.forward_socket else "tcp"),
                AioDecodeInterceptor(),
            ],
        )
        node_pb2_grpc.add_NodeServiceServicer_to_server(self._aio_service, server)
        if self.forward_socket is not None:
            # The readers' one event stream each (event_tail.py): only here, on the
            # root-only socket, never on a TCP listener.
            server.add_generic_rpc_handlers([_TailHandler(self.service, self._aio_service)])
        health_pb2_grpc.add_HealthServicer_to_server(AioHealth(self.health), server)
        reflection.enable_server_reflection(
            (NODE_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        return server

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = self._server = self._build()
        if self.credentials is None:
            self.port = server.add_insecure_port(self.address)
        else:
            self.port = server.add_secure_port(self.address, self.credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.address}")
        if self.forward_socket is not None:
            # Whoever can connect here is trusted to name the caller: root only (its
            # directory is 0700 too).
            self.forward_socket.chmod(0o600)
        self._aio_service.start()
        await server.start()
        self._started.set()
        await self._stop.wait()

    async def _shutdown(self, grace: float) -> None:
        assert self._server is not None
        self._aio_service.wake_all()  # the streams see `stopping` and end
        await self._server.stop(grace)
        self._aio_service.close()
        self._stop.set()

    def stop(self, grace: float = 5.0) -> None:
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(grace), self._loop)
        future.result(timeout=grace + 10)
        self._thread.join(timeout=10)
        self.executor.shutdown(wait=False, cancel_futures=True)
