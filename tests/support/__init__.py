"""Helpers shared by the test suites (databases, subprocess workers)."""
