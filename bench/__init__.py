"""Benchmarks, run from the repository root: python3 -m bench.run (speed ratios), python3 -m bench.membrane_dice
(model quality on real data)."""
