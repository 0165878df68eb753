"""The serving side: load a model file (or fall back to a rule) and predict.

`Predictor.predict(candidates, window)` is what NodeService.ScorePlacement calls: one
feature matrix for all candidates, one model call, no I/O. The model file is a
pickle written by `agentd.predictor.train` and read only from agentd's own state
directory (root-owned): pickle executes code on load, so never point `[predictor]
model` at a file others can write.
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from agentd.metrics.dataset import Baseline
from agentd.metrics.window import NodeWindow
from agentd.predictor.features import (
    FEATURE_NAMES,
    CandidateFeatures,
    ClassProfile,
    feature_vector,
    window_values,
)
from agentd.predictor.models import SlowdownModel, psi_rule

log = structlog.get_logger("agentd.predictor")

MODEL_FORMAT = "agentd-predictor"
#: 2: paired-baseline targets, class resource profile features; 3: the run-queue
#: window, the CFS share estimate, I/O share and CPU-sharing features
MODEL_VERSION = 3
FALLBACK = "fallback:psi-linear"


@dataclass(frozen=True)
class Prediction:
    predicted_slowdown: float
    low: float
    high: float
    model: str  # "gbt@<trained_at>" or "fallback:psi-linear"


@dataclass
class ModelFile:
    """What train writes: the model, the class baselines it was trained with, and
    enough metadata to refuse a file from an incompatible agentd."""

    model_name: str
    model: SlowdownModel
    baselines: dict[str, Baseline]
    feature_names: tuple[str, ...] = FEATURE_NAMES
    trained_at: float = field(default_factory=time.time)
    records: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    format: str = MODEL_FORMAT
    version: int = MODEL_VERSION

    def save(self, path: Path | str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)  # atomic: a daemon loading it never sees half a file


class ModelFileError(Exception):
    pass


def read_model_file(path: Path | str) -> ModelFile:
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ModelFileError(f"{path}: not a readable model file ({e})") from None
    if not isinstance(data, ModelFile) or data.format != MODEL_FORMAT:
        raise ModelFileError(f"{path}: not an agentd predictor model")
    if data.version != MODEL_VERSION:
        raise ModelFileError(f"{path}: model format version {data.version}, need {MODEL_VERSION}")
    if tuple(data.feature_names) != FEATURE_NAMES:
        raise ModelFileError(f"{path}: trained on other features; retrain with this agentd")
    return data


class Predictor:
    def __init__(self, model_file: ModelFile | None, reason: str = "") -> None:
        self._file = model_file
        self.reason = reason  # why the fallback is in use
        if model_file is None:
            self.model_label = FALLBACK
        else:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(model_file.trained_at))
            self.model_label = f"{model_file.model_name}@{stamp}"

    @classmethod
    def load(cls, path: Path | str | None) -> Predictor:
        """The model at `path`; the fallback (with the reason) when there is none or it
        cannot be used. Never raises: a bad file must not keep the daemon from starting."""
        if path is None:
            return cls(None, "no model path")
        try:
            model_file = read_model_file(path)
        except FileNotFoundError:
            return cls(None, f"no model file at {path}")
        except ModelFileError as e:
            log.warning("predictor.model_unusable", error=str(e))
            return cls(None, str(e))
        log.info("predictor.loaded", path=str(path), model=model_file.model_name)
        return cls(model_file)

    @property
    def fallback(self) -> bool:
        return self._file is None

    def profile(self, command_class: str) -> ClassProfile:
        if self._file is None:
            return ClassProfile()
        return ClassProfile.of(self._file.baselines.get(command_class))

    def predict(self, candidates: list[CandidateFeatures], window: NodeWindow) -> list[Prediction]:
        if not candidates:
            return []
        if self._file is None:
            mid, low, high = psi_rule(
                window.psi_cpu_some, window.psi_memory_some, window.psi_io_some
            )
            return [Prediction(mid, low, high, FALLBACK) for _ in candidates]
        classes = [c.command_class for c in candidates]
        shared = window_values(window)
        x = np.array(
            [
                feature_vector(c, window, self.profile(cls), shared)
                for c, cls in zip(candidates, classes, strict=True)
            ],
            dtype=np.float64,
        )
        mid, low, high = self._file.model.predict(x, classes)
        return [
            Prediction(float(m), float(lo), float(hi), self.model_label)
            for m, lo, hi in zip(mid, low, high, strict=True)
        ]
