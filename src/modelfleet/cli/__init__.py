"""The `modelfleet` command: parse arguments, build settings, call into the rooms."""
