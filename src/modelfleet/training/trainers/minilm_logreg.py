"""MiniLM sentence embeddings, then logistic regression: the stronger choice for intents.

Embeddings come from the fleet's own :class:`~modelfleet.models.builtin.embedder.MiniLMEmbedder`,
run in this process on its cached ONNX export, so a served classifier sees exactly the features it
was trained on. The payload is only the head; the manifest records which export made the
embeddings, and loading refuses an artifact whose export recipe differs from the local one.
Serving needs numpy and onnxruntime, not scikit-learn.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from modelfleet.models.builtin.embedder import EMBEDDING_DIM, MANIFEST_FILE, EmbedInput, MiniLMEmbedder
from modelfleet.training.artifact import ArtifactError, Manifest
from modelfleet.training.linear import LinearClassifier, LinearHead, fit_linear_head
from modelfleet.training.trainer import Classifier, Progress, check_examples, ignore_progress, resolve_params
from modelfleet.training.trainers import require_library

__all__ = ["MiniLMFeatures", "MiniLMLogRegParams", "MiniLMLogRegTrainer"]

NAME = "minilm-logreg"
# The embedder accepts texts up to this many characters and reads only the first 256 tokens, so
# cutting longer training texts here changes no embedding.
_MAX_CHARS = 20_000
# Share of a fit's progress spent embedding; the rest is the logistic regression.
_EMBEDDING_SHARE = 0.9
# The export facts that decide the embeddings; a mismatch means the head no longer fits them.
_EXPORT_KEYS = ("recipe", "source_package", "source_version", "max_tokens", "embedding_dim")


class MiniLMLogRegParams(BaseModel):
    """Hyperparameters; ``runtime`` picks the embedder engine (served with the same one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    C: float = Field(10.0, gt=0, description="inverse L2 regularisation strength")
    max_iter: int = Field(2000, ge=1, le=100_000, description="lbfgs iteration cap")
    runtime: Literal["onnx-int8", "onnx"] = "onnx-int8"
    batch_size: int = Field(64, ge=1, le=1024, description="texts per embedder call")
    class_weight: Literal["balanced"] | None = None


class MiniLMFeatures:
    """L2-normalised MiniLM embeddings, computed in batches of texts of similar length."""

    def __init__(self, embedder: MiniLMEmbedder, batch_size: int) -> None:
        self.embedder = embedder
        self.batch_size = batch_size

    @property
    def dimension(self) -> int:
        return EMBEDDING_DIM

    def transform(
        self, texts: Sequence[str], on_batch: Callable[[int], None] | None = None
    ) -> npt.NDArray[np.float32]:
        """Embeddings in input order; ``on_batch`` hears how many texts are done after each batch."""
        # Batches pad to their longest text, so grouping similar lengths saves most of the padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            outputs = self.embedder.predict([EmbedInput(text=texts[i][:_MAX_CHARS]) for i in chunk])
            vectors[chunk] = np.array([output.embedding for output in outputs], dtype=np.float32)
            if on_batch is not None:
                on_batch(start + len(chunk))
        return vectors

    def write(self, directory: Path) -> None:
        """Nothing to write: the export is shared and the manifest pins its recipe."""


class MiniLMLogRegTrainer:
    """Fits a logistic-regression head on MiniLM embeddings; see :class:`MiniLMLogRegParams`.

    ``data_dir`` holds the embedder's ONNX export cache; ``threads`` bounds its threads.
    """

    name = NAME
    params_type = MiniLMLogRegParams

    def __init__(self, data_dir: str = ".modelfleet", threads: int = 2) -> None:
        self.data_dir = data_dir
        self.threads = threads
        self._embedders: dict[str, MiniLMEmbedder] = {}

    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence[str],
        params: Mapping[str, Any] | None = None,
        progress: Progress = ignore_progress,
    ) -> Classifier:
        resolved: MiniLMLogRegParams = resolve_params(NAME, MiniLMLogRegParams, params)
        check_examples(texts, labels)
        require_library(NAME, "sklearn", "train")
        started = time.perf_counter()
        progress(0.0, "loading the embedder")
        features = MiniLMFeatures(self._embedder(resolved.runtime), resolved.batch_size)
        total = len(texts)

        def embedded(done: int) -> None:
            progress(_EMBEDDING_SHARE * done / total, f"embedded {done}/{total} texts")

        matrix = features.transform(texts, on_batch=embedded)
        embedding_seconds = time.perf_counter() - started
        progress(_EMBEDDING_SHARE, "fitting logistic regression")
        head, facts = fit_linear_head(matrix, labels, resolved.C, resolved.max_iter, resolved.class_weight)
        training = {
            "examples": total,
            "features": features.dimension,
            "embedder": self._export_facts(resolved.runtime),
            "embedding_seconds": round(embedding_seconds, 3),
            **facts,
            "seconds": round(time.perf_counter() - started, 3),
        }
        progress(1.0, "done")
        return LinearClassifier(NAME, resolved.model_dump(mode="json"), features, head, training)

    def load(self, directory: Path, manifest: Manifest) -> Classifier:
        try:
            params = MiniLMLogRegParams.model_validate(manifest.params)
        except ValueError as err:
            raise ArtifactError(f"{directory}: the manifest's params are not {NAME} params: {err}") from None
        head = LinearHead.read(directory, manifest.labels, EMBEDDING_DIM)
        trained_on = manifest.training.get("embedder")
        local = self._export_facts(params.runtime)
        if trained_on != local:
            raise ArtifactError(
                f"{directory}: trained on embeddings from MiniLM export {trained_on}, but this machine's "
                f"export is {local}; the head does not fit these embeddings: retrain it"
            )
        features = MiniLMFeatures(self._embedder(params.runtime), params.batch_size)
        return LinearClassifier(NAME, params.model_dump(mode="json"), features, head, dict(manifest.training))

    def _embedder(self, runtime: str) -> MiniLMEmbedder:
        if runtime not in self._embedders:
            embedder = MiniLMEmbedder(runtime=runtime, threads=self.threads, data_dir=self.data_dir)
            embedder.load()
            self._embedders[runtime] = embedder
        return self._embedders[runtime]

    def _export_facts(self, runtime: str) -> dict[str, Any]:
        embedder = self._embedder(runtime)
        export = json.loads((embedder.artifact_dir / MANIFEST_FILE).read_text())
        return {"runtime": runtime, **{key: export.get(key) for key in _EXPORT_KEYS}}
