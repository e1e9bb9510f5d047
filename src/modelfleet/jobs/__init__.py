"""Asynchronous jobs: accepted by the gateway, queued on the broker, run by job-worker services."""
