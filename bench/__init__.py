"""Benchmarks: each prints a side-by-side table in one run (`python cli.py bench --help`)."""
