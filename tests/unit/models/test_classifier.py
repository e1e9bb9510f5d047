"""TrainedClassifier served through the ModelRunner, as a worker runs it, from a saved artifact."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from modelfleet.errors import ConfigError, InvalidInput
from modelfleet.http import http_error_of
from modelfleet.models.builtin.classifier import (
    ClassifyInput,
    ClassifyOutput,
    TrainedClassifier,
    load_classifier,
)
from modelfleet.models.catalog import build_runner, import_model_class
from modelfleet.models.runner import ModelRunner
from modelfleet.settings import ModelSettings
from modelfleet.training import ArtifactError, get_trainer, save_classifier

WORDS = {
    "billing": ["invoice", "refund", "charge", "payment", "bill", "fee"],
    "shipping": ["parcel", "delivery", "courier", "tracking", "shipment", "package"],
    "account": ["password", "login", "username", "profile", "email", "locked"],
}
FILLER = ["my", "the", "please", "help", "with", "about", "question", "today"]


def _examples(per_class: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(per_class):
        for label, words in WORDS.items():
            texts.append(" ".join(rng.sample(words, 2) + rng.sample(FILLER, 2)))
            labels.append(label)
    return texts, labels


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts, labels = _examples(15, seed=1)
    classifier = get_trainer("tfidf-logreg").fit(texts, labels)
    directory = tmp_path_factory.mktemp("artifacts") / "support-v1"
    save_classifier(classifier, directory)
    return directory


def _runner(artifact_dir: Path, **params: object) -> ModelRunner:
    spec = ModelSettings.model_validate(
        {"class": "trained-classifier", "params": {"artifact_dir": str(artifact_dir), **params}}
    )
    runner = build_runner("support", spec, data_dir="/unused-for-tfidf")
    runner.load()
    return runner


def test_the_short_name_resolves_and_batching_is_declared() -> None:
    assert import_model_class("trained-classifier", "f") is TrainedClassifier
    assert TrainedClassifier.batching is not None
    assert TrainedClassifier.batching.max_batch_size == 64
    assert TrainedClassifier.batching.max_wait_ms == 0


def test_batch_predict_through_the_runner(artifact_dir: Path) -> None:
    runner = _runner(artifact_dir)
    texts = ["refund for this invoice please", "where is my parcel tracking", "my login password is locked"]
    rows: list[dict[str, object]] = [{"text": text} for text in texts]
    rows.append({"text": "the courier lost my package", "top_k": 2})

    async def scenario() -> list[ClassifyOutput]:
        try:
            return cast(list[ClassifyOutput], await runner.predict(runner.validate_rows(rows)))
        finally:
            await runner.close()

    outputs = asyncio.run(scenario())

    assert [o.label for o in outputs] == ["billing", "shipping", "account", "shipping"]
    reference = load_classifier(artifact_dir).predict_proba([*texts, "the courier lost my package"])
    for output, row in zip(outputs, reference, strict=True):
        assert output.score == pytest.approx(float(row.max()))
        assert output.score > 0.5
    assert [o.scores for o in outputs[:3]] == [None, None, None]
    ranked = outputs[3].scores
    assert ranked is not None
    assert ranked[0].label == "shipping"
    assert len(ranked) == 2
    assert ranked[0].score >= ranked[1].score
    assert ranked[0].score == outputs[3].score


def test_concurrent_requests_share_batches_and_each_gets_its_answer(artifact_dir: Path) -> None:
    runner = _runner(artifact_dir, top_k=3)
    sizes: list[int] = []
    runner.on_batch = sizes.append
    texts, labels = _examples(10, seed=42)

    async def scenario() -> list[list[ClassifyOutput]]:
        try:
            calls = [runner.predict([ClassifyInput(text=text)]) for text in texts]
            return [cast(list[ClassifyOutput], r) for r in await asyncio.gather(*calls)]
        finally:
            await runner.close()

    results = asyncio.run(scenario())

    assert [r[0].label for r in results] == labels
    assert all(r[0].scores is not None and len(r[0].scores) == 3 for r in results)
    assert sum(sizes) == len(texts)
    assert max(sizes) > 1
    for [output] in results:
        assert output.scores is not None
        assert sum(s.score for s in output.scores) == pytest.approx(1.0)


def test_bad_input_is_a_422_naming_each_field(artifact_dir: Path) -> None:
    runner = _runner(artifact_dir)
    rows = [{"text": ""}, {"message": "hi"}, {"text": "ok", "top_k": -1}, {"text": "x" * 20_001}]

    with pytest.raises(InvalidInput) as info:
        runner.validate_rows(rows)

    message = str(info.value)
    assert "[0].text: String should have at least 1 character" in message
    assert "[1].text: Field required" in message
    assert "[2].top_k: Input should be greater than or equal to 0" in message
    assert "[3].text: String should have at most 20000 characters" in message
    assert http_error_of(info.value).status == 422
    asyncio.run(runner.close())


def test_the_model_answers_like_the_classifier_outside_a_worker(artifact_dir: Path) -> None:
    model = TrainedClassifier(artifact_dir=str(artifact_dir), top_k=1)
    model.load()
    classifier = load_classifier(artifact_dir)
    texts = ["bill with a fee", "email about my profile"]

    outputs = model.predict([ClassifyInput(text=t) for t in texts])

    probabilities = classifier.predict_proba(texts)
    assert model.labels == classifier.labels == ["account", "billing", "shipping"]
    assert [o.label for o in outputs] == [classifier.labels[i] for i in np.argmax(probabilities, axis=1)]
    assert [o.score for o in outputs] == [float(p.max()) for p in probabilities]
    assert model.predict([]) == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"top_k": 101}, "top_k must be between 0 and 100"),
        ({"threads": 0}, "threads must be at least 1"),
        ({"artifact_dir": ""}, "artifact_dir must name a classifier artifact folder"),
        ({"artifact": "x"}, "unexpected keyword argument 'artifact'"),
    ],
)
def test_bad_params_are_a_config_error_naming_the_reason(
    artifact_dir: Path, params: dict[str, object], message: str
) -> None:
    spec = ModelSettings.model_validate(
        {"class": "trained-classifier", "params": {"artifact_dir": str(artifact_dir), **params}}
    )

    with pytest.raises(ConfigError, match=r"models\.support\.params: ") as info:
        build_runner("support", spec, data_dir=".modelfleet")
    assert message in str(info.value)


@pytest.mark.real_weights
def test_an_embedding_classifier_is_served_without_scikit_learn_or_torch(tmp_path: Path) -> None:
    data_dir = str(Path(__file__).resolve().parents[3] / ".modelfleet")
    texts = ["it is raining", "a sunny warm day", "pizza for dinner", "a bowl of hot soup"]
    classifier = get_trainer("minilm-logreg", data_dir=data_dir).fit(texts, ["sky", "sky", "food", "food"])
    save_classifier(classifier, tmp_path / "topics")
    script = (
        "import json, sys\n"
        "from modelfleet.models.builtin.classifier import ClassifyInput, TrainedClassifier\n"
        f"model = TrainedClassifier(artifact_dir={str(tmp_path / 'topics')!r}, data_dir={data_dir!r})\n"
        "model.load()\n"
        "[out] = model.predict([ClassifyInput(text='a snow storm tonight')])\n"
        "heavy = sorted(m for m in ('sklearn', 'scipy', 'torch', 'transformers') if m in sys.modules)\n"
        "print(json.dumps({'label': out.label, 'heavy': heavy}))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"label": "sky", "heavy": []}


def test_loading_a_missing_artifact_fails_with_the_folder_named(tmp_path: Path) -> None:
    model = TrainedClassifier(artifact_dir=str(tmp_path / "intent-v9"))

    with pytest.raises(ArtifactError, match=r"intent-v9 is not a folder"):
        model.load()
    with pytest.raises(RuntimeError, match="load"):
        model.predict([ClassifyInput(text="hello")])
