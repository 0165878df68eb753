#!/usr/bin/env python3
"""How long Predictor.predict() takes for 10 candidates (what ScorePlacement calls).

Trains the default model on the recorded dataset (tests/data/interference.jsonl),
then measures, interleaved in one loop, predict() with the trained model and with
the fallback rule (the baseline: the same call path without a model). Prints p50
and p99 per round and their spread, and the load average. The gRPC target is
p99 < 5 ms for the whole call; this is the model's share of it.

    cd /tmp && /path/to/.venv/bin/python /path/to/bench/predict_latency.py --rounds 5
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agentd.metrics.dataset import SoloRule, load_jsonl
from agentd.metrics.window import NodeWindow
from agentd.predictor import CandidateFeatures, Predictor
from agentd.predictor.train import DEFAULT_MODEL, single_threaded, train

DATASET = Path(__file__).resolve().parent.parent / "tests" / "data" / "interference.jsonl"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=10)
    args = parser.parse_args(argv)
    single_threaded()
    with open(args.dataset) as f:
        records = load_jsonl(f)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictor.model"
        train(records, SoloRule(2.0), args.model).save(path)
        model = Predictor.load(path)
    fallback = Predictor.load(None)
    labels = sorted({r.label for r in records})
    candidates = [
        CandidateFeatures(labels[i % len(labels)], memory_bytes=(i + 1) << 28, cpu_cores=1.0)
        for i in range(args.candidates)
    ]
    window = NodeWindow.from_dict(records[-1].window_before)
    for _ in range(50):  # warm-up
        model.predict(candidates, window)
    p99s = []
    print(f"model {model.model_label}, {args.candidates} candidates, load {os.getloadavg()}")
    for r in range(args.rounds):
        with_model: list[float] = []
        with_rule: list[float] = []
        one_by_one: list[float] = []
        gc.disable()
        try:
            for _ in range(args.calls):
                t = time.perf_counter()
                model.predict(candidates, window)
                with_model.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                fallback.predict(candidates, window)
                with_rule.append((time.perf_counter() - t) * 1000)
                # what ScorePlacement does today: one predict() per candidate
                t = time.perf_counter()
                for c in candidates:
                    model.predict([c], window)
                one_by_one.append((time.perf_counter() - t) * 1000)
        finally:
            gc.enable()
        p99s.append(pct(with_model, 99))
        print(
            f"round {r}: model p50 {pct(with_model, 50):.3f} ms p99 {pct(with_model, 99):.3f} ms; "
            f"one call per candidate p50 {pct(one_by_one, 50):.3f} ms "
            f"p99 {pct(one_by_one, 99):.3f} ms; "
            f"fallback p50 {pct(with_rule, 50):.3f} ms; "
            f"ratio p50 {pct(with_model, 50) / pct(with_rule, 50):.0f}x; "
            f"load {[round(x, 2) for x in os.getloadavg()]}",
            flush=True,
        )
    print(
        f"predict() p99 for {args.candidates} candidates over {args.rounds} rounds: "
        f"median {statistics.median(p99s):.3f} ms (min {min(p99s):.3f}, max {max(p99s):.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
