"""The data lake: immutable, content-addressed dataset versions and model artifacts on any fsspec storage.

Layout under the root (a local folder, ``memory://...``, ``s3://bucket/prefix``, ...)::

    datasets/<name>/<version>/data.parquet     the normalised table
    datasets/<name>/<version>/manifest.json    written last: a version exists once its manifest does
    artifacts/<model>/<version>/...            a model version's files
    artifacts/<model>/<version>/_artifact.json written last: the file list with sizes and sha256
    captures/<model>/date=YYYY-MM-DD/hour=HH/part-<uuid>.parquet   sampled live predictions

A version is the first 12 hex digits of the sha256 of its content (see :mod:`modelfleet.lake.content`),
so ingesting the same content again finds the stored version instead of writing a new one. Nothing
committed is ever overwritten: a folder without its manifest (or marker) is an interrupted write,
invisible to readers and replaced by the next attempt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from modelfleet.errors import (
    ArtifactExists,
    ArtifactNotFound,
    DatasetNotFound,
    DatasetRejected,
    InvalidInput,
)
from modelfleet.lake._deps import fsspec, pq, url_to_fs
from modelfleet.lake.checks import check_table
from modelfleet.lake.content import content_hash, normalise, type_name
from modelfleet.lake.source import DatasetSource, read_source

if TYPE_CHECKING:
    from modelfleet.settings import Settings

VERSION_CHARS = 12
MIN_VERSION_PREFIX = 4
MANIFEST = "manifest.json"
DATA_FILE = "data.parquet"
ARTIFACT_MARKER = "_artifact.json"
MANIFEST_FORMAT = "modelfleet-dataset/1"
HEX_PATTERN = re.compile(r"^[0-9a-f]+$")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
ARTIFACT_VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
COPY_BYTES = 1 << 20


@dataclass(frozen=True)
class Column:
    """One column of a dataset version: its name and its Arrow type (as text)."""

    name: str
    type: str


@dataclass(frozen=True)
class DatasetVersion:
    """One immutable version of a dataset, as its manifest records it.

    ``created`` is true only on the answer to the ingest that wrote it; re-ingesting the same content
    answers the stored version with ``created`` false.
    """

    name: str
    version: str
    sha256: str
    rows: int
    schema: tuple[Column, ...]
    source: DatasetSource
    text_column: str | None
    label_column: str | None
    created_at: datetime
    uri: str
    created: bool = False

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def columns(self) -> list[str]:
        return [c.name for c in self.schema]

    def manifest(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "rows": self.rows,
            "schema": [{"name": c.name, "type": c.type} for c in self.schema],
            "text_column": self.text_column,
            "label_column": self.label_column,
            "source": self.source.to_dict(),
            "created_at": self.created_at.isoformat(),
            "data": DATA_FILE,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.manifest(), "ref": self.ref, "uri": self.uri, "created": self.created}

    @classmethod
    def from_manifest(cls, data: Mapping[str, Any], uri: str) -> DatasetVersion:
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            sha256=str(data["sha256"]),
            rows=int(data["rows"]),
            schema=tuple(Column(str(c["name"]), str(c["type"])) for c in data["schema"]),
            source=DatasetSource.from_dict(data["source"]),
            text_column=data.get("text_column"),
            label_column=data.get("label_column"),
            created_at=datetime.fromisoformat(data["created_at"]),
            uri=uri,
        )


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``name`` or ``name@version`` as (name, version or None); raises DatasetNotFound when malformed."""
    name, at, version = ref.partition("@")
    if not name or (at and not version) or "@" in version:
        raise DatasetNotFound(f"{ref!r} is not a dataset reference: use NAME or NAME@VERSION")
    return name, (version or None)


def check_name(name: str, what: str = "dataset") -> str:
    """``name`` when it can name a folder of the lake; raises DatasetRejected (InvalidInput for a model)."""
    if not NAME_PATTERN.match(name):
        message = (
            f"{what} name {name!r} must be 1-128 lower-case letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit"
        )
        raise DatasetRejected(message) if what == "dataset" else InvalidInput(message)
    return name


