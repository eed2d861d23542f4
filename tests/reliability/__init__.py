"""Reliability and security tests: items 9 and 14-20 of the reliability matrix."""
