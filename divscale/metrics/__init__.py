"""Metrics of prompt sets: the paper's diversity d and the measures beside it (diversity)."""
