"""Plotting helpers shared by the models' figures (matplotlib, Agg backend)."""
