"""Masking noise: the one seeded, per-sample keyed noise every model draws its masks from."""
