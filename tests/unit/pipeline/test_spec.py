from __future__ import annotations

from typing import Any

import pytest
from tests.unit.pipeline.conftest import compile_one

from modelfleet.errors import ConfigError


def _error(pipeline: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        compile_one(pipeline)
    return str(info.value)


def test_dependencies_come_from_what_a_step_reads_and_after() -> None:
    pipeline = compile_one(
        {
            "steps": {
                "intent": {"model": "intent", "when": "spam.label != 'spam'"},
                "spam": {
                    "model": "spam",
                    "input": {"text": "input.text"},
                    "when": "language.language == 'en'",
                },
                "language": {"model": "language"},
                "extra": {"model": "extra", "after": ["intent"]},
            },
            "output": {"intent": "intent.text"},
        }
    )
    assert pipeline.steps["intent"].depends_on == {"spam"}
    assert pipeline.steps["extra"].depends_on == {"intent"}
    assert pipeline.order.index("language") < pipeline.order.index("spam") < pipeline.order.index("intent")
    assert pipeline.describe()["edges"] == [["language", "spam"], ["spam", "intent"], ["intent", "extra"]]


def test_model_version_pins() -> None:
    pipeline = compile_one(
        {"steps": {"a": {"model": "intent@production"}, "b": {"model": "spam", "version": "2"}}}
    )
    assert (pipeline.steps["a"].model, pipeline.steps["a"].version) == ("intent", "production")
    assert pipeline.steps["b"].version == "2"


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ({"steps": {"a": {"model": "nope"}}}, "pipelines.p.steps.a.model: unknown model 'nope'"),
        (
            {"steps": {"a": {"model": "spam", "when": "b.x == 1"}}},
            "pipelines.p.steps.a.when: unknown step 'b'",
        ),
        ({"steps": {"a": {"model": "spam", "when": "a.x == 1"}}}, "step 'a' cannot read its own output"),
        (
            {
                "steps": {
                    "a": {"model": "spam", "input": {"text": "b.text"}},
                    "b": {"model": "intent", "input": "a"},
                }
            },
            "dependency cycle",
        ),
        (
            {"steps": {"a": {"model": "spam", "when": "x =="}}},
            "pipelines.p.steps.a.when: bad expression 'x =='",
        ),
        (
            {"steps": {"a": {"model": "spam", "input": {"t": "len("}}}},
            "pipelines.p.steps.a.input.t: bad expression",
        ),
        (
            {"steps": {"a": {"model": "spam", "after": ["zz"]}}},
            "pipelines.p.steps.a.after[0]: unknown step 'zz'",
        ),
        ({"steps": {"input": {"model": "spam"}}}, "a step cannot be called 'input'"),
        (
            {"steps": {"a": {"model": "spam"}}, "output": {"x": "q.label"}},
            "pipelines.p.output.x: unknown step 'q'",
        ),
        ({"steps": {"a": {"model": "spam", "on_error": "explode"}}}, "pipelines.p.steps.a.on_error"),
        ({"steps": {}}, "pipelines.p.steps"),
    ],
)
def test_bad_pipelines_are_config_errors_naming_pipeline_and_step(
    pipeline: dict[str, Any], message: str
) -> None:
    assert message in _error(pipeline)
