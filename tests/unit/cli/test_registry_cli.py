"""`modelfleet models ...` against a registry in a SQLite file named by fleet.yaml."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelfleet.cli.main import main
from modelfleet.cli.registry import add_registry_commands
from modelfleet.registry import Registry, make_registry
from modelfleet.settings import Settings


def fleet_config(directory: Path) -> Path:
    config = {
        "store_url": f"sqlite:///{directory / 'data' / 'modelfleet.db'}",
        "data_dir": str(directory / "data"),
        "models": {"sentiment": {"class": "echo"}},
        "services": {"light": {"models": ["sentiment"]}},
    }
    path = directory / "fleet.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def seed(config: Path, artifacts: Path | None = None, count: int = 3) -> list[str]:
    """Register ``count`` versions of sentiment (artifacts as real files when a folder is given)."""
    url = f"sqlite:///{config.parent / 'data' / 'modelfleet.db'}"

    async def go() -> list[str]:
        registry: Registry = make_registry(url)
        await registry.open()
        try:
            uris = []
            for number in range(1, count + 1):
                uri = f"file:///lake/sentiment-{number}.joblib"
                if artifacts is not None:
                    path = artifacts / f"sentiment-{number}.joblib"
                    path.write_bytes(b"model")
                    uri = path.as_uri()
                await registry.register(
                    "sentiment",
                    uri,
                    "tfidf-logreg",
                    {"C": 1.0},
                    {"accuracy": round(0.8 + number / 100, 2), "f1": 0.75},
                    f"reviews@{number}",
                )
                uris.append(uri)
            return uris
        finally:
            await registry.close()

    return asyncio.run(go())


def models(config: Path, *args: str) -> int:
    return main(["models", *args, "-c", str(config)])


def test_ls_lists_models_with_their_latest_version_and_aliases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fleet_config(tmp_path)
    assert models(config, "ls") == 0
    assert capsys.readouterr().out.strip() == "no models registered"
    seed(config)
    assert models(config, "promote", "sentiment", "2") == 0
    capsys.readouterr()

    assert models(config, "ls") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["MODEL", "VERSIONS", "LATEST", "ALIASES"]
    assert lines[1].split() == ["sentiment", "3", "3", "production=2"]

    assert models(config, "ls", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "models": [{"model": "sentiment", "versions": 3, "latest": "3", "aliases": {"production": "2"}}]
    }


def test_show_prints_versions_metrics_dataset_and_aliases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fleet_config(tmp_path)
    seed(config)
    models(config, "promote", "sentiment", "1")
    models(config, "promote", "sentiment", "3", "--alias", "canary")
    capsys.readouterr()

    assert models(config, "show", "sentiment") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "model sentiment: 3 version(s), latest 3"
    assert out[1] == "aliases: canary=3, production=1"
    rows = {line.split()[0]: line.split() for line in out[3:]}
    assert rows["3"][3:] == ["tfidf-logreg", "reviews@3", "canary", "accuracy=0.83", "f1=0.75"]
    assert rows["1"][3:] == ["tfidf-logreg", "reviews@1", "production", "accuracy=0.81", "f1=0.75"]
    assert rows["2"][5] == "-"

    assert models(config, "show", "sentiment", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in shown["versions"]] == ["3", "2", "1"]
    assert shown["aliases"] == {"canary": "3", "production": "1"}
    assert shown["versions"][0]["metrics"] == {"accuracy": 0.83, "f1": 0.75}


def test_promote_and_rollback_move_the_alias_and_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fleet_config(tmp_path)
    seed(config)

    assert models(config, "promote", "sentiment", "1") == 0
    assert models(config, "promote", "sentiment", "2") == 0
    assert models(config, "rollback", "sentiment") == 0
    assert capsys.readouterr().out.splitlines() == [
        "sentiment: production -> 1 (new alias)",
        "sentiment: production -> 2 (was 1)",
        "sentiment: production rolled back to 1 (was 2)",
    ]

    assert models(config, "rollback", "sentiment") == 1
    assert "no earlier version to roll back to" in capsys.readouterr().err
    assert models(config, "rollback", "sentiment", "--alias", "canary") == 1
    assert "no alias 'canary'" in capsys.readouterr().err
    assert models(config, "promote", "sentiment", "7") == 1
    assert "model 'sentiment' has no version '7' (the latest is 3)" in capsys.readouterr().err
    assert models(config, "show", "unknown") == 1
    assert "no model 'unknown' in the registry" in capsys.readouterr().err


def test_history_lists_alias_events_newest_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = fleet_config(tmp_path)
    seed(config)
    assert models(config, "history", "sentiment") == 0
    assert capsys.readouterr().out.strip() == "no alias changes recorded for model sentiment"
    for version in ("1", "2"):
        models(config, "promote", "sentiment", version)
    models(config, "promote", "sentiment", "3", "--alias", "canary")
    models(config, "rollback", "sentiment")
    capsys.readouterr()

    assert models(config, "history", "sentiment") == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [row[-4:] for row in rows] == [
        ["production", "rollback", "1", "2"],
        ["canary", "promote", "3", "-"],
        ["production", "promote", "2", "1"],
        ["production", "promote", "1", "-"],
    ]

    assert models(config, "history", "sentiment", "--alias", "canary", "--json") == 0
    events = json.loads(capsys.readouterr().out)["events"]
    assert [(e["alias"], e["version"]) for e in events] == [("canary", "3")]


def test_delete_refuses_a_version_in_use_and_reports_the_artifact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fleet_config(tmp_path)
    uris = seed(config)
    models(config, "promote", "sentiment", "1")
    capsys.readouterr()

    assert models(config, "delete", "sentiment", "1") == 1
    assert "alias(es) production point at" in capsys.readouterr().err
    assert models(config, "delete", "sentiment", "2") == 0
    assert capsys.readouterr().out.splitlines() == [
        "deleted version 2 of model sentiment",
        f"its artifact is still at {uris[1]}; remove it from the lake if it is not needed",
    ]
    assert models(config, "ls", "--json") == 0
    assert json.loads(capsys.readouterr().out)["models"][0]["versions"] == 2


def test_delete_removes_the_artifact_with_the_deleter_it_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fleet_config(tmp_path)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    uris = seed(config, artifacts)
    given: list[Settings] = []

    def deleter_of(settings: Settings) -> Any:
        given.append(settings)

        def delete(uri: str) -> bool:
            path = Path(uri.removeprefix("file://"))
            if path.name == "sentiment-1.joblib":
                return False  # as the lake answers when there is no artifact
            path.unlink()
            return True

        return delete

    parser = argparse.ArgumentParser(prog="modelfleet")
    config_parent = argparse.ArgumentParser(add_help=False)
    config_parent.add_argument("-c", "--config", default="fleet.yaml")
    add_registry_commands(parser.add_subparsers(dest="command"), config_parent, deleter_of)

    args = parser.parse_args(["models", "delete", "sentiment", "2", "-c", str(config)])
    assert args.func(args) == 0
    assert capsys.readouterr().out.splitlines() == [
        "deleted version 2 of model sentiment",
        f"deleted its artifact at {uris[1]}",
    ]
    assert not (artifacts / "sentiment-2.joblib").exists()
    assert (artifacts / "sentiment-1.joblib").exists()
    assert given[0].store_url.endswith("modelfleet.db")

    (artifacts / "sentiment-3.joblib").unlink()
    args = parser.parse_args(["models", "delete", "sentiment", "3", "-c", str(config)])
    assert args.func(args) == 1
    captured = capsys.readouterr()
    assert captured.out.strip() == "deleted version 3 of model sentiment"
    assert f"could not delete its artifact at {uris[2]}: FileNotFoundError" in captured.err

    args = parser.parse_args(["models", "delete", "sentiment", "1", "-c", str(config)])
    assert args.func(args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"found no artifact at {uris[0]} to delete"


def test_a_bad_config_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert models(tmp_path / "missing.yaml", "ls") == 2
    assert "file not found" in capsys.readouterr().err
