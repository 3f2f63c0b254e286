"""Training-time augmentation in NumPy: stain (HED) jitter, flips and 90° rotations,
scale jitter and class-mixing mosaics.

Mosaics matter most: EBHI-Seg tiles are one class each, but on a slide tumour borders benign
mucosa inside one field of view, and a model that has only seen single-class tiles learns to
judge the whole tile at once instead of each gland.
"""

from __future__ import annotations

import numpy as np

from app.core import resample

# Ruifrok & Johnston haematoxylin / eosin / DAB optical-density basis (rows = stains).
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)


def hed_jitter(
    rgb: np.ndarray, rng: np.random.Generator, sigma: float = 0.05, bias: float = 0.02
) -> np.ndarray:
    """Scale and shift each stain's concentration, as stain batches and scanners differ."""
    od = -np.log10((rgb.astype(np.float32) + 1.0) / 256.0)
    hed = od.reshape(-1, 3) @ _HED_FROM_RGB
    alpha = rng.uniform(1 - sigma, 1 + sigma, 3).astype(np.float32)
    beta = rng.uniform(-bias, bias, 3).astype(np.float32)
    od = (hed * alpha + beta) @ _RGB_FROM_HED
    out = 256.0 * np.power(10.0, -od) - 1.0
    return np.clip(out, 0, 255).reshape(rgb.shape).astype(np.uint8)


def brightness_contrast(rgb: np.ndarray, rng: np.random.Generator, amount: float = 0.08) -> np.ndarray:
    gain = rng.uniform(1 - amount, 1 + amount)
    offset = rng.uniform(-amount, amount) * 255
    return np.clip(rgb.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def flip_rotate(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
    k = int(rng.integers(4))
    img, mask = np.rot90(img, k), np.rot90(mask, k)
    if rng.random() < 0.5:
        img, mask = img[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(mask)


def scaled_crop(
    img: np.ndarray, mask: np.ndarray, out_w: int, out_h: int, scale: float, rng: np.random.Generator
):
    """A random crop that fills (out_h, out_w) after resizing by `scale` (crop clipped to the image)."""
    h, w = mask.shape
    cw = min(w, max(8, round(out_w / scale)))
    ch = min(h, max(8, round(out_h / scale)))
    x = int(rng.integers(0, w - cw + 1))
    y = int(rng.integers(0, h - ch + 1))
    img = img[y : y + ch, x : x + cw]
    mask = mask[y : y + ch, x : x + cw]
    img = (resample.area_downscale if scale < 1 else resample.bilinear)(img, (out_w, out_h))
    mask = resample.nearest(mask, (out_w, out_h))
    return img, mask


def mosaic(
    samples: list[tuple[np.ndarray, np.ndarray]],
    size: int,
    rng: np.random.Generator,
    scale_range: tuple[float, float],
):
    """Four crops in a 2x2 layout split at a random point, each from a different tile."""
    cx = int(rng.integers(int(size * 0.3), int(size * 0.7)))
    cy = int(rng.integers(int(size * 0.3), int(size * 0.7)))
    img = np.empty((size, size, 3), np.uint8)
    mask = np.empty((size, size), np.uint8)
    boxes = [(0, 0, cx, cy), (cx, 0, size, cy), (0, cy, cx, size), (cx, cy, size, size)]
    for (x0, y0, x1, y1), (src, src_mask) in zip(boxes, samples, strict=True):
        src, src_mask = flip_rotate(src, src_mask, rng)
        scale = float(rng.uniform(*scale_range))
        crop, crop_mask = scaled_crop(src, src_mask, x1 - x0, y1 - y0, scale, rng)
        img[y0:y1, x0:x1] = crop
        mask[y0:y1, x0:x1] = crop_mask
    return img, mask


def augment_single(
    img: np.ndarray,
    mask: np.ndarray,
    size: int,
    rng: np.random.Generator,
    scale_range: tuple[float, float],
):
    img, mask = flip_rotate(img, mask, rng)
    scale = max(float(rng.uniform(*scale_range)), size / min(mask.shape))
    return scaled_crop(img, mask, size, size, scale, rng)


def colour(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return brightness_contrast(hed_jitter(img, rng), rng)
