"""Duplex: pipelines."""
