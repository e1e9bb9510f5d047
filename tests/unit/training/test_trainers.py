"""Trainers on small synthetic data: fitting, the artifact round trip, and refusing bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from modelfleet.errors import ConfigError, InvalidInput
from modelfleet.training import (
    TRAINERS,
    ArtifactError,
    get_trainer,
    load_classifier,
    read_manifest,
    save_classifier,
)
from modelfleet.training.artifact import MANIFEST_FILE
from modelfleet.training.linear import HEAD_FILE, fit_linear_head
from modelfleet.training.trainer import Classifier

ROOT = Path(__file__).resolve().parents[3]
# The project's artifact cache, shared with the e2e tests: the MiniLM export is made once.
DATA_DIR = str(ROOT / ".modelfleet")

TOPICS = {
    "billing": ["invoice", "refund", "charge", "payment", "bill", "fee", "overcharged", "receipt"],
    "shipping": ["parcel", "delivery", "courier", "tracking", "shipment", "package", "arrived", "address"],
    "account": ["password", "login", "username", "profile", "email", "locked", "sign", "reset"],
}
FILLER = ["my", "the", "please", "help", "with", "about", "question", "today", "I", "need", "urgent", "hi"]


def synthetic(
    per_class: int, seed: int, topics: dict[str, list[str]] = TOPICS
) -> tuple[list[str], list[str]]:
    """Texts of two topic words among three filler words, shuffled: separable, but not trivially."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(per_class):
        for label, words in topics.items():
            tokens = rng.sample(words, 2) + rng.sample(FILLER, 3)
            rng.shuffle(tokens)
            texts.append(" ".join(tokens))
            labels.append(label)
    return texts, labels


@pytest.fixture(scope="module")
def tfidf_classifier() -> Classifier:
    texts, labels = synthetic(20, seed=1)
    return get_trainer("tfidf-logreg").fit(texts, labels)


@pytest.fixture
def artifact(tmp_path: Path, tfidf_classifier: Classifier) -> Path:
    directory = tmp_path / "spam-v1"
    save_classifier(tfidf_classifier, directory, metrics={"accuracy": 1.0})
    return directory


def test_tfidf_classifier_generalises_to_new_texts(tfidf_classifier: Classifier) -> None:
    texts, labels = synthetic(10, seed=99)
    probabilities = tfidf_classifier.predict_proba(texts)

    assert tfidf_classifier.labels == ["account", "billing", "shipping"]
    assert probabilities.shape == (30, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    predicted = [tfidf_classifier.labels[i] for i in probabilities.argmax(axis=1)]
    assert predicted == labels


def test_save_and_load_give_identical_predictions_and_a_complete_manifest(
    tfidf_classifier: Classifier, artifact: Path
) -> None:
    texts, _ = synthetic(5, seed=7)

    loaded = load_classifier(artifact)

    assert loaded.trainer == "tfidf-logreg"
    assert loaded.labels == tfidf_classifier.labels
    assert np.array_equal(loaded.predict_proba(texts), tfidf_classifier.predict_proba(texts))
    manifest = read_manifest(artifact)
    assert manifest.trainer == "tfidf-logreg"
    assert manifest.labels == ["account", "billing", "shipping"]
    assert manifest.params["C"] == 10.0
    assert manifest.params["word_ngram_range"] == [1, 2]
    assert manifest.params["char_ngram_range"] == [2, 5]
    assert manifest.metrics == {"accuracy": 1.0}
    assert manifest.training["examples"] == 60
    assert manifest.training["converged"] is True
    assert {"numpy", "scikit-learn", "modelfleet"} <= set(manifest.libraries)
    assert manifest.created_at.tzinfo is not None
    assert sorted(manifest.files) == sorted(p.name for p in artifact.iterdir() if p.name != MANIFEST_FILE)
    # No pickles: every payload file opens as JSON or as an .npz without allow_pickle.
    for name in manifest.files:
        if name.endswith(".npz"):
            with np.load(artifact / name, allow_pickle=False) as arrays:
                assert arrays.files
        else:
            json.loads((artifact / name).read_text(encoding="utf-8"))


def test_a_saved_artifact_is_never_overwritten(tfidf_classifier: Classifier, artifact: Path) -> None:
    before = read_manifest(artifact).created_at

    with pytest.raises(ArtifactError, match="already exists and is not an empty folder"):
        save_classifier(tfidf_classifier, artifact)
    assert read_manifest(artifact).created_at == before
    assert [p.name for p in artifact.parent.iterdir()] == [artifact.name]


def test_saving_into_an_empty_folder_is_allowed(tfidf_classifier: Classifier, tmp_path: Path) -> None:
    (tmp_path / "made-by-caller").mkdir()

    save_classifier(tfidf_classifier, tmp_path / "made-by-caller")

    assert load_classifier(tmp_path / "made-by-caller").labels == tfidf_classifier.labels


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_manifest(directory: Path, **changes: Any) -> None:
    document = json.loads((directory / MANIFEST_FILE).read_text())
    document.update(changes)
    (directory / MANIFEST_FILE).write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: _flip_last_byte(d / HEAD_FILE), r"payload file head\.npz is corrupt: sha256"),
        (
            lambda d: (d / HEAD_FILE).write_bytes((d / HEAD_FILE).read_bytes()[:100]),
            r"payload file head\.npz is corrupt: 100 bytes",
        ),
        (lambda d: (d / "vocabulary.json").unlink(), r"payload file vocabulary\.json is missing"),
        (
            lambda d: (d / MANIFEST_FILE).unlink(),
            r"has no manifest\.json: not a modelfleet classifier artifact",
        ),
        (lambda d: (d / MANIFEST_FILE).write_text("{not json"), r"manifest\.json is not valid JSON"),
        (
            lambda d: (d / MANIFEST_FILE).write_text(json.dumps({"format": "onnx-model", "name": "x"})),
            r"does not describe a modelfleet classifier artifact \(format 'onnx-model'",
        ),
        (lambda d: _edit_manifest(d, format_version=2), r"format version 2 is not readable"),
        (
            lambda d: _edit_manifest(d, trainer="bert-finetune"),
            r"unknown trainer 'bert-finetune'.*tfidf-logreg",
        ),
        (lambda d: _edit_manifest(d, labels=["only-one"]), r"manifest\.json is invalid: labels"),
        (
            lambda d: _edit_manifest(d, files={"../outside": {"sha256": "0" * 64, "bytes": 1}}),
            r"'\.\./outside' is not a plain payload file name",
        ),
        (
            lambda d: _edit_manifest(d, labels=["a", "b"]),
            r"head\.npz does not match the manifest: a head for 2 labels",
        ),
        (
            lambda d: _edit_manifest(d, params={"C": 10, "bogus": 1}),
            r"manifest's params are not tfidf-logreg",
        ),
    ],
)
def test_a_damaged_or_foreign_artifact_is_refused_with_the_reason(
    artifact: Path, damage: Any, message: str
) -> None:
    damage(artifact)

    with pytest.raises(ArtifactError, match=message):
        load_classifier(artifact)


