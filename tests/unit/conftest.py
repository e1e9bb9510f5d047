from __future__ import annotations

import sys
from pathlib import Path

# Unit tests import the tiny test models directly, as worker processes do through PYTHONPATH.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
