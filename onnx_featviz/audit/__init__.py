"""Deployment audits: compare (layer drift between two forms of a model) and stats (channels)."""
