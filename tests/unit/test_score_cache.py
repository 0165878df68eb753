"""ScorePlacement's per-candidate cache (agentd/api/score_cache.py): an answer from
the cache is the one the full computation gives, and any change of the inputs (the
room, the stall, the node window, the predictor) or of the candidate is scored
anew."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from agentd.api.node_service import NODE_WIDE_PRINCIPAL, NodeService
from agentd.api.score_cache import ScoreCache
from agentd.errors import InvalidArgumentError
from agentd.metrics.window import NodeWindow
from agentd.model import Intent, Resources
from agentd.predictor import Predictor
from agentd.predictor import placement as placement_module
from agentd.predictor.placement import PlacementPredictor
from agentd.scoring import Capacity, Demand, Room, score
from agentd.v1 import agent_pb2 as apb
from agentd.v1 import node_pb2 as pb

CAPACITY = Capacity(memory=8 << 30, cpus=2.0, pids=32768)


class _Context:
    def time_remaining(self) -> float | None:
        return None


class CountingPredictor(Predictor):
    def __init__(self) -> None:
        super().__init__(None, "fallback for the test")
        self.calls: list[int] = []

    def predict(self, candidates, window):  # type: ignore[no-untyped-def]
        self.calls.append(len(candidates))
        return super().predict(candidates, window)


class ScoringOnly(NodeService):
    """NodeService's ScorePlacement over inputs the test sets (as the reader's). The
    node window is taken anew on every change unless `refresh_seconds` says."""

    def __init__(self, predictor: Any, refresh_seconds: float = 0.0, clock: Any = None) -> None:
        self.predictor = predictor
        self.capacity = CAPACITY
        self.score_cache = ScoreCache(refresh_seconds=refresh_seconds, clock=clock or (lambda: 0.0))
        self.room = Room(memory=4 << 30, cpu=1.5, pids=1000)
        self.stall = 0.0

    def scoring_inputs(self) -> tuple[Room, float]:
        return self.room, self.stall

    def scores(self, request: pb.ScorePlacementRequest) -> pb.ScorePlacementResponse:
        method = NodeService.ScorePlacement.__wrapped__  # type: ignore[attr-defined]
        return method(self, NODE_WIDE_PRINCIPAL, request, _Context())


@pytest.fixture
def window_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # The window function is asked on every call: the test decides when it changes.
    monkeypatch.setattr(placement_module, "WINDOW_CACHE_SECONDS", -1.0)


def _request(ids: list[str], memories: list[int], budget_of: int | None = None):
    """Candidates whose label follows from their memory: same memory, same intent."""
    candidates = []
    for i, (cid, memory) in enumerate(zip(ids, memories, strict=True)):
        c = pb.Candidate(
            id=cid,
            intent=apb.Intent(
                label={256: "gcc", 512: "pytest"}.get(memory, "git"),
                resources=apb.Resources(memory_max=f"{memory}M", cpu="0.5"),
            ),
        )
        if budget_of == i:
            c.session_budget.CopyFrom(apb.Resources(memory_max="3G", cpu="1"))
        candidates.append(c)
    return pb.ScorePlacementRequest(candidates=candidates)


def _reference(service: ScoringOnly, window: NodeWindow, request) -> pb.ScorePlacementResponse:
    """The answer computed directly with scoring.score and the predictor."""
    out = pb.ScorePlacementResponse()
    for c in request.candidates:
        memory = int(c.intent.resources.memory_max.rstrip("M")) << 20
        intent = Intent(resources=Resources(memory_max=memory, cpu=0.5), label=c.intent.label)
        budget = Resources(memory_max=3 << 30, cpu=1.0) if c.HasField("session_budget") else None
        p = service.predictor(intent, budget)
        result = score(Demand.of(intent, budget), service.room, CAPACITY, service.stall, p)
        out.scores.add(
            candidate_id=c.id,
            feasible=result.feasible,
            reason=result.reason,
            memory_headroom_bytes=max(result.memory_headroom, 0),
            cpu_headroom_cores=max(result.cpu_headroom, 0.0),
            score=result.score,
            prediction=pb.Prediction(
                predicted_slowdown=p.slowdown, low=p.low, high=p.high, model=p.model
            ),
        )
    return out


def test_cached_answers_are_the_computed_ones_with_the_callers_ids(window_per_call):
    window = NodeWindow(psi_cpu_some=0.3)
    model = CountingPredictor()
    service = ScoringOnly(PlacementPredictor(model, lambda: window))
    request = _request(["a", "b", "c", "d"], [256, 512, 8192, 1024], budget_of=3)
    first = service.scores(request)
    assert first == _reference(service, window, request)
    assert not first.scores[2].feasible and "memory" in first.scores[2].reason
    assert model.calls[0] == 4  # one batch
    model.calls.clear()
    # Same candidates, other ids, another order and a repeat: no model call.
    again = _request(["x", "", "z"], [1024, 256, 256], budget_of=0)
    again.candidates[0].session_budget.CopyFrom(request.candidates[3].session_budget)
    answer = service.scores(again)
    assert model.calls == []
    assert [s.candidate_id for s in answer.scores] == ["x", "", "z"]
    assert answer == _reference(service, window, again)


def test_a_change_of_room_stall_window_or_predictor_is_scored_anew(window_per_call):
    window = NodeWindow(psi_cpu_some=0.1)
    model = CountingPredictor()
    service = ScoringOnly(PlacementPredictor(model, lambda: window))
    request = _request(["a", "b"], [256, 512])
    before = service.scores(request)

    service.room = Room(memory=1 << 30, cpu=1.5, pids=1000)  # a session opened
    after = service.scores(request)
    assert after == _reference(service, window, request)
    assert after.scores[0].memory_headroom_bytes == before.scores[0].memory_headroom_bytes - (
        3 << 30
    )

    service.stall = 40.0  # pressure
    stalled = service.scores(request)
    assert stalled == _reference(service, window, request)
    assert stalled.scores[0].score < after.scores[0].score

    calls = len(model.calls)
    window = NodeWindow(psi_cpu_some=0.9)  # the node window turned over
    busier = service.scores(request)
    assert len(model.calls) == calls + 1
    assert busier.scores[0].prediction.predicted_slowdown > (
        stalled.scores[0].prediction.predicted_slowdown
    )
    assert busier == _reference(service, window, request)

    retrained = CountingPredictor()  # another model, same window
    service.predictor = PlacementPredictor(retrained, lambda: window)
    service.scores(request)
    assert retrained.calls == [2]


def test_a_new_window_is_taken_at_most_once_per_refresh_period(window_per_call):
    now = [100.0]
    window = NodeWindow(psi_cpu_some=0.1)
    model = CountingPredictor()
    service = ScoringOnly(
        PlacementPredictor(model, lambda: window), refresh_seconds=1.0, clock=lambda: now[0]
    )
    request = _request(["a", "b"], [256, 512])
    first = service.scores(request)
    window = NodeWindow(psi_cpu_some=0.9)
    now[0] += 0.5
    service.room = Room(memory=2 << 30, cpu=1.5, pids=1000)  # the room is always exact
    within = service.scores(request)
    assert model.calls == [2]  # the prediction is the previous window's, 0.5 s old
    assert within.scores[0].prediction == first.scores[0].prediction
    assert within.scores[0].memory_headroom_bytes == (2 << 30) - (256 << 20)
    now[0] += 0.5  # a second after the first: the new window counts
    after = service.scores(request)
    assert model.calls == [2, 2]
    assert after == _reference(service, window, request)


def test_the_window_is_not_built_on_a_call_between_refreshes(window_per_call):
    # Building a window reads the collector's rings under its lock: a call inside the
    # refresh period answers without asking for one, while the room stays exact.
    now = [100.0]
    built: list[float] = []

    def window() -> NodeWindow:
        built.append(now[0])
        return NodeWindow(psi_cpu_some=0.1 + len(built) / 10)

    model = CountingPredictor()
    service = ScoringOnly(
        PlacementPredictor(model, window), refresh_seconds=1.0, clock=lambda: now[0]
    )
    request = _request(["a"], [256])
    first = service.scores(request)
    for step in range(9):
        now[0] += 0.1
        service.room = Room(memory=(3 << 30) - step * (64 << 20), cpu=1.5, pids=1000)
        answer = service.scores(request)
        assert answer.scores[0].memory_headroom_bytes == service.room.memory - (256 << 20)
        assert answer.scores[0].prediction == first.scores[0].prediction
    assert built == [100.0] and model.calls == [1]
    now[0] = 101.0  # a second after the first window: the next one is built and used
    renewed = service.scores(request)
    assert len(built) == 2 and model.calls == [1, 1]
    assert renewed.scores[0].prediction.predicted_slowdown > (
        first.scores[0].prediction.predicted_slowdown
    )


def test_how_candidates_were_answered_is_counted(window_per_call):
    def count(source: str) -> float:
        value = REGISTRY.get_sample_value(
            "agentd_api_score_cache_candidates_total", {"source": source}
        )
        return value or 0.0

    window = NodeWindow(psi_cpu_some=0.1)
    service = ScoringOnly(PlacementPredictor(CountingPredictor(), lambda: window))
    before = {s: count(s) for s in ("entry", "answer", "computed")}
    service.scores(_request(["a", "b"], [256, 512]))  # computed
    service.scores(_request(["a", "b"], [256, 512]))  # the same entries
    service.scores(_request(["x", "b"], [256, 1024]))  # a's answer under another id; new
    assert {s: count(s) - n for s, n in before.items()} == {
        "entry": 2,
        "answer": 1,
        "computed": 3,
    }


def test_answers_predicted_while_the_window_turned_over_are_not_kept(window_per_call):
    model = CountingPredictor()
    # A new window object on every call: nothing can be kept.
    service = ScoringOnly(PlacementPredictor(model, lambda: NodeWindow(psi_cpu_some=0.2)))
    request = _request(["a"], [256])
    first = service.scores(request)
    second = service.scores(request)
    assert model.calls == [1, 1] and first == second


def test_a_predictor_without_a_window_is_never_cached():
    asked: list[str] = []

    def predictor(intent: Intent, budget: Resources | None) -> None:
        asked.append(intent.label)
        return None

    service = ScoringOnly(predictor)
    request = _request(["a", "b"], [256, 512])
    service.scores(request)
    service.scores(request)
    assert asked == ["gcc", "pytest"] * 2


def test_errors_name_the_candidate_whatever_is_cached(window_per_call, tmp_path: Path):
    window = NodeWindow()
    service = ScoringOnly(PlacementPredictor(Predictor.load(tmp_path / "none"), lambda: window))
    valid = _request(["a", "b"], [256, 512])
    service.scores(valid)  # both cached
    bad = _request(["a", "b", "c"], [256, 512, 256])
    bad.candidates[2].intent.resources.memory_max = "lots"
    with pytest.raises(InvalidArgumentError) as e:
        service.scores(bad)
    assert e.value.field == "candidates[2].intent.resources.memory_max"
    long_id = _request(["a", "b"], [256, 512])
    long_id.candidates[1].id = "x" * 300  # its intent is cached: the id is still checked
    with pytest.raises(InvalidArgumentError) as e:
        service.scores(long_id)
    assert e.value.field == "candidates[1].id"


def test_the_key_covers_every_field_of_a_candidate_but_its_id():
    # A field added to Candidate must be added to score_cache.candidate_key.
    assert {f.name for f in pb.Candidate.DESCRIPTOR.fields} == {"id", "intent", "session_budget"}


def test_the_table_is_bounded():
    cache = ScoreCache(max_entries=3)
    answers = cache.answers((1,), ())
    for n in range(10):
        cache.put(answers, (bytes([n]), None), b"x")
    assert len(answers) <= 3
    assert cache.answers((1,), ()) is answers
    assert cache.answers((2,), ()) is not answers
