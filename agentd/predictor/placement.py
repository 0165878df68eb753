"""The predictor as NodeService's ScorePlacement sees it: an intent (and a session
budget for a whole session) in, a scoring.Prediction out, on the node window now."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from agentd import scoring
from agentd.metrics.window import NodeWindow
from agentd.model import Intent, Resources
from agentd.predictor.features import CandidateFeatures
from agentd.predictor.predictor import Predictor

#: A ScorePlacement of 10 candidates asks for the window 10 times in a row: build it
#: once per this many seconds (the collector's period), not once per candidate.
WINDOW_CACHE_SECONDS = 0.1


def candidate_of(intent: Intent, budget: Resources | None) -> CandidateFeatures:
    resources = budget if budget is not None else intent.resources
    return CandidateFeatures(
        label=intent.label,
        memory_bytes=resources.memory_max or resources.memory_high,
        cpu_cores=resources.cpu,
        expected_duration_seconds=intent.expected_duration_seconds,
        priority=int(intent.priority) if intent.priority is not None else None,
    )


class PlacementPredictor:
    """Callable as scoring.Predictor."""

    def __init__(self, predictor: Predictor, window: Callable[[], NodeWindow]) -> None:
        self._predictor = predictor
        self._window = window
        self._lock = threading.Lock()
        self._cached: tuple[float, NodeWindow] | None = None

    def window(self) -> NodeWindow:
        now = time.monotonic()
        with self._lock:
            if self._cached is None or now - self._cached[0] > WINDOW_CACHE_SECONDS:
                self._cached = (now, self._window())
            return self._cached[1]

    def __call__(self, intent: Intent, budget: Resources | None) -> scoring.Prediction:
        p = self._predictor.predict([candidate_of(intent, budget)], self.window())[0]
        return scoring.Prediction(p.predicted_slowdown, p.low, p.high, p.model)

    def predict_many(
        self, items: Sequence[tuple[Intent, Resources | None]], window: NodeWindow | None = None
    ) -> list[scoring.Prediction]:
        """`self(intent, budget)` for each item, in one model call (one feature matrix
        and one window): what ScorePlacement uses for its candidates. `window`: one
        taken earlier from `window()` (ScorePlacement's epoch, score_cache.py), so that
        the answer is the one for the window it is kept with; the latest when None."""
        candidates = [candidate_of(intent, budget) for intent, budget in items]
        return [
            scoring.Prediction(p.predicted_slowdown, p.low, p.high, p.model)
            for p in self._predictor.predict(
                candidates, self.window() if window is None else window
            )
        ]
