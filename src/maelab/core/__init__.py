"""Shared plumbing: errors, atomic I/O, process environment, config checks."""
