"""Where every process of a fleet listens: written by the supervisor, read by the gateway and the CLI."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from modelfleet.errors import ConfigError


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class FleetPlan:
    """The addresses of the gateway and of every replica of every service.

    ``services`` hold models; ``job_workers``, ``streams`` and ``trainers`` are background services,
    started like workers but never routed to.
    """

    gateway: Endpoint
    services: dict[str, list[Endpoint]] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    job_workers: dict[str, list[Endpoint]] = field(default_factory=dict)
    streams: dict[str, list[Endpoint]] = field(default_factory=dict)
    trainers: dict[str, list[Endpoint]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FleetPlan:
        data = json.loads(text)
        return cls(
            gateway=Endpoint(**data["gateway"]),
            services={name: [Endpoint(**e) for e in eps] for name, eps in data["services"].items()},
            models=dict(data["models"]),
            job_workers={n: [Endpoint(**e) for e in eps] for n, eps in data.get("job_workers", {}).items()},
            streams={n: [Endpoint(**e) for e in eps] for n, eps in data.get("streams", {}).items()},
            trainers={n: [Endpoint(**e) for e in eps] for n, eps in data.get("trainers", {}).items()},
        )

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> FleetPlan:
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no fleet plan; is the fleet running (modelfleet up)?") from None
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{path}: not a fleet plan: {err}") from None
