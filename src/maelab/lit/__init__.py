"""LightningModules: wire plain models to losses, metrics and optimisers."""
