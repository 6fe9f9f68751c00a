"""Benchmarks: ``python -m benchmarks.<name>``; each writes ``benchmarks/results/<name>-<device>.json`` and ``.md``."""
