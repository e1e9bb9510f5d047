"""Models that ship with modelfleet and run offline."""
