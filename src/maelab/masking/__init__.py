"""Masking: pure functions. A mask is a bool tensor, True = hidden from the encoder."""
