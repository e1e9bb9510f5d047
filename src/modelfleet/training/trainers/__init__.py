"""Trainer implementations, one module per trainer; :func:`get_trainer` picks one by name.

Trainer modules import scikit-learn and the embedder only when they fit or load, so looking a
trainer up costs nothing and works in processes that never train.
"""

from __future__ import annotations

import importlib
import inspect

from modelfleet.errors import ConfigError
from modelfleet.training.trainer import Trainer

__all__ = ["TRAINERS", "get_trainer", "require_library"]

TRAINERS: dict[str, str] = {
    "tfidf-logreg": "modelfleet.training.trainers.tfidf_logreg:TfidfLogRegTrainer",
    "minilm-logreg": "modelfleet.training.trainers.minilm_logreg:MiniLMLogRegTrainer",
}


def get_trainer(name: str, data_dir: str = ".modelfleet", threads: int = 2) -> Trainer:
    """The trainer called ``name``; raises ConfigError listing the known names.

    ``data_dir`` (where shared artifacts such as the MiniLM export are cached) and ``threads`` go to
    trainers that take them, as the model catalog hands ``data_dir`` to models that ask for it.
    """
    if name not in TRAINERS:
        raise ConfigError(f"trainer: unknown trainer {name!r}; known trainers: {', '.join(sorted(TRAINERS))}")
    module_name, _, class_name = TRAINERS[name].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    accepted = inspect.signature(cls.__init__).parameters
    options = {key: value for key, value in (("data_dir", data_dir), ("threads", threads)) if key in accepted}
    trainer: Trainer = cls(**options)
    return trainer


def require_library(trainer: str, library: str, extra: str) -> None:
    """Raise ConfigError saying what to install when ``trainer`` needs ``library`` and it is missing."""
    try:
        importlib.import_module(library)
    except ImportError:
        raise ConfigError(f"trainer {trainer!r} needs {library}: pip install 'modelfleet[{extra}]'") from None
