"""The UNet, its training, export and conversion. The only package that imports torch."""
