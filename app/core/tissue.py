"""Where the tissue is, from the slide thumbnail, so background tiles are never sent to the model."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from app.core.slide import Slide, SlideError

THUMBNAIL_SIDE = 2048


@dataclass(frozen=True)
class TissueMask:
    mask: np.ndarray  # bool (h, w), True = tissue
    scale: float  # mask pixels per level-0 pixel
    note: str | None = None  # said when part of the thumbnail could not be read

    def fraction(self, x: float, y: float, w: float, h: float) -> float:
        """Share of tissue pixels in a level-0 rectangle (0 outside the slide)."""
        s = self.scale
        x0, y0 = max(0, int(np.floor(x * s))), max(0, int(np.floor(y * s)))
        x1 = min(self.mask.shape[1], int(np.ceil((x + w) * s)))
        y1 = min(self.mask.shape[0], int(np.ceil((y + h) * s)))
        if x1 <= x0 or y1 <= y0:
            return 0.0
        return float(self.mask[y0:y1, x0:x1].mean())


def tissue_mask_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """H&E tissue is stained (saturated) and darker than glass. Otsu on saturation separates
    the two on most slides; a floor keeps pale glass out on slides with little tissue."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    sat = cv2.GaussianBlur(hsv[..., 1], (5, 5), 0)
    otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    thresh = max(otsu, 20)
    mask = (sat > thresh) & (hsv[..., 2] > 30)  # very dark = pen marks / debris edges, keep mild
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, k)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, k)
    return mask.astype(bool)


def tissue_mask(slide: Slide, side: int = THUMBNAIL_SIDE) -> TissueMask:
    """Tissue from the thumbnail. Where a tile of it cannot be read, the part is taken as
    tissue (its tiles are then run, or counted unreadable): a bad tile never ends a run and
    never hides tissue."""
    try:
        thumb = slide.thumbnail(side)
    except SlideError:
        thumb, gaps = slide.thumbnail_with_gaps(side)
        mask = tissue_mask_from_rgb(thumb) | gaps
        note = (
            f"part of {slide.name}'s overview level could not be read ({gaps.mean():.1%} of the slide); "
            "it was treated as tissue"
        )
        return TissueMask(mask, thumb.shape[1] / slide.dimensions[0], note)
    return TissueMask(tissue_mask_from_rgb(thumb), thumb.shape[1] / slide.dimensions[0])
