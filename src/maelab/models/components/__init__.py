"""Shared model pieces: transformer blocks, positional embeddings, token gathering."""
