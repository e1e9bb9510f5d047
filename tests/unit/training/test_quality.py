"""The built-in trained models reach their quality bars on real held-out data.

- ``intent``: minilm-logreg on Banking77's official train split, accuracy >= 0.92 on its official
  test split (the data README measured 0.925 for int8 MiniLM embeddings + LR(C=10)).
- ``spam``: tfidf-logreg on an 80/20 stratified, seeded split of the SMS Spam Collection,
  macro-F1 >= 0.95 (README: 0.984 on a plain split). Our split keeps repeated messages on one side,
  so no test message is one the model saw in training; that is stricter than the README's split.

Each test trains, saves the artifact, loads it back and checks the loaded one answers the same, so
the figures are those of what a worker would serve. Nothing is cached between runs except the
MiniLM ONNX export in the project's artifact folder.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest

from modelfleet.training import (
    Evaluation,
    evaluate,
    get_trainer,
    load_classifier,
    read_manifest,
    save_classifier,
    stratified_split,
)
from modelfleet.training.trainer import Classifier

pytestmark = pytest.mark.training

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT.parent / "shared" / "data"
DATA_DIR = str(ROOT / ".modelfleet")


def read_banking77(split: str) -> tuple[list[str], list[str]]:
    with open(DATA / "banking77" / f"{split}.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [row["text"] for row in rows], [row["category"] for row in rows]


def read_sms_spam() -> tuple[list[str], list[str]]:
    # Tab-separated, no header, and '"' is message text, not quoting.
    with open(DATA / "sms-spam-collection" / "SMSSpamCollection.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert all(len(row) == 2 for row in rows)
    return [row[1] for row in rows], [row[0] for row in rows]


def report(capsys: pytest.CaptureFixture[str], name: str, scores: Evaluation, classifier: Classifier) -> None:
    facts = classifier.training
    with capsys.disabled():
        print(
            f"\n[quality] {name}: {scores.summary()}\n"
            f"[quality] {name}: trained on {facts['examples']} texts in {facts['seconds']:.1f} s "
            f"(head {facts['head_seconds']:.1f} s, {facts['iterations']} iterations, "
            f"converged {facts['converged']})"
        )


def save_load_and_compare(classifier: Classifier, scores: Evaluation, texts: list[str], folder: Path) -> None:
    """The artifact holds the metrics, and the loaded classifier answers exactly like the fitted one."""
    save_classifier(classifier, folder, metrics=scores.as_dict())
    loaded = load_classifier(folder, data_dir=DATA_DIR)
    assert read_manifest(folder).metrics == scores.as_dict()
    assert np.array_equal(loaded.predict_proba(texts), classifier.predict_proba(texts))


@pytest.mark.real_weights
def test_intent_on_banking77_reaches_accuracy_092(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    train_texts, train_labels = read_banking77("train")
    test_texts, test_labels = read_banking77("test")
    assert (len(train_texts), len(test_texts)) == (10_003, 3_080)

    classifier = get_trainer("minilm-logreg", data_dir=DATA_DIR).fit(train_texts, train_labels)
    started = time.perf_counter()
    scores = evaluate(classifier, test_texts, test_labels)
    evaluation_s = time.perf_counter() - started

    report(capsys, "intent (Banking77, minilm-logreg)", scores, classifier)
    with capsys.disabled():
        print(
            f"[quality] intent: embedding {classifier.training['embedding_seconds']:.1f} s to train, "
            f"{evaluation_s:.1f} s to evaluate {len(test_texts)} texts"
        )
    assert len(classifier.labels) == 77
    assert scores.accuracy >= 0.92, scores.summary()
    save_load_and_compare(classifier, scores, test_texts[:64], tmp_path / "intent")


def test_spam_on_sms_collection_reaches_macro_f1_095(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    texts, labels = read_sms_spam()
    assert len(texts) == 5_574
    split = stratified_split(texts, labels, test_fraction=0.2, seed=42)

    classifier = get_trainer("tfidf-logreg").fit(split.train_texts, split.train_labels)
    scores = evaluate(classifier, split.test_texts, split.test_labels)

    report(capsys, "spam (SMS Spam Collection, tfidf-logreg)", scores, classifier)
    assert classifier.labels == ["ham", "spam"]
    assert scores.macro_f1 >= 0.95, scores.summary()
    assert scores.accuracy >= 0.97, scores.summary()
    save_load_and_compare(classifier, scores, split.test_texts[:200], tmp_path / "spam")
