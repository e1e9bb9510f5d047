"""TF-IDF word and character n-grams, then logistic regression: fast to train, strong on short texts.

The defaults (word 1-2-grams and char_wb 2-5-grams, sublinear tf, C=10) are the ones the shared
data READMEs measured best: macro-F1 0.984 on SMS spam, accuracy 0.914 on Banking77.
The payload is the vocabularies as JSON and the idf weights and head as ``.npz``: no pickles.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelfleet.errors import InvalidInput
from modelfleet.training.artifact import ArtifactError, Manifest
from modelfleet.training.linear import LinearClassifier, LinearHead, fit_linear_head
from modelfleet.training.trainer import Classifier, Progress, check_examples, ignore_progress, resolve_params
from modelfleet.training.trainers import require_library

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer  # type: ignore[import-untyped]

__all__ = ["TfidfFeatures", "TfidfLogRegParams", "TfidfLogRegTrainer"]

NAME = "tfidf-logreg"
VOCABULARY_FILE = "vocabulary.json"
IDF_FILE = "idf.npz"
# Share of a fit's progress spent on vectorising; the rest is the logistic regression.
_VECTORISING_SHARE = 0.4


class TfidfLogRegParams(BaseModel):
    """Hyperparameters; a ``None`` n-gram range leaves that analyzer out (one of them must stay)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    C: float = Field(10.0, gt=0, description="inverse L2 regularisation strength")
    max_iter: int = Field(2000, ge=1, le=100_000, description="lbfgs iteration cap")
    word_ngram_range: tuple[int, int] | None = (1, 2)
    char_ngram_range: tuple[int, int] | None = (2, 5)
    sublinear_tf: bool = True
    lowercase: bool = True
    min_df: int = Field(1, ge=1, description="drop n-grams seen in fewer training texts")
    max_features: int | None = Field(
        None, ge=1, description="keep only the most frequent n-grams, per analyzer"
    )
    class_weight: Literal["balanced"] | None = None

    @model_validator(mode="after")
    def _ranges(self) -> TfidfLogRegParams:
        if self.word_ngram_range is None and self.char_ngram_range is None:
            raise ValueError("word_ngram_range and char_ngram_range cannot both be null")
        for field, value in (
            ("word_ngram_range", self.word_ngram_range),
            ("char_ngram_range", self.char_ngram_range),
        ):
            if value is not None and not 1 <= value[0] <= value[1] <= 10:
                raise ValueError(
                    f"{field} must be [low, high] with 1 <= low <= high <= 10, got {list(value)}"
                )
        return self


def _analyzers(params: TfidfLogRegParams) -> dict[str, dict[str, Any]]:
    """The vectorizers ``params`` asks for, by payload key, as TfidfVectorizer keyword arguments."""
    common = {"sublinear_tf": params.sublinear_tf, "lowercase": params.lowercase}
    analyzers = {}
    if params.word_ngram_range is not None:
        analyzers["word"] = {"analyzer": "word", "ngram_range": params.word_ngram_range, **common}
    if params.char_ngram_range is not None:
        analyzers["char_wb"] = {"analyzer": "char_wb", "ngram_range": params.char_ngram_range, **common}
    return analyzers


