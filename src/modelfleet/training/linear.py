"""A logistic-regression head over any features, kept as plain arrays.

scikit-learn fits the head; predicting is a matrix product and a softmax in numpy, so the saved head
is two arrays in an ``.npz`` (loaded without pickle) and serving an embedding classifier needs no
scikit-learn at all. The classifier a trainer returns predicts through the same code as the one
loaded from disk, so a save/load round trip gives identical probabilities.
"""

from __future__ import annotations

import time
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from modelfleet.training.artifact import ArtifactError
from modelfleet.training.trainer import FloatArray

__all__ = ["HEAD_FILE", "Features", "LinearClassifier", "LinearHead", "fit_linear_head"]

HEAD_FILE = "head.npz"

Float32Array = npt.NDArray[np.float32]


class Features(Protocol):
    """Turns texts into a numeric matrix (dense or scipy-sparse) with ``dimension`` columns."""

    @property
    def dimension(self) -> int:
        """Columns of the matrix ``transform`` returns."""
        ...

    def transform(self, texts: Sequence[str]) -> Any:
        """A ``(len(texts), dimension)`` matrix the head multiplies."""
        ...

    def write(self, directory: Path) -> None:
        """Write what ``transform`` needs into ``directory``."""
        ...


class LinearHead:
    """Class scores ``features @ coef.T + intercept``: softmax over them, or a sigmoid for two classes.

    For two classes scikit-learn keeps one row of coefficients: the log-odds of ``labels[1]``.
    """

    def __init__(self, labels: list[str], coef: Float32Array, intercept: Float32Array) -> None:
        rows = 1 if len(labels) == 2 else len(labels)
        if len(labels) < 2 or coef.ndim != 2 or coef.shape[0] != rows or intercept.shape != (rows,):
            raise ValueError(
                f"a head for {len(labels)} labels needs coef of shape ({rows}, d) and intercept ({rows},); "
                f"got {coef.shape} and {intercept.shape}"
            )
        self.labels = labels
        self.coef = coef
        self.intercept = intercept

    @property
    def dimension(self) -> int:
        return int(self.coef.shape[1])

    def probabilities(self, features: Any) -> FloatArray:
        logits = np.asarray(features @ self.coef.T, dtype=np.float64) + self.intercept.astype(np.float64)
        if len(self.labels) == 2:
            # sigmoid(z) written as exp(-log(1 + e^-z)), which overflows for no z.
            positive = np.exp(-np.logaddexp(0.0, -logits[:, 0]))
            return np.column_stack([1.0 - positive, positive])
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float64)

    def write(self, directory: Path) -> None:
        np.savez(directory / HEAD_FILE, coef=self.coef, intercept=self.intercept)

    @classmethod
    def read(cls, directory: Path, labels: list[str], dimension: int) -> LinearHead:
        """Load the head saved in ``directory``; raises ArtifactError when it does not fit ``labels``."""
        try:
            with np.load(directory / HEAD_FILE, allow_pickle=False) as arrays:
                coef = np.asarray(arrays["coef"], dtype=np.float32)
                intercept = np.asarray(arrays["intercept"], dtype=np.float32)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
            raise ArtifactError(f"{directory}: {HEAD_FILE} is not a readable head: {err}") from None
        try:
            head = cls(labels, coef, intercept)
        except ValueError as err:
            raise ArtifactError(f"{directory}: {HEAD_FILE} does not match the manifest: {err}") from None
        if head.dimension != dimension:
            raise ArtifactError(
                f"{directory}: {HEAD_FILE} expects {head.dimension} features, "
                f"but the payload makes {dimension}"
            )
        return head


def fit_linear_head(
    features: Any, labels: Sequence[str], c: float, max_iter: int, class_weight: str | None
) -> tuple[LinearHead, dict[str, Any]]:
    """Fit L2-regularised logistic regression (lbfgs); returns the head and facts about the fit.

    A fit that stops at ``max_iter`` is reported as ``converged: false`` rather than raised: the
    model is usually still good, and the caller decides (the figures go into the manifest).
    """
    from sklearn.exceptions import ConvergenceWarning  # type: ignore[import-untyped]
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    model = LogisticRegression(C=c, max_iter=max_iter, class_weight=class_weight)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features, list(labels))
    seconds = time.perf_counter() - started
    iterations = int(np.max(model.n_iter_))
    # float32 halves the payload (77 classes x 200k TF-IDF columns is 60 MB in float64) and costs
    # nothing measurable in accuracy; the fitted classifier uses the same float32 arrays it saves.
    head = LinearHead(
        [str(label) for label in model.classes_],
        np.ascontiguousarray(model.coef_, dtype=np.float32),
        np.ascontiguousarray(model.intercept_, dtype=np.float32),
    )
    facts = {"iterations": iterations, "converged": iterations < max_iter, "head_seconds": round(seconds, 3)}
    return head, facts


class LinearClassifier:
    """A :class:`~modelfleet.training.trainer.Classifier` made of features and a linear head."""

    def __init__(
        self,
        trainer: str,
        params: dict[str, Any],
        features: Features,
        head: LinearHead,
        training: dict[str, Any],
    ) -> None:
        if features.dimension != head.dimension:
            raise ValueError(f"features make {features.dimension} columns, the head takes {head.dimension}")
        self._trainer = trainer
        self._params = params
        self._training = training
        self.features = features
        self.head = head

    @property
    def trainer(self) -> str:
        return self._trainer

    @property
    def labels(self) -> list[str]:
        return list(self.head.labels)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._params)

    @property
    def training(self) -> dict[str, Any]:
        return dict(self._training)

    def predict_proba(self, texts: Sequence[str]) -> FloatArray:
        if not texts:
            return np.zeros((0, len(self.head.labels)), dtype=np.float64)
        return self.head.probabilities(self.features.transform(texts))

    def write_payload(self, directory: Path) -> None:
        self.features.write(directory)
        self.head.write(directory)
