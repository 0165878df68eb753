"""The degradation predictor: features, models, training and evaluation."""

from __future__ import annotations

from pathlib import Path

import structlog

from agentd.config import Config
from agentd.metrics.window import NodeWindow
from agentd.predictor.features import CandidateFeatures
from agentd.predictor.predictor import Prediction, Predictor

__all__ = ["CandidateFeatures", "NodeWindow", "Prediction", "Predictor", "load_predictor"]

MODEL_FILE = "predictor.model"


def model_path(cfg: Config) -> Path:
    return cfg.predictor.model or Path(cfg.daemon.state_dir) / MODEL_FILE


def load_predictor(cfg: Config) -> Predictor:
    """The daemon's predictor: the configured model file, or the fallback rule."""
    predictor = Predictor.load(model_path(cfg))
    structlog.get_logger("agentd.predictor").info(
        "predictor.ready", model=predictor.model_label, reason=predictor.reason
    )
    return predictor
