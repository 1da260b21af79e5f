"""Concept erasure for text-to-video diffusion models: erasers, training, inference helpers."""

__version__ = "0.1.0"
