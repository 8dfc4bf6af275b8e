"""Machinery for converting models: torch op converters coremltools lacks (torch_ops.py)."""
