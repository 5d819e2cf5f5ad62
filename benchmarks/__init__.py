"""Benchmarks: runnable programs, not tests (`python -m benchmarks.run`)."""
