"""The model service: one process hosting one or several models behind plain JSON and OIP v2."""
