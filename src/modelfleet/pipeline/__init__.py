"""Pipelines: declarative graphs of model steps, their validation, placement and execution."""
