"""maelab: masked autoencoders for time-series anomaly detection and geoscience grids."""

__version__ = "0.1.0"
