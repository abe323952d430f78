"""Routing rules: pure functions from a study (and its order) to a decision."""
