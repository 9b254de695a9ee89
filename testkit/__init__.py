"""Offline scaffolding for tests and benchmarks: tiny (or full-size) randomly initialised models of the real
architectures built with the real packages' own classes, and speech clips.

Not part of any engine and never imported by ``processors``, ``voices`` or ``pipelines``; shipped in the wheel so
that ``duplex bench`` and the example replay scenarios (``audio: clip:NAME``) work from an installed package.
"""
