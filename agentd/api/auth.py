"""Who is calling NodeService, and what that caller's role may do.

Two transports, one Principal:
- the unix socket: the peer credentials the kernel gave for the caller's token
  (peercred.py). uid 0 is a scheduler; any other uid is an agent that sees and
  controls only its own sessions.
- TCP with mutual TLS: the client certificate grpc has already verified against
  the configured CA. Its subject's OU is the role (`scheduler` or `observer`),
  its CN the name used in the audit log and for rate limits.

Roles per method (the proto's comments say the same):
  GetNodeState, ScorePlacement, WatchNodeEvents   scheduler, observer, agent (own sessions)
  Throttle, Freeze, Resume, Evict                 scheduler, agent (own sessions)
  Admit, ReleaseReservation                       scheduler
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from agentd.api.peercred import TokenRegistry
from agentd.errors import RoleDeniedError, UnauthenticatedError
from agentd.manager import Caller


class Role(enum.Enum):
    SCHEDULER = "scheduler"
    OBSERVER = "observer"
    AGENT = "agent"


READ_METHODS = frozenset({"GetNodeState", "ScorePlacement", "WatchNodeEvents"})
CONTROL_METHODS = frozenset({"Throttle", "Freeze", "Resume", "Evict"})
ADMISSION_METHODS = frozenset({"Admit", "ReleaseReservation"})

ALLOWED: dict[Role, frozenset[str]] = {
    Role.SCHEDULER: READ_METHODS | CONTROL_METHODS | ADMISSION_METHODS,
    Role.OBSERVER: READ_METHODS,
    # Control only over its own sessions: the manager's ownership checks apply.
    Role.AGENT: READ_METHODS | CONTROL_METHODS,
}

# Remote principals see every session: the manager is asked as root on their behalf.
_NODE_WIDE = Caller(uid=0, gid=0, pid=0)


@dataclass(frozen=True)
class Principal:
    name: str  # "uid:1000" (unix) or the certificate's CN (tcp)
    role: Role
    transport: str  # "unix" or "tcp"
    caller: Caller  # what the manager's ownership checks see

    @property
    def uid(self) -> int | None:
        return self.caller.uid if self.transport == "unix" else None

    @property
    def key(self) -> str:
        """Identity for rate limits and watch quotas."""
        return f"{self.transport}:{self.name}"

    def may_see(self, owner_uid: int) -> bool:
        return self.role is not Role.AGENT or owner_uid == self.caller.uid

    def check_allowed(self, method: str) -> None:
        if method not in ALLOWED[self.role]:
            raise RoleDeniedError(
                f"role {self.role.value} ({self.name}) may not call {method}"
                + ("; it needs a scheduler certificate" if self.transport == "tcp" else ""),
                role=self.role.value,
                method=method,
            )

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "role": self.role.value, "transport": self.transport}


def local_principal(caller: Caller) -> Principal:
    role = Role.SCHEDULER if caller.is_root else Role.AGENT
    return Principal(name=f"uid:{caller.uid}", role=role, transport="unix", caller=caller)


@functools.lru_cache(maxsize=1024)
def certificate_principal(pem: bytes) -> Principal:
    """The principal a verified client certificate names (cached: parsing costs
    ~0.1 ms and every call of a connection presents the same certificate)."""
    cert = x509.load_pem_x509_certificate(pem)
    units = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(units) != 1 or units[0] not in (Role.SCHEDULER.value, Role.OBSERVER.value):
        raise UnauthenticatedError(
            f"the client certificate's subject must have one OU, scheduler or observer "
            f"(it has {units or 'none'})"
        )
    name = str(names[0]) if names else cert.subject.rfc4514_string()
    return Principal(name=name, role=Role(units[0]), transport="tcp", caller=_NODE_WIDE)


class Authenticator:
    """Turns a call's context into a Principal, or raises UnauthenticatedError."""

    def __init__(self, tokens: TokenRegistry) -> None:
        self.tokens = tokens

    def principal(
        self,
        peer: str,
        auth_context: dict[str, Sequence[bytes]],
        metadata: Sequence[tuple[str, str | bytes]],
    ) -> Principal:
        certs = auth_context.get("x509_pem_cert")
        if certs:
            return certificate_principal(bytes(certs[0]))
        if not peer.startswith("unix:"):
            # The TCP port requires a client certificate in the handshake; a call
            # without one never gets here, but no remote caller passes on a token.
            raise UnauthenticatedError("calls over TCP need a client certificate")
        caller = self.tokens.lookup(metadata)
        if caller is None:
            raise UnauthenticatedError(
                "no valid agentd token: connect to the .cred socket next to the gRPC "
                "socket first (the SDK does this for you)"
            )
        return local_principal(caller)
