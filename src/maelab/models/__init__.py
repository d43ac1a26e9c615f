"""Models: one package per model (config, masking, model, loss, module, figures)."""
