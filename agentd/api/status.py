"""Domain errors → gRPC status codes with google.rpc details, in one place."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from agentd.errors import (
    AgentdError,
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RetryLaterError,
    UnavailableError,
)

DOMAIN = "agentd.dev"

_CODES: list[tuple[type[AgentdError], int]] = [
    (NotFoundError, code_pb2.NOT_FOUND),
    (InvalidArgumentError, code_pb2.INVALID_ARGUMENT),
    (PermissionDeniedError, code_pb2.PERMISSION_DENIED),
    (AlreadyExistsError, code_pb2.ALREADY_EXISTS),
    (FailedPreconditionError, code_pb2.FAILED_PRECONDITION),
    (UnavailableError, code_pb2.UNAVAILABLE),
    (ResourceExhaustedError, code_pb2.RESOURCE_EXHAUSTED),
]


def _packed(detail: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)  # type: ignore[arg-type]
    return packed


def to_status(error: AgentdError) -> grpc.Status:
    code = next((c for kind, c in _CODES if isinstance(error, kind)), code_pb2.INTERNAL)
    details = []
    if isinstance(error, InvalidArgumentError):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=error.reason
        )
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[violation])))
    elif isinstance(error, UnavailableError):
        # Lets clients tell "the daemon answered: the host cannot do it" from
        # "the daemon is unreachable", which gRPC reports with the same code.
        details.append(
            _packed(error_details_pb2.ErrorInfo(reason="HOST_UNAVAILABLE", domain=DOMAIN))
        )
    elif isinstance(error, NotFoundError):
        details.append(
            _packed(
                error_details_pb2.ResourceInfo(resource_type=error.kind, resource_name=error.ident)
            )
        )
    if isinstance(error, RetryLaterError):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(int(error.retry_after_seconds * 1e9))
        details.append(_packed(retry))
    return rpc_status.to_status(
        status_pb2.Status(code=code, message=error.message, details=details)
    )


def unauthenticated(message: str) -> grpc.Status:
    return rpc_status.to_status(status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message=message))


def internal(message: str) -> grpc.Status:
    return rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message=message))
