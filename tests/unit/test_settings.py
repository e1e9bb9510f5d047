from __future__ import annotations

from pathlib import Path

import pytest

from modelfleet.errors import ConfigError
from modelfleet.settings import load_settings, settings_from_dict

BASE = {"models": {"a": {"class": "echo"}, "b": {"class": "echo"}}, "services": {"s": {"models": ["a", "b"]}}}


def _error(data: dict[str, object], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data, source="fleet.yaml", env=env)
    return str(info.value)


def test_the_shipped_default_fleet_is_valid() -> None:
    settings = load_settings(Path(__file__).parents[2] / "fleet.yaml")
    assert set(settings.services) == {"light", "embed", "jobs", "train"}
    assert settings.services["jobs"].kind == "job-worker"
    assert settings.services["train"].kind == "trainer"
    assert settings.services["embed"].models == ["embedder", "intent"]
    assert settings.service_of("sentiment") == "light"
    for model in ("intent", "spam"):
        source = settings.models[model].registry
        assert source is not None
        assert source.alias == "production"
        assert source.bootstrap is not None


def test_error_names_the_field_and_the_reason() -> None:
    message = _error({**BASE, "services": {"s": {"models": ["a"], "replicas": 0}}})
    assert "fleet.yaml: services.s.replicas" in message
    assert "greater than or equal to 1" in message


def test_unknown_model_in_a_service_is_named() -> None:
    message = _error({**BASE, "services": {"s": {"models": ["a", "nope"]}}})
    assert "services.s.models[1]: unknown model 'nope'" in message


def test_a_model_hosted_by_two_services_is_refused() -> None:
    message = _error({**BASE, "services": {"s": {"models": ["a"]}, "t": {"models": ["a"]}}})
    assert "already hosted by service 's'" in message


def test_unknown_keys_are_refused_not_ignored() -> None:
    message = _error({**BASE, "gateway": {"prot": 80}})
    assert "gateway.prot" in message
    assert "Extra inputs are not permitted" in message


def test_overlapping_ports_are_refused() -> None:
    data = {
        **BASE,
        "gateway": {"port": 9001},
        "services": {"s": {"models": ["a", "b"], "replicas": 2, "port": 9000}},
    }
    assert "already taken by gateway.port" in _error(data)


def test_bad_store_url_is_refused() -> None:
    assert "store_url" in _error({**BASE, "store_url": "mysql://x"})


def test_environment_overrides_nested_fields_with_yaml_types() -> None:
    settings = settings_from_dict(
        BASE,
        env={"MODELFLEET__GATEWAY__PORT": "9100", "MODELFLEET__SERVICES__S__REPLICAS": "3", "OTHER": "x"},
    )
    assert settings.gateway.port == 9100
    assert settings.services["s"].replicas == 3


def test_environment_override_is_validated_too() -> None:
    assert "gateway.port" in _error(BASE, env={"MODELFLEET__GATEWAY__PORT": "not-a-port"})


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(scalar)