def test_a_folder_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="is not a folder"):
        load_classifier(tmp_path / "nothing-here")


def test_unknown_trainer_name_lists_the_known_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown trainer 'svm'; known trainers: minilm-logreg, tfidf-logreg"
    ):
        get_trainer("svm")
    assert sorted(TRAINERS) == ["minilm-logreg", "tfidf-logreg"]


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_a_single_class_is_refused(name: str) -> None:
    trainer = get_trainer(name, data_dir=DATA_DIR)

    with pytest.raises(InvalidInput, match=r"need at least 2 classes to train a classifier, got only 'spam'"):
        trainer.fit(["win money", "free prize"], ["spam", "spam"])


@pytest.mark.parametrize(
    ("texts", "labels", "message"),
    [
        (["a b", "c d"], ["x"], "got 2 texts but 1 labels"),
        (["good text", ""], ["x", "y"], r"texts\[1\] must be a non-empty string"),
        (["good text", "other"], ["x", ""], r"labels\[1\] must be a non-empty string"),
        ([], [], "need at least 2 classes to train a classifier, got none"),
    ],
)
def test_unusable_data_is_refused(texts: list[str], labels: list[str], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        get_trainer("tfidf-logreg").fit(texts, labels)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"C": 0}, r"params\.C: Input should be greater than 0"),
        ({"ngram": 3}, r"params\.ngram: Extra inputs are not permitted"),
        ({"word_ngram_range": None, "char_ngram_range": None}, "cannot both be null"),
        ({"char_ngram_range": [5, 2]}, r"char_ngram_range must be \[low, high\]"),
    ],
)
def test_invalid_params_are_refused_naming_the_key(params: dict[str, Any], message: str) -> None:
    texts, labels = synthetic(3, seed=1)

    with pytest.raises(InvalidInput, match=message) as info:
        get_trainer("tfidf-logreg").fit(texts, labels, params)
    assert "invalid params for trainer 'tfidf-logreg'" in str(info.value)


def test_texts_without_any_word_are_refused_when_only_words_are_used() -> None:
    with pytest.raises(InvalidInput, match="word n-grams: empty vocabulary"):
        get_trainer("tfidf-logreg").fit(["!", "?"], ["a", "b"], {"char_ngram_range": None})


def test_params_override_the_defaults_and_are_recorded() -> None:
    texts, labels = synthetic(10, seed=3)

    classifier = get_trainer("tfidf-logreg").fit(texts, labels, {"C": 2.5, "char_ngram_range": None})

    assert classifier.params["C"] == 2.5
    assert classifier.params["char_ngram_range"] is None
    assert classifier.params["word_ngram_range"] == [1, 2]
    # Word n-grams only: the feature count is the word vocabulary, far below the char n-grams'.
    assert classifier.training["features"] < 200


