from __future__ import annotations

import pytest

from modelfleet.errors import ConfigError
from modelfleet.models.builtin.echo import Echo
from modelfleet.models.catalog import build_runner, build_service_runners, import_model_class
from modelfleet.settings import ModelSettings, settings_from_dict


def test_builtin_short_names_and_import_paths_resolve() -> None:
    assert import_model_class("echo", "f") is Echo
    assert import_model_class("modelfleet.models.builtin.echo:Echo", "f") is Echo


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("nonsense", "neither a built-in model nor 'package.module:Class'"),
        ("no.such.module:Thing", "cannot import 'no.such.module'"),
        ("modelfleet.models.builtin.echo:EchoInput", "is not a modelfleet Model subclass"),
        ("modelfleet.models.builtin.echo:Missing", "is not a modelfleet Model subclass"),
    ],
)
def test_bad_class_references_name_the_field(reference: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"models\.x\.class") as info:
        import_model_class(reference, "models.x.class")
    assert message in str(info.value)


def test_bad_params_are_a_config_error() -> None:
    spec = ModelSettings.model_validate({"class": "vader-sentiment", "params": {"threshold": 2}})
    with pytest.raises(ConfigError, match=r"models.s.params: threshold must be in \[0, 1\)"):
        build_runner("s", spec, "/tmp")


def test_config_batching_overrides_the_class_default() -> None:
    settings = settings_from_dict(
        {
            "models": {
                "a": {"class": "echo", "batching": {"max_batch_size": 3, "max_wait_ms": 1}},
                "b": {"class": "echo"},
                "c": {"class": "mf_test_models:BatchRecorder", "batching": False},
            },
            "services": {"s": {"models": ["a", "b", "c"]}},
        }
    )
    runners = build_service_runners(settings, "s")
    assert runners["a"].batching is not None
    assert runners["a"].batching.max_batch_size == 3
    assert runners["b"].batching is None
    assert runners["c"].batching is None
    with pytest.raises(ConfigError, match="no service named 'zzz'"):
        build_service_runners(settings, "zzz")


def test_workers_take_the_idle_inline_budget_from_settings() -> None:
    config = {"models": {"a": {"class": "echo"}}, "services": {"s": {"models": ["a"]}}}
    assert build_service_runners(settings_from_dict(config), "s")["a"].idle_inline_ms == 5.0
    config["worker"] = {"idle_inline_ms": 0}
    assert build_service_runners(settings_from_dict(config), "s")["a"].idle_inline_ms == 0.0
    with pytest.raises(ConfigError, match="idle_inline_ms"):
        settings_from_dict({**config, "worker": {"idle_inline_ms": -1}})
