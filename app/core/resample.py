"""Image resampling on Pillow, so the app needs no OpenCV (159 MB of the frozen bundle).

Sizes are given as (width, height), the result keeps the input's dtype and channels. uint8
grey and RGB go through Pillow directly; float maps through its 32-bit float mode; any other
layout one channel at a time.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_Size = tuple[int, int]


def area_downscale(img: np.ndarray, size: _Size) -> np.ndarray:
    """Shrunk without aliasing. By a whole factor each output pixel is the mean of the block it
    covers (as OpenCV's INTER_AREA); otherwise Pillow's antialiasing filters, which came
    closest to INTER_AREA on the sample slide (within 1 grey level near 1:1, a mean of 0.1-0.2
    beyond). Where the size grows instead it is bilinear."""
    w, h = int(size[0]), int(size[1])
    ih, iw = img.shape[:2]
    if w > iw or h > ih:
        return _resize(img, (w, h), Image.Resampling.BILINEAR)
    if iw % w == 0 and ih % h == 0:
        return _resize(img, (w, h), Image.Resampling.BOX)
    shrink = max(iw / w, ih / h)
    return _resize(img, (w, h), Image.Resampling.BILINEAR if shrink < 2 else Image.Resampling.HAMMING)


def bilinear(img: np.ndarray, size: _Size) -> np.ndarray:
    """Linear interpolation between pixel centres (for enlarging; shrinking it averages)."""
    return _resize(img, size, Image.Resampling.BILINEAR)


def bicubic(img: np.ndarray, size: _Size) -> np.ndarray:
    """Cubic interpolation between pixel centres: a sharper enlargement than bilinear."""
    return _resize(img, size, Image.Resampling.BICUBIC)


def nearest(img: np.ndarray, size: _Size) -> np.ndarray:
    """The input pixel under each output pixel's centre: for labels and masks (any dtype,
    bool included), whose values must not be mixed."""
    w, h = size
    ih, iw = img.shape[:2]
    rows = np.minimum(((np.arange(h) + 0.5) * (ih / h)).astype(np.intp), ih - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * (iw / w)).astype(np.intp), iw - 1)
    return img[rows[:, None], cols[None, :]]


def _resize(img: np.ndarray, size: _Size, how: Image.Resampling) -> np.ndarray:
    w, h = int(size[0]), int(size[1])
    if w < 1 or h < 1:
        raise ValueError(f"cannot resample to {w} x {h}")
    if img.shape[1] == w and img.shape[0] == h:
        return img.copy()
    if img.dtype == np.uint8 and (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((w, h), how))
    if img.ndim == 3:
        return np.stack([_resize(img[..., c], (w, h), how) for c in range(img.shape[2])], axis=2)
    if img.dtype == bool:  # a mask: the share of it under each output pixel, at least half
        return _resize(img.astype(np.uint8) * 255, (w, h), how) >= 128
    if img.dtype == np.uint8:
        return np.asarray(Image.fromarray(np.ascontiguousarray(img), "L").resize((w, h), how))
    out = np.asarray(Image.fromarray(np.ascontiguousarray(img, np.float32), "F").resize((w, h), how))
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(img.dtype)
