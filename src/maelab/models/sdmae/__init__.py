"""SD-MAE: self-distilled masked autoencoder for time-series anomaly detection."""
