"""The Kubernetes manifests: well-formed, and the configuration they carry is what
agentd and the extender accept (loaded with their own loaders)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentd import config
from agentd.k8s.config import parse_extender_config

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name)


def test_every_object_has_kind_name_and_namespace_where_needed() -> None:
    cluster_scoped = {"Namespace", "ClusterRoleBinding", "ClusterRole"}
    for doc in documents():
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
        if doc["kind"] not in cluster_scoped:
            assert doc["metadata"]["namespace"] == "agentd-system", doc["metadata"]


def test_daemonset_is_host_pid_unprivileged_with_listed_capabilities() -> None:
    ds = find("DaemonSet", "agentd")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["privileged"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert set(security["capabilities"]["add"]) == {
        "SYS_ADMIN", "BPF", "PERFMON", "SYS_RESOURCE", "KILL", "SYS_PTRACE", "CHOWN",
    }  # fmt: skip
    host_paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths == {
        "/sys/fs/cgroup", "/sys/kernel/tracing", "/sys/kernel/debug", "/lib/modules",
        "/usr/src", "/run/agentd", "/var/lib/agentd",
    }  # fmt: skip
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    # Only what agentd writes is writable.
    writable = {name for name, m in mounts.items() if not m.get("readOnly")}
    assert writable == {"cgroup", "run", "state", "tmp"}
    # Every mounted volume exists and every volume is mounted.
    assert set(mounts) == {v["name"] for v in pod["volumes"]}


def test_configmap_agentd_toml_loads_with_agentds_own_loader(tmp_path: Path) -> None:
    text = find("ConfigMap", "agentd-config")["data"]["agentd.toml"]
    path = tmp_path / "agentd.toml"
    path.write_text(text)
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    cfg = config.load_config(parser.parse_args(["--config", str(path)]), environ={})
    assert cfg.daemon.socket == Path("/run/agentd/agentd.sock")
    assert cfg.daemon.state_dir == Path("/var/lib/agentd")
    assert cfg.prometheus.listen == "0.0.0.0:9464"
    ds = find("DaemonSet", "agentd")
    container = ds["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p for p in container["ports"]}
    assert ports["metrics"]["containerPort"] == int(cfg.prometheus.listen.rsplit(":", 1)[1])
    assert ports["node-api"]["containerPort"] == int(cfg.api.tcp_listen.rsplit(":", 1)[1])
    # The TLS files are where the Secret is mounted.
    (tls_mount,) = [m for m in container["volumeMounts"] if m["name"] == "node-tls"]
    for path in (cfg.api.tls_cert, cfg.api.tls_key, cfg.api.tls_client_ca):
        assert path is not None and path.parent == Path(tls_mount["mountPath"])


def test_extender_config_parses_and_matches_the_scheduler_profile(tmp_path: Path) -> None:
    import tomllib

    data = find("ConfigMap", "agentd-extender")["data"]
    document = tomllib.loads(data["extender.toml"])
    for key in ("ca", "cert", "key"):
        (tmp_path / key).write_text("PEM")
        document["tls"][key] = str(tmp_path / key)
    cfg = parse_extender_config(document, tmp_path, "extender.toml")
    assert cfg.port == 7443 and cfg.max_priority == 10
    scheduler = yaml.safe_load(data["scheduler-config.yaml"])
    (extender,) = scheduler["extenders"]
    assert extender["urlPrefix"].endswith(":" + cfg.listen.rsplit(":", 1)[1])
    assert (extender["filterVerb"], extender["prioritizeVerb"]) == ("filter", "prioritize")
    # InternalIP lookup needs Node objects, i.e. nodeCacheCapable false.
    assert extender["nodeCacheCapable"] is False
    # kube-scheduler must wait longer than the extender's own deadline.
    assert float(extender["httpTimeout"].rstrip("s")) > cfg.timeout_seconds
    ds = find("DaemonSet", "agentd")
    ports = {p["name"]: p for p in ds["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ports["node-api"]["hostPort"] == cfg.port


@pytest.mark.parametrize("name", ["agentd", "agentd-scheduler"])
def test_pod_templates_carry_their_selector_labels(name: str) -> None:
    kind = "DaemonSet" if name == "agentd" else "Deployment"
    obj = find(kind, name)
    labels = obj["spec"]["template"]["metadata"]["labels"]
    assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items()


# The Kubernetes version the manifests are checked against: kubernetes-validate
# bundles the OpenAPI schemas of each release (no cluster, no network).
SCHEMA_VERSION = "1.30.0"


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_every_manifest_is_valid_against_the_kubernetes_api_schema(path: Path) -> None:
    from kubernetes_validate import utils as kubernetes_validate

    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        # strict: a misspelt or misplaced field fails too, not only a wrong type.
        kubernetes_validate.validate(doc, SCHEMA_VERSION, strict=True)


def test_the_schema_check_refuses_a_misplaced_field() -> None:
    from kubernetes_validate import utils as kubernetes_validate

    ds = find("DaemonSet", "agentd")
    ds["spec"]["template"]["spec"]["hostPid"] = True  # the real field is hostPID
    with pytest.raises(kubernetes_validate.ValidationError, match="hostPid"):
        kubernetes_validate.validate(ds, SCHEMA_VERSION, strict=True)
