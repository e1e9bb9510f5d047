"""Held-out metrics against scikit-learn's definitions, and the seeded stratified split."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from modelfleet.training import evaluate, get_trainer, score_predictions, stratified_split
from modelfleet.training.evaluation import Confusion


def test_scores_agree_with_scikit_learn_including_labels_never_true() -> None:
    rng = random.Random(0)
    truth = [rng.choice("abcd") for _ in range(300)]
    # "e" is only ever predicted, "d" never is: both must count in the macro average.
    predicted = [t if rng.random() < 0.7 else rng.choice("abce") for t in truth]

    scores = score_predictions(truth, predicted)

    assert scores.examples == 300
    assert scores.accuracy == pytest.approx(accuracy_score(truth, predicted))
    assert scores.macro_f1 == pytest.approx(f1_score(truth, predicted, average="macro", zero_division=0))
    labels = sorted(set(truth) | set(predicted))
    per_class = f1_score(truth, predicted, labels=labels, average=None, zero_division=0)
    assert scores.per_class_f1 == pytest.approx(dict(zip(labels, per_class, strict=True)))
    assert scores.per_class_f1["e"] == 0.0
    assert scores.support == dict(Counter(truth)) | {"e": 0}


def test_confusions_are_counted_and_ordered_most_frequent_first() -> None:
    truth = ["a", "a", "a", "b", "b", "c", "c", "c"]
    predicted = ["b", "b", "a", "a", "b", "a", "b", "c"]

    scores = score_predictions(truth, predicted)

    assert scores.confusions == [
        Confusion("a", "b", 2),
        Confusion("b", "a", 1),
        Confusion("c", "a", 1),
        Confusion("c", "b", 1),
    ]
    # a: 1 hit, 3 true, 3 predicted; b: 1 hit, 2 true, 4 predicted; both F1 1/3, ties go by name.
    [(label, f1)] = scores.worst(1)
    assert label == "a"
    assert f1 == pytest.approx(1 / 3)
    assert scores.best(1)[0][0] == "c"
    summary = scores.as_dict(classes=2, confusions=1)
    assert summary["confusions"] == [{"true": "a", "predicted": "b", "count": 2}]
    assert list(summary["worst_f1"]) == ["a", "b"]
    assert "accuracy 0.3750" in scores.summary()


def test_scoring_refuses_mismatched_or_empty_inputs() -> None:
    with pytest.raises(ValueError, match="2 true labels but 1 predictions"):
        score_predictions(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="zero predictions"):
        score_predictions([], [])


def test_evaluate_scores_the_most_probable_label() -> None:
    texts = ["cheap pills now", "win cash prize", "lunch at noon?", "see you at home", "free money offer"]
    labels = ["spam", "spam", "ham", "ham", "spam"]
    classifier = get_trainer("tfidf-logreg").fit(texts, labels)
    held_out = ["win free pills", "see you at lunch"]

    scores = evaluate(classifier, held_out, ["spam", "spam"])

    best = [classifier.labels[i] for i in np.argmax(classifier.predict_proba(held_out), axis=1)]
    assert best == ["spam", "ham"]
    assert scores.accuracy == 0.5
    assert scores.confusions == [Confusion("spam", "ham", 1)]


def _dataset() -> tuple[list[str], list[str]]:
    texts = [f"message number {i}" for i in range(500)]
    labels = ["spam" if i % 7 == 0 else "ham" for i in range(500)]
    # Repeats, as real data has: the same text twice or three times.
    texts += texts[:30] + texts[:10]
    labels += labels[:30] + labels[:10]
    return texts, labels


def test_split_is_stratified_seeded_and_keeps_repeated_texts_together() -> None:
    texts, labels = _dataset()

    split = stratified_split(texts, labels, test_fraction=0.2, seed=42)

    assert len(split.train_texts) + len(split.test_texts) == len(texts)
    assert set(split.train_texts).isdisjoint(split.test_texts)
    # 72 spam and 428 ham distinct texts; 20 % of each is held out.
    assert len(set(split.test_texts)) == round(0.2 * 72) + round(0.2 * 428)
    # Labels travel with their texts.
    assert split.test_labels == [labels[texts.index(t)] for t in split.test_texts]
    test_spam = {t for t, label in zip(split.test_texts, split.test_labels, strict=True) if label == "spam"}
    assert len(test_spam) == round(0.2 * 72)
    assert stratified_split(texts, labels, 0.2, seed=42) == split
    assert stratified_split(texts, labels, 0.2, seed=43).test_texts != split.test_texts


def test_split_keeps_input_order_within_each_part() -> None:
    texts, labels = _dataset()

    split = stratified_split(texts, labels, 0.3, seed=1)

    positions = {text: i for i, text in reversed(list(enumerate(texts)))}
    train_firsts = [positions[t] for t in dict.fromkeys(split.train_texts)]
    assert train_firsts == sorted(train_firsts)


def test_every_class_keeps_a_training_example_and_tiny_classes_lose_none() -> None:
    texts = ["a1", "a2", "a3", "b1", "c1", "c2"]
    labels = ["a", "a", "a", "b", "c", "c"]

    split = stratified_split(texts, labels, test_fraction=0.5, seed=0)

    assert set(split.train_labels) == {"a", "b", "c"}
    assert "b" not in split.test_labels
    # Half of 3 rounds up to 2; half of 2 is 1.
    assert Counter(split.test_labels) == {"a": 2, "c": 1}


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_split_refuses_a_fraction_outside_zero_and_one(fraction: float) -> None:
    with pytest.raises(ValueError, match="test_fraction must be between 0 and 1"):
        stratified_split(["a", "b"], ["x", "y"], test_fraction=fraction)
