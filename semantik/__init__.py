"""Semantik: private, self-hosted semantic search over a team's documents."""

__version__ = "0.1.0"
