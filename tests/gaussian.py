"""A Gaussian blur for the tests' stand-in models (smooth maps, as a real model's are)."""

from __future__ import annotations

import numpy as np


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """2-D float32 image blurred by a separable Gaussian of `sigma` px (kernel of 8 sigma + 1
    taps, mirrored border without repeating the edge pixel), as OpenCV's GaussianBlur did."""
    radius = round(4 * sigma)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(x**2) / (2 * sigma * sigma))
    k = (k / k.sum()).astype(np.float32)
    h, w = img.shape
    p = np.pad(np.asarray(img, np.float32), radius, mode="reflect")
    rows = sum(t * p[:, i : i + w] for i, t in enumerate(k))
    return sum(t * rows[i : i + h] for i, t in enumerate(k)).astype(np.float32)
