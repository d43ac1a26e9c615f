"""MM-MAE: multi-modal masked autoencoder for hydrology."""
