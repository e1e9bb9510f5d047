from __future__ import annotations

from modelfleet.cli.main import main

raise SystemExit(main())
