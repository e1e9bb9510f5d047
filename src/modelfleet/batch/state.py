"""The resumable state of a batch: `<output>.parts/` with one finished part file per chunk and a manifest.

The manifest records what the parts were computed from, so a rerun with the same arguments reuses
them and a rerun with a different input, target or chunk size is refused instead of silently mixing
the results of two different batches.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from modelfleet.batch.files import BatchConfigError, write_atomically

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    """What a batch's parts were computed from; sizes in bytes, mtime in nanoseconds."""

    target: str
    input_path: str
    input_size: int
    input_mtime_ns: int
    chunk_size: int

    @classmethod
    def of(cls, target: str, input_path: Path, chunk_size: int) -> Manifest:
        stat = input_path.stat()
        return cls(target, str(input_path.resolve()), stat.st_size, stat.st_mtime_ns, chunk_size)


class PartsFolder:
    """The `<output>.parts/` folder of one batch."""

    def __init__(self, output_path: Path) -> None:
        self.path = output_path.with_name(output_path.name + ".parts")

    def part(self, index: int) -> Path:
        return self.path / f"{index:08d}.jsonl"

    def done(self, index: int) -> bool:
        return self.part(index).exists()

    def finished_parts(self) -> list[Path]:
        return sorted(self.path.glob("[0-9]*.jsonl"))

    def open(self, manifest: Manifest, restart: bool = False) -> None:
        """Create the folder, or reuse it when its manifest matches; raises BatchConfigError otherwise."""
        if restart:
            self.remove()
        manifest_path = self.path / MANIFEST
        if manifest_path.exists():
            try:
                found = Manifest(**json.loads(manifest_path.read_text(encoding="utf-8")))
            except (ValueError, TypeError) as err:
                raise BatchConfigError(
                    f"{manifest_path} is unreadable ({err}); rerun with --restart to start over"
                ) from None
            if found != manifest:
                mine, theirs = asdict(manifest), asdict(found)
                differences = ", ".join(
                    f"{key} was {theirs[key]!r}, now {mine[key]!r}"
                    for key in mine
                    if mine[key] != theirs[key]
                )
                raise BatchConfigError(
                    f"{self.path} holds parts of a different batch ({differences}); "
                    f"rerun with the same arguments to resume, or with --restart to start over"
                )
            return
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomically(manifest_path, [json.dumps(asdict(manifest), indent=2) + "\n"])

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
