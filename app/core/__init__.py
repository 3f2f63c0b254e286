"""Slides, geometry, tiling, annotations and export: pure Python + NumPy, no Qt, no torch."""
