from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelfleet.cli.main import main
from modelfleet.lake import CaptureWriter, Lake

BANKING_TRAIN = Path("/work/shared/data/banking77/train.csv")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "lake": {"root": str(tmp_path / "lake")},
                "models": {"echo": {"class": "tiny:Echo"}},
                "services": {"light": {"models": ["echo"]}},
            }
        )
    )
    return path


def test_ingest_ls_and_show_banking77(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    train = str(BANKING_TRAIN)
    args = [
        "--dataset",
        "banking77",
        "--text-column",
        "text",
        "--label-column",
        "category",
        "-c",
        str(config),
    ]

    code, out, _ = run(capsys, "lake", "ingest", train, *args)
    assert code == 0
    assert out.startswith("stored banking77@")
    assert "10003 rows, 2 columns (text: string, category: string)" in out
    code, again, _ = run(capsys, "lake", "ingest", train, *args, "--json")
    assert code == 0
    stored = json.loads(again)
    assert stored["created"] is False
    assert out.split()[1].rstrip(":") == stored["ref"]
    assert (tmp_path / "lake/datasets/banking77" / stored["version"] / "data.parquet").is_file()

    code, out, _ = run(capsys, "lake", "ls", "-c", str(config), "--json")
    assert code == 0
    listing = json.loads(out)
    assert [(d["name"], d["versions"], d["latest"]["rows"]) for d in listing["datasets"]] == [
        ("banking77", 1, 10003)
    ]

    code, out, _ = run(capsys, "lake", "show", f"banking77@{stored['version']}", "-c", str(config), "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["schema"] == [{"name": "text", "type": "string"}, {"name": "category", "type": "string"}]
    assert shown["rows"] == 10003
    assert shown["sha256"].startswith(stored["version"])
    assert shown["source"]["sha256"] == hashlib.sha256(BANKING_TRAIN.read_bytes()).hexdigest()
    assert shown["versions"] == [stored["version"]]

    code, out, _ = run(capsys, "lake", "show", "banking77", "-c", str(config))
    assert code == 0
    assert f"version  {stored['version']}  (newest)" in out
    assert "rows     10003" in out
    assert "  category  string" in out
    code, out, _ = run(capsys, "lake", "ls", "-c", str(config))
    assert "banking77" in out
    assert "10003" in out


def test_a_rejected_dataset_exits_2_with_the_reason(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, err = run(
        capsys,
        "lake",
        "ingest",
        str(BANKING_TRAIN),
        "--dataset",
        "b",
        "--label-column",
        "label",
        "-c",
        str(config),
    )

    assert code == 2
    assert out == ""
    assert "dataset refused" in err
    assert "column 'label' not found (columns: text, category)" in err


def test_unknown_dataset_and_missing_config(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    code, _, err = run(capsys, "lake", "show", "nothing", "-c", str(config))
    assert code == 1
    assert "no dataset named 'nothing'" in err

    code, _, err = run(capsys, "lake", "ls", "-c", str(tmp_path / "missing.yaml"))
    assert code == 2
    assert "file not found (or name the lake with --lake ROOT)" in err


def test_tsv_without_header_through_the_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    source = tmp_path / "sms.tsv"
    source.write_text('ham\tsee you "soon"\nspam\tWIN a prize\n', encoding="utf-8")

    code, out, _ = run(
        capsys,
        "lake",
        "ingest",
        str(source),
        "--dataset",
        "sms",
        "--no-header",
        "--columns",
        "label,text",
        "--label-column",
        "label",
        "--lake",
        str(tmp_path / "lake"),
    )

    assert code == 0
    assert "2 rows, 2 columns (label: string, text: string)" in out
    assert Lake(str(tmp_path / "lake")).read_table("sms").column("text").to_pylist() == [
        'see you "soon"',
        "WIN a prize",
    ]


def test_captures_are_counted_per_partition(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    writer = CaptureWriter(lake, "sentiment", rate=1.0)
    writer.maybe_capture([{"text": "a"}] * 7, [{"label": "pos"}] * 7, "1")
    writer.close()

    code, out, _ = run(capsys, "lake", "captures", "sentiment", "--lake", str(tmp_path / "lake"), "--json")

    assert code == 0
    counted = json.loads(out)
    assert counted["rows"] == 7
    assert [(p["files"], p["rows"]) for p in counted["partitions"]] == [(1, 7)]


def test_the_installed_command_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modelfleet", "lake", "ls", "--lake", str(tmp_path / "lake")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("no datasets in the lake")
