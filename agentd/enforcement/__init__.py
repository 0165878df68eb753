"""Enforcement: priority classes and the node pressure policy (docs/pressure.md)."""
