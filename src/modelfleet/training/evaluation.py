"""Held-out evaluation of a classifier, and a seeded stratified split for data without a test split.

Metrics follow scikit-learn's definitions (macro-F1 averages over every label that is true or
predicted at least once, a class with no true and no predicted example is left out, and 0/0 counts
as 0), computed in numpy so evaluation works wherever a classifier can be served.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelfleet.training.trainer import Classifier

__all__ = ["Confusion", "Evaluation", "Split", "evaluate", "score_predictions", "stratified_split"]


@dataclass(frozen=True)
class Confusion:
    """``count`` held-out examples of class ``true`` were predicted as ``predicted``."""

    true: str
    predicted: str
    count: int


@dataclass(frozen=True)
class Evaluation:
    """Scores of predictions against the truth; ``per_class_f1`` and ``support`` cover every scored label."""

    examples: int
    accuracy: float
    macro_f1: float
    per_class_f1: dict[str, float]
    support: dict[str, int]
    confusions: list[Confusion] = field(default_factory=list)

    def worst(self, n: int = 5) -> list[tuple[str, float]]:
        """The ``n`` labels with the lowest F1, lowest first (ties by name)."""
        return sorted(self.per_class_f1.items(), key=lambda item: (item[1], item[0]))[:n]

    def best(self, n: int = 5) -> list[tuple[str, float]]:
        """The ``n`` labels with the highest F1, highest first (ties by name)."""
        return sorted(self.per_class_f1.items(), key=lambda item: (-item[1], item[0]))[:n]

    def as_dict(self, classes: int = 5, confusions: int = 10) -> dict[str, Any]:
        """A JSON-ready summary for a manifest: headline scores, extreme classes, top confusions."""
        return {
            "examples": self.examples,
            "accuracy": round(self.accuracy, 6),
            "macro_f1": round(self.macro_f1, 6),
            "worst_f1": {label: round(f1, 6) for label, f1 in self.worst(classes)},
            "best_f1": {label: round(f1, 6) for label, f1 in self.best(classes)},
            "confusions": [
                {"true": c.true, "predicted": c.predicted, "count": c.count}
                for c in self.confusions[:confusions]
            ],
        }

    def summary(self, classes: int = 3, confusions: int = 3) -> str:
        """One line for logs and test output."""
        worst = ", ".join(f"{label} {f1:.3f}" for label, f1 in self.worst(classes))
        mixed = ", ".join(f"{c.true}->{c.predicted} x{c.count}" for c in self.confusions[:confusions])
        return (
            f"{self.examples} examples: accuracy {self.accuracy:.4f}, macro-F1 {self.macro_f1:.4f}; "
            f"worst F1: {worst}; top confusions: {mixed or 'none'}"
        )


def score_predictions(truth: Sequence[str], predicted: Sequence[str]) -> Evaluation:
    """Accuracy, macro and per-class F1, and the most frequent confusions (most first)."""
    if len(truth) != len(predicted):
        raise ValueError(f"got {len(truth)} true labels but {len(predicted)} predictions")
    if not truth:
        raise ValueError("cannot score zero predictions")
    labels = sorted(set(truth) | set(predicted))
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(matrix, ([index[t] for t in truth], [index[p] for p in predicted]), 1)
    hits = np.diag(matrix).astype(np.float64)
    true_counts = matrix.sum(axis=1).astype(np.float64)
    predicted_counts = matrix.sum(axis=0).astype(np.float64)
    # F1 = 2 tp / (true + predicted); a label in the matrix has at least one of the two.
    f1 = 2 * hits / (true_counts + predicted_counts)
    off_diagonal = Counter(
        {
            (labels[i], labels[j]): int(matrix[i, j])
            for i, j in zip(*np.nonzero(matrix), strict=True)
            if i != j
        }
    )
    return Evaluation(
        examples=len(truth),
        accuracy=float(hits.sum() / len(truth)),
        macro_f1=float(f1.mean()),
        per_class_f1={label: float(f1[i]) for i, label in enumerate(labels)},
        support={label: int(true_counts[i]) for i, label in enumerate(labels)},
        confusions=[
            Confusion(true, predicted, count)
            for (true, predicted), count in sorted(off_diagonal.items(), key=lambda item: (-item[1], item[0]))
        ],
    )


def evaluate(classifier: Classifier, texts: Sequence[str], labels: Sequence[str]) -> Evaluation:
    """Score ``classifier``'s most probable label for each held-out text against ``labels``."""
    probabilities = classifier.predict_proba(texts)
    names = classifier.labels
    predicted = [names[i] for i in np.argmax(probabilities, axis=1)]
    return score_predictions(labels, predicted)


@dataclass(frozen=True)
class Split:
    """Texts and labels divided into a training part and a held-out test part."""

    train_texts: list[str]
    train_labels: list[str]
    test_texts: list[str]
    test_labels: list[str]


def stratified_split(
    texts: Sequence[str], labels: Sequence[str], test_fraction: float = 0.2, seed: int = 42
) -> Split:
    """Hold out ``test_fraction`` of every class, chosen by a seeded shuffle: same inputs, same split.

    Examples with the same text stay on the same side (as a group under the label of its first
    occurrence), so a repeated message cannot be scored on a copy the model was trained on. Each
    class keeps at least one group for training; a class with two or more groups gets at least one
    test group. Both parts keep the input order.
    """
    if len(texts) != len(labels):
        raise ValueError(f"got {len(texts)} texts but {len(labels)} labels")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        groups.setdefault(text, []).append(i)
    by_class: dict[str, list[str]] = {}
    for text, members in groups.items():
        by_class.setdefault(labels[members[0]], []).append(text)
    rng = np.random.default_rng(seed)
    held_out: set[int] = set()
    for label in sorted(by_class):
        class_texts = by_class[label]
        # Half-up rounding: round() would send 1.5 and 2.5 both to 2.
        count = int(test_fraction * len(class_texts) + 0.5)
        count = min(max(count, 1 if len(class_texts) > 1 else 0), len(class_texts) - 1)
        for position in rng.permutation(len(class_texts))[:count]:
            held_out.update(groups[class_texts[position]])
    train = [i for i in range(len(texts)) if i not in held_out]
    test = [i for i in range(len(texts)) if i in held_out]
    return Split(
        train_texts=[texts[i] for i in train],
        train_labels=[labels[i] for i in train],
        test_texts=[texts[i] for i in test],
        test_labels=[labels[i] for i in test],
    )
