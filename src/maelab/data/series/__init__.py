"""Long multivariate series as windows: synthetic anomalies, SMD."""