class TfidfFeatures:
    """Fitted TF-IDF vectorizers whose outputs sit side by side (what sklearn's FeatureUnion does)."""

    def __init__(self, vectorizers: dict[str, TfidfVectorizer]) -> None:
        self.vectorizers = vectorizers

    @property
    def dimension(self) -> int:
        return sum(len(v.vocabulary_) for v in self.vectorizers.values())

    def transform(self, texts: Sequence[str]) -> Any:
        import scipy.sparse  # type: ignore[import-untyped]

        return scipy.sparse.hstack([v.transform(texts) for v in self.vectorizers.values()], format="csr")

    def write(self, directory: Path) -> None:
        vocabularies = {}
        for key, vectorizer in self.vectorizers.items():
            terms = [""] * len(vectorizer.vocabulary_)
            for term, index in vectorizer.vocabulary_.items():
                terms[index] = term
            vocabularies[key] = terms
        (directory / VOCABULARY_FILE).write_text(
            json.dumps(vocabularies, ensure_ascii=False), encoding="utf-8"
        )
        np.savez(directory / IDF_FILE, **{key: v.idf_ for key, v in self.vectorizers.items()})

    @classmethod
    def read(cls, directory: Path, params: TfidfLogRegParams) -> TfidfFeatures:
        """Rebuild the vectorizers ``params`` describes; raises ArtifactError when the payload differs."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        analyzers = _analyzers(params)
        try:
            vocabularies = json.loads((directory / VOCABULARY_FILE).read_text(encoding="utf-8"))
            with np.load(directory / IDF_FILE, allow_pickle=False) as arrays:
                idfs = {key: np.asarray(arrays[key], dtype=np.float64) for key in arrays.files}
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise ArtifactError(f"{directory}: unreadable TF-IDF payload: {err}") from None
        if (
            not isinstance(vocabularies, dict)
            or set(vocabularies) != set(analyzers)
            or set(idfs) != set(analyzers)
        ):
            raise ArtifactError(
                f"{directory}: the TF-IDF payload does not hold the analyzers "
                f"its params name ({', '.join(analyzers)})"
            )
        vectorizers = {}
        for key, kwargs in analyzers.items():
            terms = vocabularies[key]
            if (
                not isinstance(terms, list)
                or not all(isinstance(t, str) for t in terms)
                or len(set(terms)) != len(terms)
                or idfs[key].shape != (len(terms),)
            ):
                raise ArtifactError(f"{directory}: the {key} vocabulary and idf weights do not match")
            vectorizer = TfidfVectorizer(**kwargs, vocabulary={term: i for i, term in enumerate(terms)})
            # idf_ is settable for exactly this: giving a vectorizer fitted weights without refitting.
            vectorizer.idf_ = idfs[key]
            vectorizers[key] = vectorizer
        return cls(vectorizers)


class TfidfLogRegTrainer:
    """Fits :class:`TfidfFeatures` plus a logistic-regression head; see :class:`TfidfLogRegParams`."""

    name = NAME
    params_type = TfidfLogRegParams

    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence[str],
        params: Mapping[str, Any] | None = None,
        progress: Progress = ignore_progress,
    ) -> Classifier:
        resolved: TfidfLogRegParams = resolve_params(NAME, TfidfLogRegParams, params)
        check_examples(texts, labels)
        require_library(NAME, "sklearn", "train")
        import scipy.sparse
        from sklearn.feature_extraction.text import TfidfVectorizer

        started = time.perf_counter()
        progress(0.0, "vectorising")
        analyzers = _analyzers(resolved)
        vectorizers = {}
        blocks = []
        for done, (key, kwargs) in enumerate(analyzers.items(), start=1):
            vectorizer = TfidfVectorizer(**kwargs, min_df=resolved.min_df, max_features=resolved.max_features)
            try:
                blocks.append(vectorizer.fit_transform(texts))
            except ValueError as err:
                # sklearn's "empty vocabulary" when no text yields a single n-gram of that kind.
                raise InvalidInput(f"{key} n-grams: {err}") from None
            vectorizers[key] = vectorizer
            progress(
                _VECTORISING_SHARE * done / len(analyzers), f"{key}: {len(vectorizer.vocabulary_)} n-grams"
            )
        features = TfidfFeatures(vectorizers)
        progress(_VECTORISING_SHARE, f"fitting logistic regression on {features.dimension} features")
        matrix = scipy.sparse.hstack(blocks, format="csr")
        head, facts = fit_linear_head(matrix, labels, resolved.C, resolved.max_iter, resolved.class_weight)
        training = {
            "examples": len(texts),
            "features": features.dimension,
            **facts,
            "seconds": round(time.perf_counter() - started, 3),
        }
        progress(1.0, "done")
        return LinearClassifier(NAME, resolved.model_dump(mode="json"), features, head, training)

    def load(self, directory: Path, manifest: Manifest) -> Classifier:
        require_library(NAME, "sklearn", "train")
        try:
            params = TfidfLogRegParams.model_validate(manifest.params)
        except ValueError as err:
            raise ArtifactError(f"{directory}: the manifest's params are not {NAME} params: {err}") from None
        features = TfidfFeatures.read(directory, params)
        head = LinearHead.read(directory, manifest.labels, features.dimension)
        return LinearClassifier(NAME, params.model_dump(mode="json"), features, head, dict(manifest.training))
