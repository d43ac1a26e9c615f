"""Layers shared by the models: transformer blocks, positional embeddings, token gathering, patchify."""
