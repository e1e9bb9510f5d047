"""modelfleet: a fleet of small single-task models served as microservices behind one gateway."""

from __future__ import annotations

__version__ = "0.1.0"
