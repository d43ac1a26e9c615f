"""DataModules and generators (numpy-vectorised, seeded)."""
