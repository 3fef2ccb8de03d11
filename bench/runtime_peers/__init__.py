"""Our server against full-depth CPU runtimes (issue 24): `python -m bench.runtime_peers` (see __main__.py)."""
