"""Benchmarks of sb3-mamba (run from the repository root: ``python -m benchmarks.run``)."""
