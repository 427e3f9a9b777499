"""Corrections that run after the scale method (bias correction)."""
