"""Predictions through the daemon: the model file it loads at start, NodeService's
ScorePlacement and `agentctl predict`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from agentd_process import AgentdProcess
from conftest import require_cgroup_v1

from agentd.predictor.train import DEFAULT_MODEL
from agentd.predictor.train import main as train_main

pytestmark = pytest.mark.root

DATASET = Path(__file__).parent.parent / "data" / "interference.jsonl"


def agentctl(daemon: AgentdProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentd.cli.agentctl", "--socket", daemon.socket, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


def test_predict_falls_back_without_a_model(agentd: AgentdProcess) -> None:
    out = agentctl(agentd, "predict", "--label", "pytest", "--memory", "1G", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["model"] == "fallback:psi-linear"
    assert 1.0 <= data["low"] <= data["predicted_slowdown"] <= data["high"]
    assert data["feasible"] is True


def test_daemon_loads_the_trained_model_and_serves_it() -> None:
    require_cgroup_v1()
    daemon = AgentdProcess()
    model = Path(daemon.state_dir) / "predictor.model"
    assert (
        train_main(["--dataset", str(DATASET), "--out", str(model), "--solo-max-other-cores", "2"])
        == 0
    )
    daemon.start()
    try:
        out = agentctl(daemon, "predict", "--label", "cc-compile", "--cpu", "1", "--json")
        assert out.returncode == 0, out.stderr + daemon.logs()[-2000:]
        data = json.loads(out.stdout)
        assert data["model"].startswith(f"{DEFAULT_MODEL}@")
        assert 0.0 < data["low"] <= data["predicted_slowdown"] <= data["high"]
        assert data["predicted_slowdown"] >= 1.0
        text = agentctl(daemon, "predict", "--label", "cc-compile")
        assert "slower than alone" in text.stdout and f"{DEFAULT_MODEL}@" in text.stdout
        bad = agentctl(daemon, "predict", "--label", "x", "--memory", "lots")
        assert bad.returncode == 2 and "lots" in bad.stderr
    finally:
        assert not daemon.cleanup()
