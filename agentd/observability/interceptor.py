"""A gRPC server interceptor that times every call, per method and status code.

Reusable for any grpc.server of agentd (the unix socket, the TCP listener): pass
`ApiMetricsInterceptor("tcp")` in its `interceptors`. Labels stay bounded: the method
is one the server has a handler for (unknown methods get no handler and are not
counted), the code one of grpc's 17, the transport a name chosen in code.

The reader processes ([api] readers) time their calls with the same interceptor, in
prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by readers.py):
their values go to files, and `API_METRICS`, the daemon's collector of these
families, adds them to its own at every scrape (`merge_families`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

# Unary calls answer in ~0.2 ms (health) to a few ms (tool-call start); buckets span
# 100 us to 10 s so that both the fast path and a stuck cgroupfs are visible.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)

# Not in the default registry by themselves: API_METRICS exposes them, with the
# readers' values added.
API_LATENCY = Histogram(
    "agentd_api_request_duration_seconds",
    "Time to answer a unary gRPC call, by method and status code",
    ["transport", "method", "code"],
    buckets=LATENCY_BUCKETS,
    registry=None,
)
API_STREAMS_OPEN = Gauge(
    "agentd_api_streams_open",
    "Server-streaming gRPC calls in progress (watchers)",
    ["transport", "method"],
    registry=None,
    multiprocess_mode="livesum",  # a reader's files: the sum over the living ones
)
API_STREAMS = Counter(
    "agentd_api_streams_total",
    "Server-streaming gRPC calls that ended, by method and status code",
    ["transport", "method", "code"],
    registry=None,
)
_OWN = (API_LATENCY, API_STREAMS_OPEN, API_STREAMS)


def merge_families(own: Iterable[Metric], more: Iterable[Metric]) -> list[Metric]:
    """`own` with `more`'s samples of the same families added: a sample of the same
    name and labels is summed (counters, histogram buckets, sums and counts, live
    gauges; not a `_created` time), any other appended. Families `own` lacks are
    left out: only these metrics are merged, whatever else a reader's files hold."""
    merged = {family.name: family for family in own}
    for family in more:
        into = merged.get(family.name)
        if into is None:
            continue
        index = {(s.name, tuple(sorted(s.labels.items()))): n for n, s in enumerate(into.samples)}
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key in index:
                if sample.name.endswith("_created"):
                    continue  # a time, not a count: the daemon's stands
                at = index[key]
                into.samples[at] = into.samples[at]._replace(
                    value=into.samples[at].value + sample.value
                )
            else:
                index[key] = len(into.samples)
                into.samples.append(sample)
    return list(merged.values())


class ApiMetrics(Collector):
    """The API families in the default registry: the daemon's own values, plus, once
    `readers_dir` is set, those the reader processes wrote there (their calls on
    the TCP port; a dead reader's counts stay, its open streams go)."""

    def __init__(self) -> None:
        self.readers_dir: Path | None = None

    def describe(self) -> list[Metric]:
        return [family for metric in _OWN for family in metric.describe()]

    def collect(self) -> list[Metric]:
        own = [family for metric in _OWN for family in metric.collect()]
        directory = self.readers_dir
        if directory is None:
            return own
        files = [str(path) for path in directory.glob("*.db")]
        return merge_families(own, MultiProcessCollector.merge(files, accumulate=True))


API_METRICS = ApiMetrics()
REGISTRY.register(API_METRICS)


def _code_name(context: grpc.ServicerContext, failed: bool) -> str:
    # context.code() is what set_code/abort recorded; an exception that escaped
    # without either is reported by grpc as UNKNOWN.
    code = context.code()
    if code is None:
        return "UNKNOWN" if failed else "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class ApiMetricsInterceptor(grpc.ServerInterceptor):
    def __init__(self, transport: str) -> None:
        self.transport = transport

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._timed(method, handler.unary_unary))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self._timed(method, handler.stream_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._streamed(method, handler.unary_stream))
        if handler.stream_stream is not None:
            return handler._replace(stream_stream=self._streamed(method, handler.stream_stream))
        return handler

    def _timed(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def timed(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            failed = True
            try:
                response = behavior(request, context)
                failed = False
                return response
            finally:
                API_LATENCY.labels(self.transport, method, _code_name(context, failed)).observe(
                    time.perf_counter() - started
                )

        return timed

    def _streamed(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def streamed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            gauge = API_STREAMS_OPEN.labels(self.transport, method)
            gauge.inc()
            failed = True
            cancelled = False
            try:
                yield from behavior(request, context)
                failed = False
            except GeneratorExit:
                cancelled = True  # the client went away (or the server stops)
                raise
            finally:
                gauge.dec()
                code = "CANCELLED" if cancelled else _code_name(context, failed)
                API_STREAMS.labels(self.transport, method, code).inc()

        return streamed


def _aio_code_name(context: grpc.aio.ServicerContext, failed: bool) -> str:
    # The aio context reports the code as grpc's StatusCode, or as the core's integer
    # (an abort): both name the same 17 codes.
    code = context.code()
    if isinstance(code, int) and not isinstance(code, bool):
        code = next((c for c in grpc.StatusCode if c.value[0] == code), None)
    if code is None or code == grpc.StatusCode.OK:
        return "UNKNOWN" if failed else "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class AioApiMetricsInterceptor(grpc.aio.ServerInterceptor):
    """ApiMetricsInterceptor for a grpc.aio server (same metrics, same labels): its
    handlers are coroutines and async generators."""

    def __init__(self, transport: str) -> None:
        self.transport = transport

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # type: ignore[return-value]
        return self.wrap(handler_call_details.method, handler)  # type: ignore[attr-defined]

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler`, timed: for a server that looks its handlers up itself and can wrap
        each once (the readers), rather than intercept every call."""
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._timed(method, handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._streamed(method, handler.unary_stream))
        return handler  # NodeService and health have no client-streaming methods

    def _observe(self, method: str, context: Any, failed: bool, started: float) -> None:
        code = _aio_code_name(context, failed)
        API_LATENCY.labels(self.transport, method, code).observe(time.perf_counter() - started)

    def _timed(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                response = await behavior(request, context)
            except BaseException:  # an abort is an exception here: timed with its code
                self._observe(method, context, True, started)
                raise
            self._observe(method, context, False, started)
            return response

        return timed

    def _streamed(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def streamed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            API_STREAMS_OPEN.labels(self.transport, method).inc()
            code = "UNKNOWN"
            try:
                async for response in behavior(request, context):
                    yield response
                code = _aio_code_name(context, False)
            except (GeneratorExit, asyncio.CancelledError):
                code = "CANCELLED"  # the client went away (or the server stops)
                raise
            except BaseException:
                code = _aio_code_name(context, True)
                raise
            finally:
                API_STREAMS_OPEN.labels(self.transport, method).dec()
                API_STREAMS.labels(self.transport, method, code).inc()

        return streamed
