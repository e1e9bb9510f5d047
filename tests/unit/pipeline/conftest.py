from __future__ import annotations

from typing import Any

from modelfleet.pipeline.spec import CompiledPipeline
from modelfleet.settings import settings_from_dict

MODELS = {name: {"class": "echo"} for name in ("language", "spam", "intent", "sentiment", "extra")}


def compile_one(pipeline: dict[str, Any], services: dict[str, Any] | None = None) -> CompiledPipeline:
    from modelfleet.pipeline.spec import compile_pipelines

    settings = settings_from_dict(
        {
            "models": MODELS,
            "services": services or {"all": {"models": list(MODELS)}},
            "pipelines": {"p": pipeline},
        }
    )
    return compile_pipelines(settings)["p"]
