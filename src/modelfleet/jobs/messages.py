"""What travels on the broker for a job: one message per chunk of inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from modelfleet.store.jobs import Job


def job_view(job: Job) -> dict[str, Any]:
    """A job as the API and callbacks show it: ``job_id`` first, then the stored fields."""
    data = job.to_dict()
    return {"job_id": data.pop("id"), **data}


@dataclass(frozen=True)
class ChunkMessage:
    """Inputs ``offset .. offset+len(inputs)-1`` of job ``job_id``."""

    job_id: str
    target_kind: str
    target: str
    offset: int
    inputs: list[Any]

    @property
    def message_id(self) -> str:
        # Stable per chunk, so a republished chunk is recognisably the same message.
        return f"{self.job_id}:{self.offset}"

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "job_id": self.job_id,
                "target_kind": self.target_kind,
                "target": self.target,
                "offset": self.offset,
                "inputs": self.inputs,
            }
        )

    @classmethod
    def decode(cls, body: bytes) -> ChunkMessage:
        """Raises ValueError when the body is not a chunk message."""
        try:
            data = orjson.loads(body)
            message = cls(
                str(data["job_id"]),
                str(data["target_kind"]),
                str(data["target"]),
                int(data["offset"]),
                list(data["inputs"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a job chunk message: {err}") from None
        if message.target_kind not in ("model", "pipeline") or message.offset < 0:
            raise ValueError("not a job chunk message: bad target_kind or offset")
        return message
