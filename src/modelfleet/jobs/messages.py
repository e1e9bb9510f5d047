"""What travels on the broker for a job.

- A :class:`ChunkMessage` carries chunks of inputs for one target: one chunk of a large job, or the
  whole inputs of several small jobs submitted at about the same time (the gateway packs up to
  ``jobs.chunk_size`` inputs into a message, so a burst of one-input jobs costs the broker one
  publish, one hand-out and one ack per message, not per job).
- A :class:`BatchMessage` carries a batch job: the file to read and the file to write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from modelfleet.store.jobs import BatchSpec, Job


def job_view(job: Job) -> dict[str, Any]:
    """A job as the API and callbacks show it: ``job_id`` first, then the stored fields."""
    data = job.to_dict()
    return {"job_id": data.pop("id"), **data}


def _target(data: dict[str, Any]) -> tuple[str, str]:
    kind, target = str(data["target_kind"]), str(data["target"])
    if kind not in ("model", "pipeline"):
        raise ValueError(f"bad target_kind {kind!r}")
    return kind, target


@dataclass(frozen=True)
class Chunk:
    """Inputs ``offset .. offset+len(inputs)-1`` of job ``job_id``, which has ``total`` inputs.

    ``total`` lets a worker see, without reading the job, whether the chunks in its hands finish it.
    """

    job_id: str
    offset: int
    inputs: list[Any]
    total: int

    @property
    def message_id(self) -> str:
        return f"{self.job_id}:{self.offset}"


@dataclass(frozen=True)
class ChunkMessage:
    """Chunks of one or more jobs, all for the same target."""

    target_kind: str
    target: str
    chunks: tuple[Chunk, ...]

    @property
    def message_id(self) -> str:
        # Stable per message, so a republished message is recognisably the same one; a message of
        # one chunk is named after it.
        first = self.chunks[0].message_id
        return first if len(self.chunks) == 1 else f"{first}+{len(self.chunks) - 1}"

    @property
    def size(self) -> int:
        """The inputs it carries."""
        return sum(len(chunk.inputs) for chunk in self.chunks)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "target_kind": self.target_kind,
                "target": self.target,
                "chunks": [[c.job_id, c.offset, c.inputs, c.total] for c in self.chunks],
            }
        )


@dataclass(frozen=True)
class BatchMessage:
    """Batch job ``job_id``: every row of ``spec.input_file`` through the target into ``spec.output_file``."""

    job_id: str
    target_kind: str
    target: str
    spec: BatchSpec

    @property
    def message_id(self) -> str:
        return f"{self.job_id}:batch"

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "kind": "batch",
                "job_id": self.job_id,
                "target_kind": self.target_kind,
                "target": self.target,
                "batch": self.spec.to_dict(),
            }
        )


def decode_message(body: bytes) -> ChunkMessage | BatchMessage:
    """Raises ValueError when the body is not a job message."""
    try:
        data = orjson.loads(body)
        kind, target = _target(data)
        if data.get("kind") == "batch":
            return BatchMessage(str(data["job_id"]), kind, target, BatchSpec.from_dict(data["batch"]))
        chunks = tuple(Chunk(str(j), int(o), list(i), int(t)) for j, o, i, t in data["chunks"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"not a job message: {err}") from None
    if not chunks or any(not 0 <= chunk.offset < chunk.total for chunk in chunks):
        raise ValueError("not a job message: no chunks, or an offset outside its job")
    return ChunkMessage(kind, target, chunks)


def pack(target_kind: str, target: str, chunks: Sequence[Chunk], max_inputs: int) -> list[ChunkMessage]:
    """The chunks (in order) as messages of at most ``max_inputs`` inputs; a chunk is never split,
    so a chunk larger than that is a message of its own."""
    messages: list[ChunkMessage] = []
    current: list[Chunk] = []
    size = 0
    for chunk in chunks:
        if current and size + len(chunk.inputs) > max_inputs:
            messages.append(ChunkMessage(target_kind, target, tuple(current)))
            current, size = [], 0
        current.append(chunk)
        size += len(chunk.inputs)
    if current:
        messages.append(ChunkMessage(target_kind, target, tuple(current)))
    return messages
