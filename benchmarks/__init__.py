"""Duplex: benchmarks."""
