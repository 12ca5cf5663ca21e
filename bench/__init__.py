"""shoal benchmarks: data sets, harness, runners and plots (run from the repo root as ``python -m bench.NAME``).

Not installed with the library; see bench/README.md.
"""
