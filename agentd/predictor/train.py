"""Training: dataset records -> feature rows -> a model file, with one command.

    python -m agentd.predictor.train --dataset /var/lib/agentd/dataset.sqlite \\
        --out /var/lib/agentd/predictor.model [--model cpu-share]

`--dataset` takes the daemon's SQLite file or a JSON-lines export. The daemon loads
the model at start ([predictor] model); restart it (or SIGHUP when that exists) to
pick up a new one.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agentd.metrics.dataset import (
    Baseline,
    Dataset,
    Record,
    SoloRule,
    baseline_seconds,
    load_jsonl,
    solo_baselines,
)
from agentd.metrics.window import NodeWindow
from agentd.predictor.features import ClassProfile, candidate_of, feature_vector
from agentd.predictor.models import LEARNED, Array
from agentd.predictor.predictor import ModelFile

#: chosen on the evaluation in docs/predictor.md: the lowest MAE on both held-out
#: splits (quiet recording), and the most transparent (three coefficients)
DEFAULT_MODEL = "cpu-share"


@dataclass
class TrainingSet:
    x: Array
    y: Array  # slowdown = duration / solo baseline duration
    classes: list[str]
    records: list[Record]
    baselines: dict[str, Baseline]


def single_threaded() -> None:
    """One thread for numpy/scikit-learn: the node is shared with the workloads it
    predicts for, and OpenMP spinning on a busy 2-core node made fits 10x slower."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def load_records(path: Path) -> list[Record]:
    if path.suffix in (".jsonl", ".json"):
        with open(path) as f:
            return load_jsonl(f)
    dataset = Dataset(path)
    try:
        return dataset.records()
    finally:
        dataset.close()


def training_set(
    records: list[Record],
    rule: SoloRule,
    baselines: dict[str, Baseline] | None = None,
    hide_profile_of: set[str] | None = None,
    window: str = "window_before",
) -> TrainingSet:
    """Rows for every successful record with a solo baseline: the paired one the
    harness measured around it, else its class's solo median.

    `hide_profile_of`: classes whose profile the features must not see (the strict
    "never seen at all" evaluation). `window`: which stored node window the features
    read; "window_run" (the node during the run, known only in hindsight) serves the
    evaluation's estimate of how much of the error is the future's, not the model's.
    """
    baselines = baselines if baselines is not None else solo_baselines(records, rule)
    hidden = hide_profile_of or set()
    rows, ys, classes, kept = [], [], [], []
    for r in records:
        solo = baseline_seconds(r, baselines)
        if r.exit_code != 0 or solo is None or solo <= 0:
            continue
        base = baselines.get(r.command_class)
        profile = ClassProfile() if r.command_class in hidden else ClassProfile.of(base)
        node = NodeWindow.from_dict(getattr(r, window))
        rows.append(feature_vector(candidate_of(r), node, profile))
        ys.append(r.duration_seconds / solo)
        classes.append(r.command_class)
        kept.append(r)
    return TrainingSet(
        x=np.array(rows, dtype=np.float64).reshape(len(rows), -1),
        y=np.maximum(np.array(ys, dtype=np.float64), 1e-3),
        classes=classes,
        records=kept,
        baselines=baselines,
    )


def train(records: list[Record], rule: SoloRule, model_name: str = DEFAULT_MODEL) -> ModelFile:
    data = training_set(records, rule)
    if len(data.y) < 10:
        raise ValueError(f"{len(data.y)} usable records; need at least 10 to train")
    model = LEARNED[model_name]()
    model.fit(data.x, data.y, data.classes)
    return ModelFile(
        model_name=model_name, model=model, baselines=data.baselines, records=len(data.y)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agentd-predictor-train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dataset", type=Path, required=True, help="dataset.sqlite or .jsonl")
    parser.add_argument("--out", type=Path, required=True, help="model file to write")
    parser.add_argument("--model", choices=sorted(LEARNED), default=DEFAULT_MODEL)
    parser.add_argument(
        "--solo-max-other-cores",
        type=float,
        default=SoloRule().max_other_cores,
        help="a run is solo when no agentd neighbour ran and the rest of the node used "
        "at most this many cores",
    )
    args = parser.parse_args(argv)
    single_threaded()
    records = load_records(args.dataset)
    try:
        model_file = train(records, SoloRule(args.solo_max_other_cores), args.model)
    except ValueError as e:
        print(f"train: {e}", file=sys.stderr)
        return 1
    model_file.save(args.out)
    print(
        f"trained {args.model} on {model_file.records} records "
        f"({len(model_file.baselines)} command classes) -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
