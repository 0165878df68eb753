"""Request bytes that are not the method's message get INVALID_ARGUMENT, naming the
message expected, instead of grpc's own answer to a deserializer that raises
(INTERNAL on the sync server, UNKNOWN "Unexpected DecodeError" on grpc.aio).

The handler's deserializer is replaced by one that returns a marker instead of
raising, and its behavior by one that aborts on the marker: the one place that
sees both. As interceptors (the daemon's unix and TCP servers) and as a wrapper of
handlers built once (the reader processes' own).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc

from agentd.api.status import to_status
from agentd.errors import InvalidArgumentError


class _Undecodable:
    """What the tolerant deserializer returns for bytes it cannot parse."""


UNDECODABLE = _Undecodable()


def _message_name(deserialize: Callable[[bytes], Any]) -> str:
    # The generated handlers' deserializers are Message.FromString, bound to the class.
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "the method's request message")


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def tolerant(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # DecodeError, or anything a parser raises on garbage
            return UNDECODABLE

    return tolerant


def _refusal(deserialize: Callable[[bytes], Any]) -> grpc.Status:
    return to_status(InvalidArgumentError("request", f"is not a {_message_name(deserialize)}"))


def _decodes(handler: grpc.RpcMethodHandler | None) -> bool:
    """A handler whose one request message grpc deserializes (not raw bytes, not a
    client stream, which NodeService and AgentService do not have)."""
    return not (
        handler is None or handler.request_deserializer is None or handler.request_streaming
    )


def checked(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    """A sync server's handler that refuses undecodable requests precisely."""
    if not _decodes(handler):
        return handler
    assert handler is not None
    refusal, tolerant = (
        _refusal(handler.request_deserializer),
        _tolerant(handler.request_deserializer),
    )
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        def unary_checked(request: Any, context: grpc.ServicerContext) -> Any:
            if request is UNDECODABLE:
                context.abort_with_status(refusal)
            return unary(request, context)

        return handler._replace(request_deserializer=tolerant, unary_unary=unary_checked)
    if handler.unary_stream is not None:
        stream = handler.unary_stream

        def stream_checked(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            if request is UNDECODABLE:
                context.abort_with_status(refusal)
            yield from stream(request, context)

        return handler._replace(request_deserializer=tolerant, unary_stream=stream_checked)
    return handler


def checked_aio(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    """checked() for a grpc.aio server: coroutines and async generators."""
    if not _decodes(handler):
        return handler
    assert handler is not None
    refusal, tolerant = (
        _refusal(handler.request_deserializer),
        _tolerant(handler.request_deserializer),
    )
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if request is UNDECODABLE:
                await context.abort(refusal.code, refusal.details, refusal.trailing_metadata)
            return await unary(request, context)

        return handler._replace(request_deserializer=tolerant, unary_unary=unary_checked)
    if handler.unary_stream is not None:
        stream = handler.unary_stream

        async def stream_checked(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            if request is UNDECODABLE:
                await context.abort(refusal.code, refusal.details, refusal.trailing_metadata)
            async for response in stream(request, context):
                yield response

        return handler._replace(request_deserializer=tolerant, unary_stream=stream_checked)
    return handler


class _Wrapped:
    """The wrapped handler of each method, made once: grpc hands the interceptor the
    same handler object for a method on every call."""

    def __init__(self, wrap: Callable[[Any], Any]) -> None:
        self.wrap = wrap
        self.handlers: dict[str, tuple[Any, Any]] = {}

    def get(self, method: str, handler: Any) -> Any:
        if handler is None:
            return None  # unknown method: nothing to keep
        known = self.handlers.get(method)
        if known is None or known[0] is not handler:
            known = (handler, self.wrap(handler))
            self.handlers[method] = known
        return known[1]


class DecodeInterceptor(grpc.ServerInterceptor):
    def __init__(self) -> None:
        self._wrapped = _Wrapped(checked)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        return self._wrapped.get(method, continuation(handler_call_details))


class AioDecodeInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self._wrapped = _Wrapped(checked_aio)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        return self._wrapped.get(method, await continuation(handler_call_details))  # type: ignore[no-any-return]
