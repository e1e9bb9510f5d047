"""Training text classifiers on labelled data, and the artifact folders they are served from.

Nothing here imports scikit-learn or the embedder until a trainer fits or loads, so processes that
only look trainers up (or never train) stay light.
"""

from __future__ import annotations

from modelfleet.training.artifact import (
    ArtifactError,
    Manifest,
    load_classifier,
    read_manifest,
    save_classifier,
)
from modelfleet.training.evaluation import Evaluation, evaluate, score_predictions, stratified_split
from modelfleet.training.trainer import Classifier, Progress, Trainer
from modelfleet.training.trainers import TRAINERS, get_trainer

__all__ = [
    "TRAINERS",
    "ArtifactError",
    "Classifier",
    "Evaluation",
    "Manifest",
    "Progress",
    "Trainer",
    "evaluate",
    "get_trainer",
    "load_classifier",
    "read_manifest",
    "save_classifier",
    "score_predictions",
    "stratified_split",
]
