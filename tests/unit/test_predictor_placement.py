"""The adapter NodeService.ScorePlacement calls: intent -> candidate, window reuse."""

from __future__ import annotations

from pathlib import Path

from agentd.metrics.window import NodeWindow
from agentd.model import Intent, Priority, Resources
from agentd.predictor import Predictor
from agentd.predictor.placement import PlacementPredictor, candidate_of


def test_candidate_from_intent_or_session_budget() -> None:
    intent = Intent(
        resources=Resources(memory_max=1 << 30, cpu=2.0),
        expected_duration_seconds=30.0,
        priority=Priority.BATCH,
        label="python3 -m pytest -x",
    )
    c = candidate_of(intent, None)
    assert (c.command_class, c.memory_bytes, c.cpu_cores, c.priority) == (
        "pytest",
        1 << 30,
        2.0,
        int(Priority.BATCH),
    )
    assert candidate_of(intent, Resources(memory_high=5 << 30)).memory_bytes == 5 << 30


def test_one_window_serves_a_burst_of_candidates(tmp_path: Path) -> None:
    calls = []

    def window() -> NodeWindow:
        calls.append(1)
        return NodeWindow(psi_cpu_some=0.3)

    placement = PlacementPredictor(Predictor.load(tmp_path / "none"), window)
    predictions = [placement(Intent(label="gcc"), None) for _ in range(10)]
    assert len(calls) == 1
    assert predictions[0].model == "fallback:psi-linear"
    assert predictions[0].slowdown == 1.3


def test_a_batch_is_one_model_call_with_the_same_predictions(tmp_path: Path) -> None:
    class Counting(Predictor):
        calls: list[int] = []

        def predict(self, candidates, window):  # type: ignore[no-untyped-def]
            self.calls.append(len(candidates))
            return super().predict(candidates, window)

    predictor = Counting(None, "fallback for the test")
    placement = PlacementPredictor(predictor, lambda: NodeWindow(psi_cpu_some=0.2))
    items = [
        (Intent(resources=Resources(memory_max=(i + 1) << 28), label="gcc"), None)
        for i in range(10)
    ] + [(Intent(label="pytest"), Resources(memory_max=1 << 30))]
    batch = placement.predict_many(items)
    assert predictor.calls == [len(items)]
    assert batch == [placement(intent, budget) for intent, budget in items]
    assert placement.predict_many([]) == []
