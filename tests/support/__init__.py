"""Helpers shared by the test suite (ports, databases, running mxfed)."""
