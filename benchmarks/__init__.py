"""Benchmarks for shoal; run each with `python -m benchmarks.<name>`."""
