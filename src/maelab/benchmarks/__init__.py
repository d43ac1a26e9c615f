"""Benchmarks (`python -m maelab.benchmarks`): ratios measured side by side in one run."""
