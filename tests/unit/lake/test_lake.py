from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer

from modelfleet.errors import ArtifactExists, ArtifactNotFound, DatasetNotFound, DatasetRejected
from modelfleet.lake import CaptureWriter, DatasetVersion, Lake, capture_partitions, parse_ref, read_captures
from modelfleet.settings import settings_from_dict

SMS = Path("/work/shared/data/sms-spam-collection/SMSSpamCollection.tsv")
BANKING_TEST = Path("/work/shared/data/banking77/test.csv")

ROWS = [
    {"text": "I lost my card", "category": "lost_card", "score": 3},
    {"text": "Where is my money?", "category": "transfer", "score": 1},
    {"text": 'A "quoted", comma text', "category": "other", "score": 2},
]


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(str(tmp_path / "lake"))


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Path:
    import csv

    columns = columns or list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_csv_becomes_a_version_with_schema_rows_hash_and_source(lake: Lake, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "intents.csv", ROWS)

    found = lake.ingest(source, "intents", text_column="text", label_column="category")

    assert found.created
    assert found.rows == 3
    assert [(c.name, c.type) for c in found.schema] == [
        ("text", "string"),
        ("category", "string"),
        ("score", "int64"),
    ]
    assert len(found.sha256) == 64
    assert found.version == found.sha256[:12]
    assert found.source.format == "csv"
    assert found.source.path == str(source.resolve())
    assert found.source.sha256 == sha256_of(source)
    assert found.source.size_bytes == source.stat().st_size
    manifest = json.loads((tmp_path / "lake/datasets/intents" / found.version / "manifest.json").read_text())
    assert manifest["sha256"] == found.sha256
    assert manifest["rows"] == 3
    assert manifest["schema"][0] == {"name": "text", "type": "string"}
    assert manifest["text_column"] == "text"
    assert manifest["label_column"] == "category"
    assert manifest["source"]["sha256"] == sha256_of(source)
    assert manifest["created_at"].endswith("+00:00")
    assert lake.read_table("intents", found.version).to_pylist() == ROWS


def test_tsv_without_header_reads_the_sms_collection_with_given_column_names(lake: Lake) -> None:
    found = lake.ingest(
        SMS,
        "sms-spam",
        header=False,
        column_names=["label", "text"],
        text_column="text",
        label_column="label",
    )

    table = lake.read_table("sms-spam")
    assert found.rows == 5574 == table.num_rows
    assert found.source.format == "tsv"
    assert table.column_names == ["label", "text"]
    assert set(table.column("label").to_pylist()) == {"ham", "spam"}
    # Quotes inside a tab-separated value are characters, not quoting.
    first_line = SMS.read_text(encoding="utf-8").splitlines()[0]
    assert table.slice(0, 1).to_pylist() == [
        dict(zip(["label", "text"], first_line.split("\t"), strict=True))
    ]
    assert any('"' in text for text in table.column("text").to_pylist())


def test_the_same_rows_from_csv_jsonl_and_parquet_are_one_version(lake: Lake, tmp_path: Path) -> None:
    csv_file = write_csv(tmp_path / "a.csv", ROWS)
    # Key order differs from the CSV's column order; it is not part of the content.
    jsonl_file = write_jsonl(tmp_path / "a.jsonl", [{"score": r["score"], **r} for r in ROWS])
    parquet_file = tmp_path / "a.parquet"
    table = pa.table(
        {
            "text": pa.array([r["text"] for r in ROWS], pa.large_string()),
            "category": pa.array([r["category"] for r in ROWS]).dictionary_encode(),
            "score": pa.array([r["score"] for r in ROWS], pa.int32()),
        }
    )
    pq.write_table(table, parquet_file)

    from_csv = lake.ingest(csv_file, "intents")
    from_jsonl = lake.ingest(jsonl_file, "intents")
    from_parquet = lake.ingest(
        parquet_file, "intents", format="parquet", text_column="text", label_column="category"
    )

    assert from_csv.created
    assert not from_jsonl.created
    assert not from_parquet.created
    assert from_csv.version == from_jsonl.version == from_parquet.version
    assert [v.version for v in lake.versions("intents")] == [from_csv.version]


