"""The contract between the training room and its trainers: fit texts to labels, load what was saved.

A trainer turns labelled texts into a :class:`Classifier`; :mod:`modelfleet.training.artifact` writes
that classifier to a folder (payload files plus a manifest) and reads it back through the trainer
named in the manifest. Serving needs only ``predict_proba`` and ``labels``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ValidationError

from modelfleet.errors import InvalidInput
from modelfleet.models.runner import describe_validation_error

if TYPE_CHECKING:
    from modelfleet.training.artifact import Manifest

__all__ = [
    "Classifier",
    "FloatArray",
    "Progress",
    "Trainer",
    "check_examples",
    "ignore_progress",
    "resolve_params",
]

FloatArray = npt.NDArray[np.float64]

Progress = Callable[[float, str], None]
"""Called during a fit with the fraction done (0.0 to 1.0, never decreasing) and what is happening."""


def ignore_progress(fraction: float, message: str) -> None:
    """The progress callback used when the caller passes none."""


class Classifier(Protocol):
    """A fitted text classifier: class probabilities for texts, and what it takes to save it."""

    @property
    def trainer(self) -> str:
        """The name of the trainer that made it (and that loads it back)."""
        ...

    @property
    def labels(self) -> list[str]:
        """The classes, in the column order of ``predict_proba``."""
        ...

    @property
    def params(self) -> dict[str, Any]:
        """The full hyperparameters it was fitted with (defaults filled in), JSON-ready."""
        ...

    @property
    def training(self) -> dict[str, Any]:
        """Facts about the fit (examples, seconds, iterations, convergence), JSON-ready."""
        ...

    def predict_proba(self, texts: Sequence[str]) -> FloatArray:
        """Probabilities of shape ``(len(texts), len(labels))``; each row sums to 1."""
        ...

    def write_payload(self, directory: Path) -> None:
        """Write the files needed to rebuild this classifier into ``directory`` (which exists)."""
        ...


class Trainer(Protocol):
    """Fits one kind of classifier, and loads classifiers of that kind from their saved payload."""

    @property
    def name(self) -> str:
        """The name the trainer is registered under and that manifests record."""
        ...

    @property
    def params_type(self) -> type[BaseModel]:
        """The pydantic model of its hyperparameters (defaults, bounds, descriptions)."""
        ...

    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence[str],
        params: Mapping[str, Any] | None = None,
        progress: Progress = ignore_progress,
    ) -> Classifier:
        """Fit on ``texts`` and their ``labels``; ``params`` override the trainer's defaults.

        Raises InvalidInput for unknown or invalid params and for unusable data (mismatched lengths,
        empty texts, fewer than two classes).
        """
        ...

    def load(self, directory: Path, manifest: Manifest) -> Classifier:
        """Rebuild a classifier from a payload whose files the caller has already verified.

        Raises ArtifactError when the payload does not fit the manifest.
        """
        ...


def resolve_params(trainer: str, params_type: type[BaseModel], params: Mapping[str, Any] | None) -> Any:
    """Validate overrides against a trainer's params model; raises InvalidInput naming each bad key."""
    try:
        return params_type.model_validate(dict(params or {}))
    except ValidationError as err:
        summary, details = describe_validation_error(err, prefix="params.")
        raise InvalidInput(f"invalid params for trainer {trainer!r}: {summary}", details) from None


def check_examples(texts: Sequence[str], labels: Sequence[str]) -> list[str]:
    """Refuse data no classifier can be fitted on; returns the distinct labels, sorted.

    Raises InvalidInput naming the first offending example.
    """
    if len(texts) != len(labels):
        raise InvalidInput(f"got {len(texts)} texts but {len(labels)} labels; they must pair up")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            raise InvalidInput(f"texts[{i}] must be a non-empty string, got {text!r}")
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label:
            raise InvalidInput(f"labels[{i}] must be a non-empty string, got {label!r}")
    classes = sorted(set(labels))
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise InvalidInput(f"need at least 2 classes to train a classifier, got {found}")
    return classes
