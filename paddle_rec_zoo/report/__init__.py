"""Reporting: metrics, progress and log lines, training curves, experiment tables.

Imports nothing from the other subpackages (tests/test_layout.py)."""