def test_progress_rises_monotonically_to_one() -> None:
    texts, labels = synthetic(10, seed=4)
    reports: list[tuple[float, str]] = []

    get_trainer("tfidf-logreg").fit(texts, labels, progress=lambda f, m: reports.append((f, m)))

    fractions = [f for f, _ in reports]
    assert fractions[0] == 0.0
    assert fractions[-1] == 1.0
    assert fractions == sorted(fractions)
    assert len(set(fractions)) >= 3
    assert all(message for _, message in reports)


def test_a_fit_that_hits_max_iter_reports_it_instead_of_raising() -> None:
    texts, labels = synthetic(10, seed=5)

    classifier = get_trainer("tfidf-logreg").fit(texts, labels, {"max_iter": 1})

    assert classifier.training["converged"] is False
    assert classifier.training["iterations"] == 1


@pytest.mark.parametrize("topics", [dict(list(TOPICS.items())[:2]), TOPICS], ids=["binary", "three-class"])
def test_the_numpy_head_matches_scikit_learn_probabilities(topics: dict[str, list[str]]) -> None:
    texts, labels = synthetic(15, seed=6, topics=topics)
    features = TfidfVectorizer().fit_transform(texts)

    head, facts = fit_linear_head(features, labels, c=10.0, max_iter=1000, class_weight=None)
    reference = LogisticRegression(C=10.0, max_iter=1000).fit(features, labels)

    assert head.labels == list(reference.classes_)
    assert facts["converged"] is True
    # The head keeps float32 coefficients; float64 would agree to ~1e-12.
    np.testing.assert_allclose(head.probabilities(features), reference.predict_proba(features), atol=1e-5)


# Short sentences whose topic shows in the meaning more than in shared words.
SENTENCES = {
    "weather": [
        "It is raining heavily this afternoon",
        "Tomorrow will be sunny and warm",
        "A cold wind is blowing from the north",
        "Snow is expected over the weekend",
        "The forecast says thunderstorms tonight",
        "Fog covered the valley this morning",
    ],
    "food": [
        "This pasta tastes delicious",
        "I baked a chocolate cake for dessert",
        "The soup needs more salt",
        "We ordered pizza for dinner",
        "Fresh bread from the bakery smells great",
        "She cooked rice with vegetables",
    ],
    "sport": [
        "The team won the football match",
        "He runs a marathon every year",
        "The tennis final went to five sets",
        "Our goalkeeper saved a penalty",
        "She swims fifty lengths each morning",
        "The cyclists climbed the mountain stage",
    ],
}


@pytest.fixture(scope="module")
def minilm_examples() -> tuple[list[str], list[str]]:
    texts = [text for sentences in SENTENCES.values() for text in sentences]
    labels = [label for label, sentences in SENTENCES.items() for _ in sentences]
    return texts, labels


@pytest.mark.real_weights
def test_minilm_classifier_round_trips_and_understands_paraphrases(
    minilm_examples: tuple[list[str], list[str]], tmp_path: Path
) -> None:
    texts, labels = minilm_examples
    reports: list[float] = []
    trainer = get_trainer("minilm-logreg", data_dir=DATA_DIR)

    classifier = trainer.fit(texts, labels, {"batch_size": 4}, progress=lambda f, m: reports.append(f))
    save_classifier(classifier, tmp_path / "topics")
    loaded = load_classifier(tmp_path / "topics", data_dir=DATA_DIR)

    new = ["Heavy showers are coming later", "I love eating strawberries", "The striker scored twice"]
    probabilities = loaded.predict_proba(new)
    assert [loaded.labels[i] for i in probabilities.argmax(axis=1)] == ["weather", "food", "sport"]
    assert np.array_equal(probabilities, classifier.predict_proba(new))
    # One report per batch of 4 while embedding 18 texts, then the regression and the end.
    assert reports[0] == 0.0
    assert reports[-1] == 1.0
    assert reports == sorted(reports)
    assert len(reports) >= 1 + 5 + 2
    manifest = read_manifest(tmp_path / "topics")
    assert manifest.params["runtime"] == "onnx-int8"
    assert manifest.training["embedder"]["embedding_dim"] == 384
    assert set(manifest.files) == {HEAD_FILE}


@pytest.mark.real_weights
def test_minilm_artifact_from_another_embedder_export_is_refused(
    minilm_examples: tuple[list[str], list[str]], tmp_path: Path
) -> None:
    texts, labels = minilm_examples
    classifier = get_trainer("minilm-logreg", data_dir=DATA_DIR).fit(texts, labels)
    save_classifier(classifier, tmp_path / "topics")
    document = json.loads((tmp_path / "topics" / MANIFEST_FILE).read_text())
    document["training"]["embedder"]["recipe"] = 999
    (tmp_path / "topics" / MANIFEST_FILE).write_text(json.dumps(document))

    with pytest.raises(ArtifactError, match="the head does not fit these embeddings: retrain it"):
        load_classifier(tmp_path / "topics", data_dir=DATA_DIR)
