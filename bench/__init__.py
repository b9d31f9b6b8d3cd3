"""Benchmarks: each prints a table, writes JSON, and compares methods in the same run (not tests)."""
