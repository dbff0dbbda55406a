"""Benchmarks: each stage against a reference measured in the same run (see benchmarks/suite.py)."""
