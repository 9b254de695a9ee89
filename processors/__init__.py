"""Duplex: processors."""
