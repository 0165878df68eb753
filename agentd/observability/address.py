"""The `[prometheus] listen` address: parsed here, without importing prometheus_client,
so that the configuration can validate it."""

from __future__ import annotations

import ipaddress


def split_listen(listen: str) -> tuple[str, int]:
    """("127.0.0.1", 9464) of "127.0.0.1:9464" or "[::1]:9464"; ValueError(reason)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ValueError('must be "HOST:PORT", e.g. "127.0.0.1:9464", or "" for off')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (names are not resolved)") from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} must be a number from 0 to 65535")
    return host, int(port_text)