def test_reingesting_the_same_file_answers_the_stored_version_untouched(lake: Lake, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "a.csv", ROWS)
    first = lake.ingest(source, "intents")
    manifest = tmp_path / "lake/datasets/intents" / first.version / "manifest.json"
    before = manifest.read_bytes()

    again = lake.ingest(source, "intents")

    assert not again.created
    assert again.version == first.version
    assert again.created_at == first.created_at
    assert manifest.read_bytes() == before
    assert sorted(p.name for p in manifest.parent.parent.iterdir()) == [first.version]


def test_changed_content_makes_a_new_version_and_the_newest_comes_first(lake: Lake, tmp_path: Path) -> None:
    first = lake.ingest(write_csv(tmp_path / "a.csv", ROWS), "intents")
    changed = [*ROWS[:2], {**ROWS[2], "category": "fees"}]
    second = lake.ingest(write_csv(tmp_path / "b.csv", changed), "intents")
    reordered = lake.ingest(write_csv(tmp_path / "c.csv", list(reversed(changed))), "intents")

    assert len({first.version, second.version, reordered.version}) == 3
    assert [v.version for v in lake.versions("intents")] == [reordered.version, second.version, first.version]
    assert lake.get("intents").version == reordered.version
    assert lake.get("intents", "latest").version == reordered.version
    assert lake.get("intents", first.version) == dataclasses.replace(first, created=False)
    assert lake.get("intents", second.sha256[:6]).version == second.version
    assert lake.read_table("intents", second.version).to_pylist() == changed
    assert lake.datasets() == ["intents"]


def test_a_stored_table_hashes_back_to_its_version(lake: Lake, tmp_path: Path) -> None:
    found = lake.ingest(BANKING_TEST, "banking77-test", text_column="text", label_column="category")
    round_trip = tmp_path / "round.parquet"
    pq.write_table(lake.read_table("banking77-test"), round_trip)

    again = lake.ingest(round_trip, "banking77-test")

    assert found.rows == 3080
    assert again.version == found.version
    assert not again.created


def test_a_text_column_of_digits_stays_text(lake: Lake, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "codes.csv", [{"text": "123", "label": 1}, {"text": "0042", "label": 2}])

    found = lake.ingest(source, "codes", text_column="text", label_column="label")

    assert [(c.name, c.type) for c in found.schema] == [("text", "string"), ("label", "int64")]
    assert lake.read_table("codes").column("text").to_pylist() == ["123", "0042"]


@pytest.mark.parametrize(
    ("content", "suffix", "options", "reason"),
    [
        (
            "text,category\nhello,greet\n",
            ".csv",
            {"text_column": "text", "label_column": "label"},
            "column 'label' not found (columns: text, category)",
        ),
        (
            "text,label\na,x\nb,\nc,  \nd,y\n",
            ".csv",
            {"label_column": "label"},
            "label column 'label' has 2 empty values (rows 2, 3)",
        ),
        (
            "".join(f"t{i},{'' if i % 2 else 'x'}\n" for i in range(14)),
            ".csv",
            {"label_column": "label", "header": False, "column_names": ["text", "label"]},
            "label column 'label' has 7 empty values (rows 2, 4, 6, 8, 10, …)",
        ),
        (
            "text,label\na,0.5\nb,1.5\n",
            ".csv",
            {"label_column": "label"},
            "label column 'label' must hold strings or integers, not float",
        ),
        (
            "text,label\n,x\n ,y\nok,z\n,w\n",
            ".csv",
            {"text_column": "text"},
            "text column 'text' has 3 empty values (rows 1, 2, 4)",
        ),
        ('{"text": 5, "label": "x"}\n', ".jsonl", {"text_column": "text"}, "must hold strings, not integer"),
        ("", ".csv", {}, "file is empty"),
        ("text,label\n", ".csv", {}, "file is empty: it has no rows"),
        ("text,label\na,b,c\n", ".csv", {}, "not valid CSV: CSV parse error: Expected 2 columns, got 3"),
        ('{"text": "a"}\nnot json\n', ".jsonl", {}, "not valid JSONL: JSON parse error"),
        ("text,text\na,b\n", ".csv", {}, "column names repeat: text"),
        ("a,b\n", ".txt", {}, "cannot tell the format"),
    ],
)
def test_bad_datasets_are_refused_with_the_reason(
    lake: Lake, tmp_path: Path, content: str, suffix: str, options: dict[str, Any], reason: str
) -> None:
    source = tmp_path / f"bad{suffix}"
    source.write_text(content, encoding="utf-8")

    with pytest.raises(DatasetRejected) as raised:
        lake.ingest(source, "bad", **options)

    assert any(reason in r for r in raised.value.reasons), raised.value.reasons
    assert lake.datasets() == []


