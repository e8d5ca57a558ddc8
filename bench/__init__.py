"""studio-watch benchmarks: `python -m bench [--quick] [--only ROW,...]` (see bench/__main__.py, RESULTS.md)."""
