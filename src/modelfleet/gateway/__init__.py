"""The single entry point: routes model calls to the replicas that host them."""
