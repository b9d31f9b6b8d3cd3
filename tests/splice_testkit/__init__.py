"""Helpers the tests share (tiny models, a live server, an editor).

Importable as `splice_testkit` because pytest puts `tests/` (never the repository root) on
`sys.path`: see the pytest options in pyproject.toml.
"""
