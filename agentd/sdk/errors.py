"""Typed exceptions of the SDK, one per gRPC status an agent can act on."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

if TYPE_CHECKING:
    from agentd.sdk.client import ToolCallResult


class AgentdError(Exception):
    """Base of every SDK error; `code` is the gRPC status code when the daemon answered."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class DaemonUnavailable(AgentdError):
    """The daemon's socket cannot be reached (not running, wrong path, no permission)."""


class HostUnavailable(AgentdError):
    """The daemon answered but the host cannot do it now (e.g. cgroupfs unreachable)."""


class NotFound(AgentdError):
    pass


class PermissionDenied(AgentdError):
    pass


class AlreadyExists(AgentdError):
    pass


class InvalidArgument(AgentdError):
    """A request field was refused; `field` is its path, e.g. "intent.resources.memory_max"."""

    def __init__(self, message: str, code: grpc.StatusCode | None, field: str | None) -> None:
        super().__init__(message, code)
        self.field = field


class FailedPrecondition(AgentdError):
    pass


class ResourceExhausted(AgentdError):
    """A limit on what the caller may hold at once (e.g. open event streams)."""


class ToolCallTimeout(subprocess.TimeoutExpired, AgentdError):
    """The tool call ran past its timeout; every process of it was killed.

    `result` holds what it used and the output captured so far.
    """

    def __init__(self, result: ToolCallResult, timeout: float) -> None:
        subprocess.TimeoutExpired.__init__(
            self, result.args, timeout, output=result.stdout, stderr=result.stderr
        )
        AgentdError.__init__(self, f"tool call {result.tool_call_id} timed out after {timeout}s")
        self.result = result

    def __str__(self) -> str:
        return AgentdError.__str__(self)


class ToolCallFailed(subprocess.CalledProcessError, AgentdError):
    """Raised by run(check=True) for a non-zero exit, like subprocess.CalledProcessError."""

    def __init__(self, result: ToolCallResult) -> None:
        subprocess.CalledProcessError.__init__(
            self, result.returncode, result.args, result.stdout, result.stderr
        )
        AgentdError.__init__(self, f"tool call {result.tool_call_id} exited {result.returncode}")
        self.result = result

    def __str__(self) -> str:
        return subprocess.CalledProcessError.__str__(self)


_BY_CODE: dict[grpc.StatusCode, type[AgentdError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: DaemonUnavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def from_rpc_error(error: grpc.RpcError) -> AgentdError:
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
    message: str = error.details() or code.name  # type: ignore[attr-defined]
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field = None
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        for detail in status.details if status else []:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad) and bad.field_violations:
                field = bad.field_violations[0].field
        return InvalidArgument(message, code, field)
    if code == grpc.StatusCode.UNAVAILABLE:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        for detail in status.details if status else []:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.reason == "HOST_UNAVAILABLE":
                return HostUnavailable(message, code)
    return _BY_CODE.get(code, AgentdError)(message, code)
