"""Hydrology windows for MM-MAE: patch layout, prepared store, sources, DataModule."""
