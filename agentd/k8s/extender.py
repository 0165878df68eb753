"""A kube-scheduler extender that asks each node's agentd where a pod fits.

kube-scheduler POSTs ExtenderArgs (k8s.io/kube-scheduler/extender/v1; Go field
names as JSON keys, no tags) to <urlPrefix>/<verb>:

    {"Pod": {...}, "Nodes": {"items": [Node, ...]}, "NodeNames": null}   nodeCacheCapable: false
    {"Pod": {...}, "Nodes": null, "NodeNames": ["node-a", ...]}         nodeCacheCapable: true

/filter answers ExtenderFilterResult: the nodes that pass (in the same form as they
came: Nodes or NodeNames), FailedNodes (node -> reason; preemption might help: the
node lacks room now), FailedAndUnresolvableNodes (no agentd reachable there:
preemption cannot help) and Error (the pod's own annotations are invalid).
/prioritize answers HostPriorityList [{"Host", "Score"}]: agentd's 0..100 scaled to
1..max_priority (kube-scheduler's MaxExtenderPriority, 10) relative to the best
candidate (see `scaled`); 0 for nodes that are infeasible or did not answer.

Run: `agentd-scheduler-extender --config FILE` or `python -m agentd.k8s.extender`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from agentd.k8s.config import ExtenderConfig, ExtenderConfigError, load_extender_config
from agentd.k8s.intent import PodIntentError, pod_intent, pod_name
from agentd.k8s.scoring import NodeAnswer, NodeScorer
from agentd.log import configure_logging
from agentd.observability.address import split_listen

log = structlog.get_logger("agentd.extender")

# A full NodeList of a 5,000-node cluster is ~25 MB; anything larger is refused.
MAX_BODY_BYTES = 64 * 1024 * 1024


class BadRequest(Exception):
    pass


def _candidate_nodes(args: dict[str, Any]) -> tuple[dict[str, dict[str, Any] | None], bool]:
    """node name -> Node object (None when only names came), and whether names came."""
    names = args.get("NodeNames")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadRequest("NodeNames must be a list of strings")
        return dict.fromkeys(names), True
    node_list = args.get("Nodes")
    if not isinstance(node_list, dict) or not isinstance(node_list.get("items", []), list):
        raise BadRequest("one of Nodes (a NodeList) or NodeNames is required")
    nodes: dict[str, dict[str, Any] | None] = {}
    for item in node_list.get("items") or []:
        name = (item.get("metadata") or {}).get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest("every Nodes.items[] needs metadata.name")
        nodes[name] = item
    return nodes, False


def scaled(score: float | None, feasible: dict[str, float], top: int) -> int:
    """agentd's 0..100 score as 0..top, relative to the best candidate of this pod.

    Relative, as kube-scheduler normalizes its own plugins' scores: only the order
    among the candidates decides, and absolute scores can all be small (agentd
    divides by the node's CPU stall share, so on a busy cluster every node scores
    low) where rounding to 0..10 would erase the order. A feasible node gets at least
    1, an infeasible or silent one 0.
    """
    if score is None:
        return 0
    best = max(feasible.values(), default=0.0)
    if best <= 0.0:
        return 1
    return max(1, round(top * score / best))


class Extender:
    def __init__(self, cfg: ExtenderConfig, scorer: NodeScorer | None = None) -> None:
        self.cfg = cfg
        self.scorer = scorer or NodeScorer(cfg)

    def _answers(self, args: dict[str, Any]) -> tuple[dict[str, NodeAnswer], dict, bool]:
        if not isinstance(args, dict):
            raise BadRequest("ExtenderArgs must be a JSON object")
        nodes, by_name = _candidate_nodes(args)
        pod = args.get("Pod")
        intent = pod_intent(pod)  # PodIntentError for bad annotations
        answers = self.scorer.score(intent.candidate(pod_name(pod)), nodes) if nodes else {}
        return answers, nodes, by_name

    def filter(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            answers, nodes, by_name = self._answers(args)
        except PodIntentError as e:
            # The pod, not a node, is at fault: kube-scheduler reports Error on the pod.
            return {"Nodes": None, "NodeNames": None, "FailedNodes": {},
                    "FailedAndUnresolvableNodes": {}, "Error": str(e)}  # fmt: skip
        passed: list[str] = []
        failed: dict[str, str] = {}
        unresolvable: dict[str, str] = {}
        for name in nodes:
            answer = answers[name]
            if answer.score is None:
                unresolvable[name] = answer.error
            elif not answer.score.feasible:
                failed[name] = f"agentd: {answer.score.reason or 'not feasible'}"
            else:
                passed.append(name)
        log.info(
            "extender.filter",
            pod=pod_name(args.get("Pod") or {}),
            passed=len(passed),
            failed=len(failed),
            unresolvable=len(unresolvable),
        )
        result: dict[str, Any] = {
            "Nodes": None,
            "NodeNames": None,
            "FailedNodes": failed,
            "FailedAndUnresolvableNodes": unresolvable,
            "Error": "",
        }
        if by_name:
            result["NodeNames"] = passed
        else:
            result["Nodes"] = {
                "metadata": {},
                "items": [nodes[n] for n in passed],
            }
        return result

    def prioritize(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        answers, nodes, _ = self._answers(args)
        feasible = {
            name: min(max(a.score.score, 0.0), 100.0)
            for name, a in answers.items()
            if a.score is not None and a.score.feasible
        }
        return [
            {"Host": name, "Score": scaled(feasible.get(name), feasible, self.cfg.max_priority)}
            for name in nodes
        ]


class _Handler(BaseHTTPRequestHandler):
    extender: Extender  # set on the subclass made by serve()
    server_version = "agentd-scheduler-extender"

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/healthz", "/readyz"):
            self._send(HTTPStatus.OK, {"status": "ok"})
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no {self.path}"})

    def do_POST(self) -> None:
        verb = self.path.rstrip("/").rsplit("/", 1)[-1]
        if verb not in ("filter", "prioritize"):
            self._send(HTTPStatus.NOT_FOUND, {"error": f"unknown verb {verb!r}"})
            return
        try:
            args = self._read_json()
            result: Any = getattr(self.extender, verb)(args)
        except (BadRequest, PodIntentError) as e:
            self._send(HTTPStatus.BAD_REQUEST, {"error": str(e)})
            return
        except Exception as e:  # a bug must cost one answer, not the extender
            log.exception("extender.failed", verb=verb)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(e).__name__}: {e}"})
            return
        self._send(HTTPStatus.OK, result)

    def _read_json(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise BadRequest("Content-Length is required") from None
        if not 0 <= length <= MAX_BODY_BYTES:
            raise BadRequest(f"body of {length} bytes is over {MAX_BODY_BYTES}")
        try:
            return json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"body is not JSON: {e}") from None

    def _send(self, status: HTTPStatus, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("extender.http", request=format % args)


def serve(extender: Extender, listen: str) -> ThreadingHTTPServer:
    """A started server (in a daemon thread); `.shutdown()` stops it."""
    host, port = split_listen(listen)
    handler = type("Handler", (_Handler,), {"extender": extender})
    server_class = type(
        "Server", (ThreadingHTTPServer,), {"address_family": _family(host), "daemon_threads": True}
    )
    server = server_class((host, port), handler)
    threading.Thread(target=server.serve_forever, name="extender-http", daemon=True).start()
    return server


def _family(host: str) -> int:
    import socket

    return socket.AF_INET6 if ":" in host else socket.AF_INET


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agentd-scheduler-extender",
        description="kube-scheduler extender: filter and prioritize nodes by agentd's scores",
    )
    parser.add_argument("--config", type=Path, required=True, help="TOML configuration file")
    parser.add_argument("--listen", help="HOST:PORT, overrides the file's listen")
    parser.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    args = parser.parse_args(argv)
    configure_logging(args.log_format, "info")
    try:
        cfg = load_extender_config(args.config)
        listen = args.listen or cfg.listen
        split_listen(listen)
    except (ExtenderConfigError, ValueError) as e:
        print(f"agentd-scheduler-extender: {e}", file=sys.stderr)
        return 2
    extender = Extender(cfg)
    server = serve(extender, listen)
    log.info("extender.listening", address=f"{listen}", nodes=len(cfg.nodes))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    server.shutdown()
    extender.scorer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