def test_every_problem_is_named_at_once(lake: Lake, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "a.csv", [{"text": "", "label": 1.5}])

    with pytest.raises(DatasetRejected) as raised:
        lake.ingest(source, "bad", text_column="text", label_column="label", required_columns=["id"])

    assert raised.value.reasons == [
        "column 'id' not found (columns: text, label)",
        "text column 'text' has 1 empty value (row 1)",
        "label column 'label' must hold strings or integers, not float",
    ]


def test_a_missing_file_or_bad_name_is_refused(lake: Lake, tmp_path: Path) -> None:
    with pytest.raises(DatasetRejected, match="file not found"):
        lake.ingest(tmp_path / "nothing.csv", "x")
    with pytest.raises(DatasetRejected, match="dataset name 'Bad/Name'"):
        lake.ingest(write_csv(tmp_path / "a.csv", ROWS), "Bad/Name")


def test_unknown_datasets_and_versions_are_not_found(lake: Lake, tmp_path: Path) -> None:
    found = lake.ingest(write_csv(tmp_path / "a.csv", ROWS), "intents")

    with pytest.raises(DatasetNotFound, match=r"no dataset named 'other' .*\(datasets: intents\)"):
        lake.get("other")
    with pytest.raises(DatasetNotFound, match=f"is not a version of dataset 'intents' .*{found.version}"):
        lake.get("intents", "0000deadbeef")
    with pytest.raises(DatasetNotFound):
        lake.get("intents", "../../x")
    assert lake.find("other") is None


def test_a_half_written_version_is_invisible_and_replaced(lake: Lake, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "a.csv", ROWS)
    found = lake.ingest(source, "intents")
    folder = tmp_path / "lake/datasets/intents" / found.version
    (folder / "manifest.json").unlink()
    (folder / "data.parquet").write_bytes(b"interrupted")

    assert lake.datasets() == []
    with pytest.raises(DatasetNotFound):
        lake.versions("intents")
    again = lake.ingest(source, "intents")

    assert again.created
    assert again.version == found.version
    assert lake.read_table("intents").to_pylist() == ROWS


def test_parse_ref() -> None:
    assert parse_ref("banking77") == ("banking77", None)
    assert parse_ref("banking77@c0811da21079") == ("banking77", "c0811da21079")
    for bad in ("", "@v", "name@", "a@b@c"):
        with pytest.raises(DatasetNotFound):
            parse_ref(bad)


def test_the_lake_root_comes_from_settings(tmp_path: Path) -> None:
    base = {"models": {"echo": {"class": "x:Y"}}, "services": {"s": {"models": ["echo"]}}}
    default = Lake.from_settings(settings_from_dict({**base, "data_dir": str(tmp_path / "data")}))
    configured = Lake.from_settings(
        settings_from_dict({**base, "lake": {"root": "memory://configured/lake"}})
    )

    assert default.root == str(tmp_path / "data" / "lake")
    assert default.local
    assert configured.root == "/configured/lake"
    assert not configured.local


def make_artifact(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "model.joblib").write_bytes(b"\x00weights\xff" * 100)
    (folder / "sub" / "config.json").write_text('{"labels": ["a", "b"]}')
    return folder


def test_local_artifacts_are_stored_found_in_place_and_deleted(lake: Lake, tmp_path: Path) -> None:
    source = make_artifact(tmp_path / "trained")

    uri = lake.put_artifact("intent-clf", "3", source)
    folder = lake.get_artifact(uri, tmp_path / "cache")

    assert folder == Path(uri) == tmp_path / "lake/artifacts/intent-clf/3"
    assert (folder / "model.joblib").read_bytes() == (source / "model.joblib").read_bytes()
    assert (folder / "sub/config.json").read_text() == '{"labels": ["a", "b"]}'
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ArtifactExists):
        lake.put_artifact("intent-clf", "3", source)
    assert lake.delete_artifact(uri)
    assert not folder.exists()
    assert not lake.delete_artifact(uri)
    with pytest.raises(ArtifactNotFound):
        lake.get_artifact(uri, tmp_path / "cache")


