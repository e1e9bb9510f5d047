"""Serves a classifier trained by modelfleet (``modelfleet.training``) from its artifact folder.

The folder alone says everything: the manifest names the trainer that rebuilds the classifier, and
loading verifies every payload file first. An embedding classifier embeds in this process with the
fleet's MiniLM export (cached under ``data_dir``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from modelfleet.models.model import Batching, Model
from modelfleet.training.artifact import load_classifier
from modelfleet.training.trainer import Classifier

__all__ = ["ClassifyInput", "ClassifyOutput", "LabelScore", "TrainedClassifier", "load_classifier"]

MAX_TOP_K = 100


class ClassifyInput(BaseModel):
    text: str = Field(min_length=1, max_length=20_000)
    top_k: int | None = Field(
        default=None, ge=0, le=MAX_TOP_K, description="also return the k most probable labels; 0 for none"
    )


class LabelScore(BaseModel):
    label: str
    score: float


class ClassifyOutput(BaseModel):
    label: str
    score: float = Field(description="probability of the label, 0 to 1")
    scores: list[LabelScore] | None = Field(default=None, description="top-k labels, most probable first")


class TrainedClassifier(Model[ClassifyInput, ClassifyOutput]):
    """The most probable label of a text, its probability and, on request, the top-k labels.

    ``artifact_dir`` is a folder written by ``modelfleet.training.save_classifier``; ``top_k`` is the
    number of ranked labels returned when a request does not say; ``threads`` bounds the embedder's
    threads (embedding classifiers only); ``data_dir`` holds the MiniLM export cache.
    """

    input_type = ClassifyInput
    output_type = ClassifyOutput
    description = "A text classifier trained by modelfleet: label, probability and optional top-k labels."
    # Greedy batching, as for the embedder: a lone request runs at once, and whatever queues while a
    # batch runs forms the next one. A TF-IDF batch costs about what one text does.
    batching = Batching(max_batch_size=64, max_wait_ms=0)
    inline = False
    max_concurrency = 1

    def __init__(
        self, artifact_dir: str, top_k: int = 0, threads: int = 2, data_dir: str = ".modelfleet"
    ) -> None:
        if not artifact_dir:
            raise ValueError("artifact_dir must name a classifier artifact folder")
        if not 0 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be between 0 and {MAX_TOP_K}, got {top_k}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.artifact_dir = Path(artifact_dir)
        self.top_k = top_k
        self.threads = threads
        self.data_dir = data_dir
        self._classifier: Classifier | None = None

    @property
    def labels(self) -> list[str]:
        """The classes this model can answer; empty before ``load``."""
        return self._classifier.labels if self._classifier is not None else []

    def load(self) -> None:
        self._classifier = load_classifier(self.artifact_dir, data_dir=self.data_dir, threads=self.threads)

    def predict(self, inputs: list[ClassifyInput]) -> list[ClassifyOutput]:
        if self._classifier is None:
            raise RuntimeError("load() has not been called")
        if not inputs:
            return []
        labels = self._classifier.labels
        probabilities = self._classifier.predict_proba([item.text for item in inputs])
        outputs = []
        for item, row in zip(inputs, probabilities, strict=True):
            top_k = self.top_k if item.top_k is None else item.top_k
            best = int(np.argmax(row))
            scores = None
            if top_k:
                # Stable sort: equal probabilities keep the labels' order, so answers are reproducible.
                ranked = np.argsort(-row, kind="stable")[:top_k]
                scores = [LabelScore(label=labels[i], score=float(row[i])) for i in ranked]
            outputs.append(ClassifyOutput(label=labels[best], score=float(row[best]), scores=scores))
        return outputs
