"""The predictor on the dataset recorded by bench/interference.py on this machine
(tests/data/interference.jsonl): features, fallback, model files, training, and that
the learned model has learned something a baseline has not."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from agentd.metrics.dataset import PAIRED_BASELINE_TAG, Record, SoloRule, load_jsonl
from agentd.metrics.window import NodeWindow
from agentd.predictor import CandidateFeatures, Predictor
from agentd.predictor.evaluate import (
    antagonist_of,
    cell_floor,
    evaluate_split,
    noise_floor,
    workload_of,
)
from agentd.predictor.features import (
    FEATURE_NAMES,
    ClassProfile,
    cpu_share_slowdown,
    feature_vector,
)
from agentd.predictor.models import LEARNED
from agentd.predictor.predictor import FALLBACK, MODEL_VERSION, read_model_file
from agentd.predictor.train import main as train_main
from agentd.predictor.train import train, training_set

DATASET = Path(__file__).parent.parent / "data" / "interference.jsonl"
# On the shared development machine other jobs load the node during "solo" runs too:
# a run is solo when no agentd neighbour ran (see docs/predictor.md).
RULE = SoloRule(max_other_cores=2.0)


@pytest.fixture(scope="module")
def records() -> list[Record]:
    with open(DATASET) as f:
        return load_jsonl(f)


@pytest.fixture(scope="module")
def predictor(records: list[Record], tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    path = tmp_path_factory.mktemp("model") / "predictor.model"
    train(records, RULE, "gbt").save(path)
    return Predictor.load(path)


def test_recorded_dataset_covers_the_matrix(records: list[Record]) -> None:
    workloads = {r.tags["workload"] for r in records}
    antagonists = {r.tags["antagonist"] for r in records}
    assert len(workloads) >= 9
    assert {"solo", "cpu-1", "cpu-2", "cpu-q", "vm", "cache", "io", "fork"} <= antagonists
    contended = [r for r in records if r.tags["antagonist"] != "solo"]
    assert all(r.neighbours_max >= 1 for r in contended)
    # The antagonist is killed and waited for before the next solo run; its group
    # lingered into a few (the class baselines leave those out: SoloRule).
    solo = [r for r in records if r.tags["antagonist"] == "solo"]
    assert sum(r.neighbours_max > 0 for r in solo) <= 0.03 * len(solo)
    full = [r for r in records if r.window_before["seconds"] > 0.5]
    assert len(full) >= 0.9 * len(records)


def test_every_contended_run_is_measured_against_the_solo_runs_beside_it(
    records: list[Record],
) -> None:
    by_id = {r.tool_call_id: r for r in records}
    contended = [r for r in records if r.tags["antagonist"] != "solo" and r.exit_code == 0]
    assert contended
    both = 0
    for r in contended:
        # a neighbour whose start was wrong was dropped (next test): the other one is
        # the baseline then
        pair = [by_id[r.tags[k]] for k in ("solo_before", "solo_after") if r.tags[k] in by_id]
        assert pair, r.tool_call_id
        both += len(pair) == 2
        for solo in pair:
            assert solo.tags["antagonist"] == "solo" and solo.label == r.label
            # adjacent in time: the node's background is the one the contended run met
            assert abs(solo.started_at - r.started_at) < 60
        expected = sum(p.duration_seconds for p in pair) / len(pair)
        assert float(r.tags[PAIRED_BASELINE_TAG]) == pytest.approx(expected, rel=1e-4)
    assert both >= 0.6 * len(contended)


def test_no_record_starts_at_its_launchers_placement(records: list[Record]) -> None:
    """The harness sleeps 0.8 s before every victim: a record starting sooner after the
    previous victim's end carries its launcher's placement time as its start (and an
    idle launcher in its duration); the harness drops those (bench/interference.py)."""
    ends = sorted(r.ended_at for r in records)
    for r in records:
        previous = [e for e in ends if e < r.ended_at]
        assert not previous or r.started_at >= previous[-1] + 0.4, r.tool_call_id


def test_the_ground_truths_own_noise_is_measured(records: list[Record]) -> None:
    """Solo runs against their solo neighbours, and repetitions of one contended cell
    against each other: the recording with a CPU to itself is far quieter than the
    shared-machine one (44.8 pp solo), and contended runs are noisier than solo ones."""
    solo = noise_floor(records, RULE)
    cells = cell_floor(records, RULE)
    assert solo is not None and solo["n"] >= 150
    assert solo["mae_pp"] < 20, solo
    assert cells["pairs"] >= 100 and solo["mae_pp"] < cells["mae_pp"] < 40, cells


@pytest.mark.parametrize(
    ("demand", "agentd_cores", "tool_calls", "cpus", "expected"),
    [
        (1.0, 1.0, 1, 1, 2.0),  # a CPU hog on the one CPU: half of it
        (1.0, 0.33, 1, 1, 1.0 / 0.67),  # a hog held to a third: the two thirds it leaves
        (0.5, 1.0, 1, 1, 1.5),  # wanting the CPU half the time: that half stretches
        (0.0, 1.0, 1, 1, 1.0),  # I/O-bound
        (1.0, 1.0, 1, 2, 1.0),  # two CPUs, one hog: the other CPU is idle
        (1.0, 2.0, 2, 2, 2.0),  # two CPUs, two hogs
        (1.0, 0.0, 0, 1, 1.0),  # nothing running
    ],
)
def test_cpu_share_slowdown_from_first_principles(
    demand: float, agentd_cores: float, tool_calls: int, cpus: int, expected: float
) -> None:
    slowdown, share = cpu_share_slowdown(demand, agentd_cores, tool_calls, cpus)
    assert slowdown == pytest.approx(expected, rel=1e-3)
    assert 0.0 < share <= 1.0


def test_cpu_share_model_transfers_to_a_workload_never_seen(records: list[Record]) -> None:
    """Three coefficients on physical terms beat every baseline on held-out workload
    types, and the CPU term's coefficient is near its physical value (1: the
    estimate is right as it is), not something that only fits the data."""
    scores = evaluate_split(
        records, workload_of, RULE, only={"cc-compile", "py-data"}, extras=False
    )
    mae = {name: s.summary()["mae_pp"] for name, s in scores.items()}
    for baseline in ("no-slowdown", "psi-linear", "class-mean"):
        assert mae["cpu-share"] < 0.7 * mae[baseline], mae
    data = training_set(records, RULE)
    model = LEARNED["cpu-share"]()
    model.fit(data.x, data.y, data.classes)
    assert 0.7 <= model._coef[0] <= 1.4, model._coef


def test_linear_models_do_not_extrapolate_outside_the_training_range(
    records: list[Record],
) -> None:
    data = training_set(records, RULE)
    model = LEARNED["ridge"]()
    model.fit(data.x, data.y, data.classes)
    far = data.x[:5] * 1000.0
    edge = np.clip(far, data.x.min(axis=0), data.x.max(axis=0))
    np.testing.assert_allclose(
        model.predict(far, data.classes[:5])[0], model.predict(edge, data.classes[:5])[0]
    )


def test_feature_vector_matches_names() -> None:
    v = feature_vector(CandidateFeatures("gcc"), NodeWindow(), ClassProfile())
    assert len(v) == len(FEATURE_NAMES)


def test_fallback_without_a_model_file_is_the_psi_rule(tmp_path: Path) -> None:
    p = Predictor.load(tmp_path / "missing.model")
    assert p.fallback and p.model_label == FALLBACK and "no model file" in p.reason
    idle = p.predict([CandidateFeatures("gcc")], NodeWindow())[0]
    busy = p.predict(
        [CandidateFeatures("gcc"), CandidateFeatures("pytest")],
        NodeWindow(psi_cpu_some=0.5, psi_memory_some=0.1),
    )
    assert idle.predicted_slowdown == 1.0 and idle.model == FALLBACK
    assert busy[0].predicted_slowdown == pytest.approx(1.6)
    assert busy[0].low <= busy[0].predicted_slowdown <= busy[0].high
    assert p.predict([], NodeWindow()) == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"not a pickle", "not a readable model file"), (pickle.dumps({"x": 1}), "not an agentd")],
)
def test_a_bad_model_file_falls_back_with_the_reason(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "predictor.model"
    path.write_bytes(content)
    p = Predictor.load(path)
    assert p.fallback and reason in p.reason and str(path) in p.reason


def test_model_file_is_versioned(records: list[Record], tmp_path: Path) -> None:
    model_file = train(records, RULE, "ridge")
    model_file.version = MODEL_VERSION + 1
    model_file.save(tmp_path / "m")
    p = Predictor.load(tmp_path / "m")
    assert p.fallback and "version" in p.reason


def test_trained_model_round_trips_and_predicts_many_candidates(
    predictor: Predictor, records: list[Record]
) -> None:
    assert not predictor.fallback and predictor.model_label.startswith("gbt@")
    window = NodeWindow.from_dict(records[0].window_before)
    candidates = [CandidateFeatures(r.label, memory_bytes=1 << 30) for r in records[:10]]
    out = predictor.predict(candidates, window)
    assert len(out) == 10
    for p in out:
        # the low bound may be under 1: on a busy node runs beat their solo baseline
        assert 0.0 < p.low <= p.predicted_slowdown <= p.high and p.predicted_slowdown >= 1.0
        assert p.model == predictor.model_label


def test_predicts_more_slowdown_next_to_a_cpu_hog_than_alone(
    predictor: Predictor, records: list[Record]
) -> None:
    def mean_prediction(antagonist: str) -> float:
        rs = [r for r in records if r.tags["antagonist"] == antagonist]
        return float(
            np.mean(
                [
                    predictor.predict(
                        [CandidateFeatures(r.label)], NodeWindow.from_dict(r.window_before)
                    )[0].predicted_slowdown
                    for r in rs
                ]
            )
        )

    assert mean_prediction("cpu-2") > mean_prediction("solo") + 0.1


def test_training_set_targets_are_durations_over_paired_baselines(
    records: list[Record],
) -> None:
    data = training_set(records, RULE)
    assert len(data.y) >= 0.95 * len([r for r in records if r.exit_code == 0])
    assert data.x.shape == (len(data.y), len(FEATURE_NAMES))
    for y, r in zip(data.y, data.records, strict=True):
        assert y == pytest.approx(r.duration_seconds / float(r.tags[PAIRED_BASELINE_TAG]))
    solo = [y for y, r in zip(data.y, data.records, strict=True) if r.tags["antagonist"] == "solo"]
    cpu2 = [y for y, r in zip(data.y, data.records, strict=True) if r.tags["antagonist"] == "cpu-2"]
    assert np.median(solo) == pytest.approx(1.0, abs=0.1)
    # two CPU hogs on the victim's CPU: every kind of victim is slowed down
    assert np.median(cpu2) > 1.5


def test_learned_model_beats_the_baselines_on_held_out_workloads(records: list[Record]) -> None:
    held_out = {"git-ops", "pytest-suite"}
    scores = evaluate_split(records, workload_of, RULE, only=held_out, extras=False)
    assert set(scores["gbt"].per_group) == held_out
    mae = {name: s.summary()["mae_pp"] for name, s in scores.items()}
    for baseline in ("no-slowdown", "psi-linear", "class-mean"):
        assert mae["gbt"] < mae[baseline], mae


def test_learned_model_beats_no_slowdown_on_a_held_out_antagonist(records: list[Record]) -> None:
    scores = evaluate_split(records, antagonist_of, RULE, only={"cpu-2"}, extras=False)
    assert scores["gbt"].summary()["mae_pp"] < scores["no-slowdown"].summary()["mae_pp"]


def test_intervals_are_calibrated_on_held_out_classes(records: list[Record]) -> None:
    """The conformal widening uses held-out-class residuals: on a class never trained
    on, the 80% interval covers roughly 80% of runs, not the ~55% of in-sample bounds."""
    held = {"pytest-suite", "git-ops"}
    test = training_set([r for r in records if r.tags["workload"] in held], RULE)
    train_set = training_set([r for r in records if r.tags["workload"] not in held], RULE)
    model = LEARNED["gbt"]()
    model.fit(train_set.x, train_set.y, train_set.classes)
    _, low, high = model.predict(test.x, test.classes)
    coverage = float(np.mean((test.y >= low) & (test.y <= high)))
    assert 0.6 <= coverage <= 0.98, coverage


def test_train_command_writes_a_loadable_model(tmp_path: Path) -> None:
    out = tmp_path / "state" / "predictor.model"
    code = train_main(
        [
            "--dataset",
            str(DATASET),
            "--out",
            str(out),
            "--model",
            "ridge",
            "--solo-max-other-cores",
            "2",
        ]
    )
    assert code == 0
    assert read_model_file(out).model_name == "ridge"
    # Without the harness's tags no run is solo under a rule admitting no other load:
    # no baselines, a clear error, no file change.
    untagged = tmp_path / "untagged.jsonl"
    with open(DATASET) as f, open(untagged, "w") as out_f:
        for r in load_jsonl(f):
            r.tags = {}
            out_f.write(json.dumps(r.__dict__) + "\n")
    before = out.read_bytes()
    assert (
        train_main(["--dataset", str(untagged), "--out", str(out), "--solo-max-other-cores", "-1"])
        == 1
    )
    assert out.read_bytes() == before


def test_compiled_trees_match_scikit_learn(records: list[Record]) -> None:
    from sklearn.ensemble import GradientBoostingRegressor

    from agentd.predictor.models import CompiledTrees

    data = training_set(records, RULE)
    model = GradientBoostingRegressor(
        loss="quantile", alpha=0.9, n_estimators=40, max_depth=3, random_state=0
    ).fit(data.x, np.log(data.y))
    np.testing.assert_allclose(CompiledTrees(model).predict(data.x), model.predict(data.x))


def test_joint_trees_match_each_ensemble_and_survive_pickling(records: list[Record]) -> None:
    import pickle

    from sklearn.ensemble import GradientBoostingRegressor

    from agentd.predictor.models import CompiledTrees, JointTrees

    data = training_set(records, RULE)
    fitted = [
        GradientBoostingRegressor(
            loss="quantile", alpha=alpha, n_estimators=n, max_depth=depth, random_state=0
        ).fit(data.x, np.log(data.y))
        for alpha, n, depth in ((0.5, 30, 3), (0.1, 20, 2), (0.9, 25, 4))
    ]
    compiled = [CompiledTrees(m) for m in fitted]
    for rows in (data.x[:1], data.x[:10], data.x):  # batch sizes: one walk cache each
        joint = JointTrees(compiled).predict(rows)
        for i, m in enumerate(fitted):
            np.testing.assert_allclose(joint[i], m.predict(rows))
    # The lazily built arrays stay out of model files: a file written before they
    # existed has exactly the same state.
    state = pickle.loads(pickle.dumps(compiled[0])).__dict__
    assert "_joint" not in state and set(state) == set(CompiledTrees(fitted[0]).__dict__)
    np.testing.assert_allclose(
        pickle.loads(pickle.dumps(compiled[0])).predict(data.x), fitted[0].predict(data.x)
    )
