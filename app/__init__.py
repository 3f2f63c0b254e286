"""Delineo: a desktop whole-slide viewer that delineates tumour with an on-device UNet."""

__version__ = "0.1.0"
