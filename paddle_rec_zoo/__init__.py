"""Shared machinery of the zoo's four tools: config, data, engines, metrics, checkpoints."""
