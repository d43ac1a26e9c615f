"""Plain nn.Modules (no Lightning)."""
