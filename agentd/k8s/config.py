"""The extender's configuration file (TOML).

    listen = "0.0.0.0:8888"      # where kube-scheduler reaches the extender
    timeout_seconds = 2.0        # deadline for all nodes' answers together
    max_priority = 10            # kube-scheduler's MaxExtenderPriority
    port = 7443                  # agentd's TCP port, for nodes not listed below

    [tls]                        # mutual TLS towards agentd (role: scheduler)
    ca = "/etc/agentd-extender/ca.pem"
    cert = "/etc/agentd-extender/scheduler.pem"
    key = "/etc/agentd-extender/scheduler-key.pem"
    server_name = ""             # name checked in agentd's certificate; "{node}" = node name

    [nodes]                      # node name -> agentd endpoint "HOST:PORT"
    "worker-1" = "10.0.0.11:7443"

A node not listed under [nodes] is reached at its InternalIP (from the Node object
kube-scheduler sends when nodeCacheCapable is false) and `port`; with neither, it
fails filtering with the reason.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentd.observability.address import split_listen


class ExtenderConfigError(ValueError):
    pass


@dataclass(frozen=True)
class TlsFiles:
    ca: bytes
    cert: bytes
    key: bytes
    server_name: str = ""


@dataclass(frozen=True)
class ExtenderConfig:
    listen: str
    timeout_seconds: float
    max_priority: int
    port: int  # 0: only listed nodes
    tls: TlsFiles
    nodes: dict[str, str] = field(default_factory=dict)


_KEYS = {"listen", "timeout_seconds", "max_priority", "port", "tls", "nodes"}


def load_extender_config(path: Path) -> ExtenderConfig:
    try:
        document = tomllib.loads(path.read_text())
    except OSError as e:
        raise ExtenderConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ExtenderConfigError(f"{path}: invalid TOML: {e}") from None
    unknown = set(document) - _KEYS
    if unknown:
        raise ExtenderConfigError(
            f"{path}: unknown keys {sorted(unknown)} (known: {sorted(_KEYS)})"
        )
    return parse_extender_config(document, path.parent, str(path))


def parse_extender_config(doc: dict[str, Any], base: Path, where: str) -> ExtenderConfig:
    def fail(key: str, reason: str) -> ExtenderConfigError:
        return ExtenderConfigError(f"{where}: {key}: {reason}")

    listen = doc.get("listen", "127.0.0.1:8888")
    try:
        split_listen(listen)
    except (ValueError, AttributeError) as e:
        raise fail("listen", str(e)) from None
    timeout = doc.get("timeout_seconds", 2.0)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 60:
        raise fail("timeout_seconds", "must be a number of seconds in (0, 60]")
    max_priority = doc.get("max_priority", 10)
    if not isinstance(max_priority, int) or isinstance(max_priority, bool) or max_priority < 1:
        raise fail("max_priority", "must be a positive integer")
    port = doc.get("port", 0)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise fail("port", "must be a port number, 0 for none")
    nodes = doc.get("nodes", {})
    if not isinstance(nodes, dict) or not all(
        isinstance(v, str) and ":" in v for v in nodes.values()
    ):
        raise fail("nodes", 'must be a table of node name = "HOST:PORT"')
    tls = doc.get("tls")
    if not isinstance(tls, dict):
        raise fail("tls", "a [tls] table with ca, cert and key is required (mutual TLS)")
    files: dict[str, bytes] = {}
    for key in ("ca", "cert", "key"):
        if not isinstance(tls.get(key), str):
            raise fail(f"tls.{key}", "must be a path to a PEM file")
        try:
            files[key] = (base / tls[key]).read_bytes()
        except OSError as e:
            raise fail(f"tls.{key}", f"cannot read {tls[key]}: {e.strerror or e}") from None
    server_name = tls.get("server_name", "")
    if not isinstance(server_name, str):
        raise fail("tls.server_name", "must be a string")
    return ExtenderConfig(
        listen=listen,
        timeout_seconds=float(timeout),
        max_priority=max_priority,
        port=port,
        tls=TlsFiles(files["ca"], files["cert"], files["key"], server_name),
        nodes=dict(nodes),
    )
