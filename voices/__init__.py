"""Duplex: voices."""
