"""Binary morphology on bool arrays by shifting them, so masks are cleaned without OpenCV.

Pixels beyond the border count as neither tissue nor glass: a dilation sees them as unset and
an erosion as set, so nothing grows in from or erodes away at the edge (OpenCV's default).
"""

from __future__ import annotations

import numpy as np

# OpenCV's 5x5 MORPH_ELLIPSE: a plus of rows 1-3 and the centre column.
ELLIPSE_5X5 = np.array(
    [
        [0, 0, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [0, 0, 1, 0, 0],
    ],
    bool,
)


SQUARE_3X3 = np.ones((3, 3), bool)
CROSS_3X3 = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


def grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilated by about a disk of `radius` px: one pixel a step, 3x3 squares and crosses
    alternated (an octagon within 6% of the disk), so the cost is radius x pixels, not
    radius² x pixels as a disk kernel would be."""
    out = mask.astype(bool, copy=True)
    for step in range(radius):
        out = dilate(out, SQUARE_3X3 if step % 2 else CROSS_3X3)
    return out


def dilate(mask: np.ndarray, kernel: np.ndarray = ELLIPSE_5X5) -> np.ndarray:
    """Set where any pixel under the (centred, symmetric) kernel is set."""
    return _combine(mask, kernel, np.logical_or, False)


def erode(mask: np.ndarray, kernel: np.ndarray = ELLIPSE_5X5) -> np.ndarray:
    """Set where every pixel under the (centred, symmetric) kernel is set."""
    return _combine(mask, kernel, np.logical_and, True)


def close(mask: np.ndarray, kernel: np.ndarray = ELLIPSE_5X5) -> np.ndarray:
    """Gaps and pinholes smaller than the kernel filled."""
    return erode(dilate(mask, kernel), kernel)


def open_(mask: np.ndarray, kernel: np.ndarray = ELLIPSE_5X5) -> np.ndarray:
    """Specks and threads smaller than the kernel removed (`open` is Python's)."""
    return dilate(erode(mask, kernel), kernel)


def _combine(mask: np.ndarray, kernel: np.ndarray, op, outside: bool) -> np.ndarray:
    kh, kw = kernel.shape
    ry, rx = kh // 2, kw // 2
    h, w = mask.shape
    padded = np.pad(mask.astype(bool, copy=False), ((ry, ry), (rx, rx)), constant_values=outside)
    out = np.full((h, w), outside, bool)
    for dy, dx in zip(*np.nonzero(kernel), strict=True):
        op(out, padded[dy : dy + h, dx : dx + w], out=out)
    return out