class Lake:
    """Datasets, captures and model artifacts under one root URL.

    ``storage_options`` go to the fsspec filesystem of the root (an S3 endpoint, credentials).
    Every method is blocking I/O: call it from a thread when on an event loop.
    """

    def __init__(self, root_url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.storage_options = dict(storage_options or {})
        self.fs, root = url_to_fs(root_url, **self.storage_options)
        self.root = str(root).rstrip("/")
        self.local = isinstance(self.fs, fsspec.implementations.local.LocalFileSystem)
        self.url = root_url if "://" in root_url else self.root

    @classmethod
    def from_settings(cls, settings: Settings) -> Lake:
        """The lake the settings name: ``lake.root``, or ``<data_dir>/lake`` when that is empty."""
        root = settings.lake.root or str(Path(settings.data_dir) / "lake")
        return cls(root, settings.lake.storage_options)

    def __repr__(self) -> str:
        return f"Lake({self.url!r})"

    def path(self, *parts: str) -> str:
        """The filesystem path of ``parts`` under the root."""
        return "/".join([self.root, *parts])

    def uri(self, path: str) -> str:
        """A path of this lake's filesystem as a URL another process can open."""
        return str(path) if self.local else str(self.fs.unstrip_protocol(path))

    # Datasets

    def ingest(
        self,
        path: str | Path,
        dataset: str,
        *,
        format: str | None = None,
        text_column: str | None = None,
        label_column: str | None = None,
        required_columns: Sequence[str] = (),
        header: bool = True,
        column_names: Sequence[str] | None = None,
    ) -> DatasetVersion:
        """Store a CSV/TSV/JSONL/Parquet file as a version of ``dataset``; raises DatasetRejected.

        ``format`` defaults to the file's suffix. ``header=False`` with ``column_names`` reads a
        CSV/TSV file without a header line. The answer's ``created`` tells whether the content was new.
        """
        check_name(dataset)
        text_columns = [text_column] if text_column else []
        table, source = read_source(
            path, format, header=header, column_names=column_names, text_columns=text_columns
        )
        return self.ingest_table(
            table,
            dataset,
            source=source,
            text_column=text_column,
            label_column=label_column,
            required_columns=required_columns,
        )

    def ingest_table(
        self,
        table: Any,
        dataset: str,
        *,
        source: DatasetSource,
        text_column: str | None = None,
        label_column: str | None = None,
        required_columns: Sequence[str] = (),
    ) -> DatasetVersion:
        """Store a pyarrow Table (captures read back, say) as a version of ``dataset``.

        Column roles are recorded by the ingest that creates a version; a later ingest of the same
        content is checked against its own roles and answers the stored version as it is.
        """
        check_name(dataset)
        if table.num_rows == 0:
            raise DatasetRejected("file is empty: it has no rows")
        table = normalise(table)
        reasons = check_table(
            table, text_column=text_column, label_column=label_column, required_columns=required_columns
        )
        if reasons:
            raise DatasetRejected(reasons)
        sha256 = content_hash(table)
        version = sha256[:VERSION_CHARS]
        stored = self._read_manifest(dataset, version)
        if stored is not None:
            return stored
        folder = self.path("datasets", dataset, version)
        self._write_parquet(table, f"{folder}/{DATA_FILE}")
        made = DatasetVersion(
            name=dataset,
            version=version,
            sha256=sha256,
            rows=table.num_rows,
            schema=tuple(Column(f.name, type_name(f.type)) for f in table.schema),
            source=source,
            text_column=text_column,
            label_column=label_column,
            created_at=datetime.now(UTC),
            uri=self.uri(folder),
            created=True,
        )
        if not self._create_once(
            f"{folder}/{MANIFEST}", orjson.dumps(made.manifest(), option=orjson.OPT_INDENT_2)
        ):
            # Another ingest of the same content committed first; its manifest is the version.
            stored = self._read_manifest(dataset, version)
            assert stored is not None
            return stored
        return made

    def datasets(self) -> list[str]:
        """Names of the datasets that have at least one committed version, sorted."""
        base = self.path("datasets")
        self.fs.invalidate_cache(base)
        manifests = self.fs.glob(f"{base}/*/*/{MANIFEST}")
        return sorted({str(m).rsplit("/", 3)[-3] for m in manifests})

    def versions(self, name: str) -> list[DatasetVersion]:
        """Every committed version of ``name``, newest first; raises DatasetNotFound when it has none."""
        base = self.path("datasets", self._known_name(name))
        self.fs.invalidate_cache(base)
        found = []
        for manifest in self.fs.glob(f"{base}/*/{MANIFEST}"):
            version = str(manifest).rsplit("/", 2)[-2]
            stored = self._read_manifest(name, version)
            if stored is not None:
                found.append(stored)
        if not found:
            known = ", ".join(self.datasets()) or "none"
            raise DatasetNotFound(f"no dataset named {name!r} in the lake {self.url} (datasets: {known})")
        found.sort(key=lambda v: (v.created_at, v.version), reverse=True)
        return found

    def get(self, name: str, version: str | None = None) -> DatasetVersion:
        """One version: the newest when ``version`` is None or ``latest``, else by version or a prefix
        of at least 4 characters; raises DatasetNotFound."""
        self._known_name(name)
        if version is None or version == "latest":
            return self.versions(name)[0]
        if len(version) == VERSION_CHARS and HEX_PATTERN.match(version):
            stored = self._read_manifest(name, version)
            if stored is not None:
                return stored
        known = self.versions(name)
        matches = [v for v in known if len(version) >= MIN_VERSION_PREFIX and v.sha256.startswith(version)]
        if len(matches) == 1:
            return matches[0]
        listed = ", ".join(v.version for v in known)
        why = "matches several versions" if matches else "is not a version"
        raise DatasetNotFound(f"{version!r} {why} of dataset {name!r} (versions: {listed})")

    def find(self, name: str, version: str | None = None) -> DatasetVersion | None:
        """Like :meth:`get`, but None when there is no such dataset or version."""
        try:
            return self.get(name, version)
        except DatasetNotFound:
            return None

    def read_table(self, name: str, version: str | None = None) -> Any:
        """A version's rows as a pyarrow Table (the newest version when none is given)."""
        found = self.get(name, version)
        path = self.path("datasets", name, found.version, DATA_FILE)
        if self.local:
            return pq.read_table(path)
        with self.fs.open(path, "rb") as stream:
            return pq.read_table(stream)

    def _known_name(self, name: str) -> str:
        if not NAME_PATTERN.match(name):
            raise DatasetNotFound(
                f"no dataset named {name!r}: names are lower-case letters, digits, '.', '_', '-'"
            )
        return name

    def _read_manifest(self, name: str, version: str) -> DatasetVersion | None:
        folder = self.path("datasets", name, version)
        try:
            raw = self.fs.cat_file(f"{folder}/{MANIFEST}")
        except FileNotFoundError:
            return None
        return DatasetVersion.from_manifest(orjson.loads(raw), self.uri(folder))

    # Artifacts

    def artifact_uri(self, model: str, version: str) -> str:
        return self.uri(self.path("artifacts", check_name(model, "model"), _artifact_version(version)))

    def put_artifact(self, model: str, version: str, local_dir: str | Path) -> str:
        """Copy a local folder in as the artifact of ``model`` ``version``; answers its URI.

        Raises ArtifactExists when that version is already stored (artifacts are immutable) and
        NotADirectoryError when ``local_dir`` is not a folder.
        """
        source = Path(local_dir)
        if not source.is_dir():
            raise NotADirectoryError(f"{source} is not a folder")
        folder = self.path("artifacts", check_name(model, "model"), _artifact_version(version))
        if self.fs.exists(f"{folder}/{ARTIFACT_MARKER}"):
            raise ArtifactExists(f"model {model!r} version {version!r} already has an artifact in the lake")
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(folder, recursive=True)
        files = []
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            relative = file.relative_to(source).as_posix()
            if relative == ARTIFACT_MARKER:
                continue
            target = f"{folder}/{relative}"
            if self.local:
                self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(file), target)
            files.append({"path": relative, "size_bytes": file.stat().st_size, "sha256": _file_sha256(file)})
        marker = {
            "model": model,
            "version": version,
            "files": files,
            "created_at": datetime.now(UTC).isoformat(),
        }
        if not self._create_once(
            f"{folder}/{ARTIFACT_MARKER}", orjson.dumps(marker, option=orjson.OPT_INDENT_2)
        ):
            raise ArtifactExists(f"model {model!r} version {version!r} already has an artifact in the lake")
        return self.uri(folder)

    def get_artifact(self, uri: str, local_cache_dir: str | Path) -> Path:
        """A local folder holding the artifact at ``uri``; raises ArtifactNotFound.

        A local lake answers the stored folder itself (read it, never write it). A remote one is
        downloaded once into ``local_cache_dir``, checked against the recorded sha256 of every file.
        """
        fs, folder = self._fs_of(uri)
        try:
            marker = orjson.loads(fs.cat_file(f"{folder}/{ARTIFACT_MARKER}"))
        except FileNotFoundError:
            raise ArtifactNotFound(f"no artifact at {uri}") from None
        if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
            return Path(folder)
        cache = Path(local_cache_dir)
        key = hashlib.sha256(uri.encode()).hexdigest()[:16]
        target = cache / f"{marker['model']}-{marker['version']}-{key}"
        if (target / ARTIFACT_MARKER).is_file():
            return target
        cache.mkdir(parents=True, exist_ok=True)
        staging = cache / f".download-{uuid.uuid4().hex}"
        try:
            for entry in marker["files"]:
                local = staging / entry["path"]
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(f"{folder}/{entry['path']}", str(local))
                if _file_sha256(local) != entry["sha256"]:
                    raise ArtifactNotFound(
                        f"artifact file {entry['path']} at {uri} does not match its sha256"
                    )
            (staging / ARTIFACT_MARKER).write_bytes(orjson.dumps(marker))
            try:
                staging.rename(target)
            except OSError:
                # A concurrent download finished first; its copy is as good as ours.
                if not (target / ARTIFACT_MARKER).is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def delete_artifact(self, uri: str) -> bool:
        """Remove the artifact at ``uri``; answers False when there was none."""
        fs, folder = self._fs_of(uri)
        if not fs.exists(folder):
            return False
        # The marker goes first, so a half-deleted artifact is an incomplete one, not a corrupt one.
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(f"{folder}/{ARTIFACT_MARKER}")
        fs.rm(folder, recursive=True)
        return True

    def _fs_of(self, uri: str) -> tuple[Any, str]:
        protocol = uri.split("://", 1)[0] if "://" in uri else "file"
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        options = self.storage_options if protocol in protocols else {}
        fs, path = url_to_fs(uri, **options)
        return fs, str(path).rstrip("/")

    # Writing

    def _write_parquet(self, table: Any, path: str) -> None:
        if self.local:
            temp = self._local_temp(path)
            try:
                pq.write_table(table, temp)
                os.replace(temp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
            return
        # An object store shows an upload only once it is complete.
        with self.fs.open(path, "wb") as stream:
            pq.write_table(table, stream)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a whole file so readers see all of it or none of it."""
        if self.local:
            temp = self._local_temp(path)
            try:
                Path(temp).write_bytes(data)
                os.replace(temp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
            return
        self.fs.pipe_file(path, data)

    def _create_once(self, path: str, data: bytes) -> bool:
        """Write ``path`` unless it exists; False when it did. Atomic on a local lake (a hard link
        fails on an existing name); on object stores a concurrent writer can slip in between."""
        if self.local:
            temp = self._local_temp(path)
            try:
                Path(temp).write_bytes(data)
                try:
                    os.link(temp, path)
                except FileExistsError:
                    return False
                except OSError:
                    # A filesystem without hard links: the existence check below is the best we can do.
                    if os.path.exists(path):
                        return False
                    os.replace(temp, path)
                return True
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
        if self.fs.exists(path):
            return False
        self.fs.pipe_file(path, data)
        return True

    def _local_temp(self, path: str) -> str:
        folder, _, name = path.rpartition("/")
        os.makedirs(folder, exist_ok=True)
        # A leading dot: pyarrow.dataset and our globs skip it while it is being written.
        return f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"


def _artifact_version(version: str) -> str:
    if not ARTIFACT_VERSION_PATTERN.match(version):
        raise InvalidInput(f"artifact version {version!r} must be letters, digits, '.', '_', '+' or '-'")
    return version


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(COPY_BYTES):
            digest.update(block)
    return digest.hexdigest()
