"""Influence Explorer engine (placeholder during bootstrap)."""
