"""Domain errors. The API layer maps each to a gRPC status code with details,
so the policy code never imports grpc."""

from __future__ import annotations


class AgentdError(Exception):
    """Base class; `message` is what the caller sees."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(AgentdError):
    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} not found")
        self.kind = kind
        self.ident = ident


class InvalidArgumentError(AgentdError):
    """A request field is malformed or out of bounds; `field` is its path in the request."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class PermissionDeniedError(AgentdError):
    pass


class AlreadyExistsError(AgentdError):
    pass


class FailedPreconditionError(AgentdError):
    pass


class RetryLaterError(AgentdError):
    """Refused for now; the same request may succeed after `retry_after_seconds`
    (sent to gRPC clients as google.rpc.RetryInfo). Subclasses pick the code."""

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class TooSoonError(RetryLaterError, FailedPreconditionError):
    """A limit or state was changed too recently to change again (anti-flapping)."""


class UnavailableError(AgentdError):
    """The host cannot do it right now (e.g. cgroupfs unreachable)."""


class ResourceExhaustedError(AgentdError):
    """A per-caller or daemon-wide limit on what a request may hold was reached."""
