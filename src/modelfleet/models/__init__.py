"""The model interface, the runtime that executes models, and the built-in models."""

from __future__ import annotations

from modelfleet.models.model import Batching, Model

__all__ = ["Batching", "Model"]
