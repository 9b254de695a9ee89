"""Duplex: agent."""
