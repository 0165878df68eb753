"""Helpers for the scheduler extender's tests: kube-scheduler's payloads and a POST."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures" / "k8s"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def post(http: Any, verb: str, body: bytes | dict[str, Any]) -> tuple[int, Any]:
    """POST to the extender's `verb` as kube-scheduler does: (HTTP status, JSON body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    host, port = http.server_address[:2]
    request = urllib.request.Request(
        f"http://{host}:{port}/{verb}",
        data=data,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@contextlib.contextmanager
def running_extender(
    ca: Path,
    cert: Path,
    key: Path,
    nodes: dict[str, str],
    server_name: str = "",
    timeout: float = 2.0,
) -> Iterator[Any]:
    """The extender's HTTP server on a free loopback port until the block ends."""
    from agentd.k8s.config import parse_extender_config
    from agentd.k8s.extender import Extender, serve

    document = {
        "listen": "127.0.0.1:0",
        "timeout_seconds": timeout,
        "tls": {"ca": str(ca), "cert": str(cert), "key": str(key), "server_name": server_name},
        "nodes": nodes,
    }
    cfg = parse_extender_config(document, Path("/"), "test")
    extender = Extender(cfg)
    http = serve(extender, cfg.listen)
    try:
        yield http
    finally:
        http.shutdown()
        extender.scorer.close()
