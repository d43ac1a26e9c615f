"""The base LightningModule every model's module extends (base.py) and its optimiser (optim.py)."""
