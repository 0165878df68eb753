"""The agentd SDK: `Client`, sessions and tool calls that feel like `subprocess`."""

from agentd.sdk.client import (
    Client,
    Enforcement,
    Session,
    ToolCallProcess,
    ToolCallResult,
    Usage,
)
from agentd.sdk.errors import (
    AgentdError,
    AlreadyExists,
    DaemonUnavailable,
    FailedPrecondition,
    HostUnavailable,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ToolCallFailed,
    ToolCallTimeout,
)

__all__ = [
    "AgentdError",
    "AlreadyExists",
    "Client",
    "DaemonUnavailable",
    "Enforcement",
    "FailedPrecondition",
    "HostUnavailable",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "Session",
    "ToolCallFailed",
    "ToolCallProcess",
    "ToolCallResult",
    "ToolCallTimeout",
    "Usage",
]