def test_an_interrupted_artifact_is_not_found_and_can_be_put_again(lake: Lake, tmp_path: Path) -> None:
    source = make_artifact(tmp_path / "trained")
    partial = tmp_path / "lake/artifacts/intent-clf/4"
    partial.mkdir(parents=True)
    (partial / "model.joblib").write_bytes(b"half")

    with pytest.raises(ArtifactNotFound):
        lake.get_artifact(str(partial), tmp_path / "cache")
    uri = lake.put_artifact("intent-clf", "4", source)

    assert (lake.get_artifact(uri, tmp_path / "cache") / "model.joblib").read_bytes() == (
        source / "model.joblib"
    ).read_bytes()


def exercise_remote_lake(lake: Lake, tmp_path: Path) -> None:
    """The same behaviour as on a local folder, through a non-local fsspec filesystem."""
    csv_file = write_csv(tmp_path / "a.csv", ROWS)
    first = lake.ingest(csv_file, "intents", text_column="text", label_column="category")
    again = lake.ingest(write_jsonl(tmp_path / "a.jsonl", ROWS), "intents")
    banking = lake.ingest(BANKING_TEST, "banking77-test", text_column="text", label_column="category")

    assert first.created
    assert not again.created
    assert first.uri.startswith(lake.url.split("://")[0] + "://")
    assert lake.datasets() == ["banking77-test", "intents"]
    assert lake.read_table("intents").to_pylist() == ROWS
    assert lake.read_table("banking77-test").num_rows == banking.rows == 3080
    assert lake.get("banking77-test", banking.version).sha256 == banking.sha256

    source = make_artifact(tmp_path / "trained")
    uri = lake.put_artifact("intent-clf", "1", source)
    local = lake.get_artifact(uri, tmp_path / "cache")
    assert local.is_relative_to(tmp_path / "cache")
    assert (local / "model.joblib").read_bytes() == (source / "model.joblib").read_bytes()
    assert (local / "sub/config.json").read_text() == '{"labels": ["a", "b"]}'
    assert lake.get_artifact(uri, tmp_path / "cache") == local
    with pytest.raises(ArtifactExists):
        lake.put_artifact("intent-clf", "1", source)
    assert lake.delete_artifact(uri)
    with pytest.raises(ArtifactNotFound):
        lake.get_artifact(uri, tmp_path / "other-cache")

    writer = CaptureWriter(lake, "sentiment", rate=1.0)
    writer.maybe_capture([{"text": "good"}, {"text": "bad"}], [{"label": "pos"}, {"label": "neg"}], "1")
    writer.close()
    captured = read_captures(lake, "sentiment")
    assert [json.loads(v) for v in captured.column("output").to_pylist()] == [
        {"label": "pos"},
        {"label": "neg"},
    ]
    assert [p.rows for p in capture_partitions(lake, "sentiment")] == [2]


def test_an_fsspec_memory_lake(tmp_path: Path) -> None:
    root = f"memory://lake-{uuid.uuid4().hex}"
    lake = Lake(root)
    try:
        exercise_remote_lake(lake, tmp_path)
    finally:
        fsspec.filesystem("memory").rm(lake.root, recursive=True)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def test_an_s3_lake(s3_endpoint: str, tmp_path: Path) -> None:
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    fs = fsspec.filesystem("s3", **options)
    fs.mkdir(bucket)
    try:
        lake = Lake(f"s3://{bucket}/prefix", options)
        exercise_remote_lake(lake, tmp_path)
        assert fs.exists(f"{bucket}/prefix/datasets/intents")
        # A fresh Lake (another process, say) sees what this one committed.
        other = Lake(f"s3://{bucket}/prefix", options)
        assert isinstance(other.get("intents"), DatasetVersion)
    finally:
        fs.rm(bucket, recursive=True)
