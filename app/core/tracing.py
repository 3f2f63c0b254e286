"""From a probability map to outlines: threshold, keep the painted region, trace polygons.

The one tracing path: the pipeline traces a run's outline with it, and a re-trace at another
sensitivity or minimum area (`ProbabilityMap.trace`) calls the same function on the same
uint8 map, so a re-trace at the run's own settings gives exactly the run's polygons.
"""

from __future__ import annotations

import cv2
import numpy as np
import shapely
import shapely.prepared
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from app.core.geometry import mask_to_polygons, polygonal, rasterize


def threshold_level(threshold: float) -> int:
    """The uint8 level (255 = 1.0) at or above which a pixel is tumour: a probability stored
    as round(p * 255) is at least `threshold` when its level is."""
    return int(np.clip(np.ceil(threshold * 255 - 1e-6), 0, 255))


def trace_factor(simplify_um: float, model_px_um: float) -> int:
    """Model pixels per traced pixel: the outline is simplified to `simplify_um` anyway, so it
    is traced on a grid of up to twice that (block means of the map, so the border still falls
    between pixels where the probability crosses the threshold): 4x fewer pixels to trace at
    the default 1 µm on a 1 µm/px model, which is what makes a re-trace interactive."""
    return max(1, int(2 * simplify_um / model_px_um + 1e-9)) if simplify_um > 0 else 1


def coarse(prob: np.ndarray, factor: int) -> np.ndarray:
    """Block means of `factor`² model pixels (uint8), the far partial row/column dropped (the
    canvas extends an overlap beyond the region)."""
    if factor == 1:
        return prob
    h, w = prob.shape[0] // factor, prob.shape[1] // factor
    return cv2.resize(prob[: h * factor, : w * factor], (w, h), interpolation=cv2.INTER_AREA)


def region_mask(
    region: BaseGeometry, shape: tuple[int, int], level0_per_model: float, offset: tuple[float, float]
) -> np.ndarray:
    """uint8 0/255 mask of the region on the map's grid (made once per map and kept)."""
    return rasterize(region, shape, level0_per_model, offset).view(np.uint8) * np.uint8(255)


def vectorize(
    prob: np.ndarray,
    threshold: float,
    level0_per_model: float,
    offset: tuple[float, float],
    region: BaseGeometry,
    slide_mpp: float,
    simplify_um: float,
    min_area_um2: float,
    min_hole_um2: float = 0.0,
    inside: np.ndarray | None = None,
    factor: int = 1,
) -> list[Polygon]:
    """Tumour polygons with holes, in level-0 pixels, where `prob` (uint8, 255 = 1.0, model
    pixels whose (0, 0) is level-0 `offset`) is at least `threshold`, inside the painted
    region only. `prob` may be the `coarse` map of `factor`; `inside` is then the region's
    `region_mask` on that grid, when the caller keeps one. Parts
    smaller than `min_area_um2` are dropped and holes smaller than `min_hole_um2` filled: a
    pathologist outlines tumour, not single cells or lumens."""
    if prob.dtype != np.uint8:
        raise TypeError("vectorize takes the uint8 map (255 = 1.0)")
    s = level0_per_model * factor
    if inside is None:
        inside = region_mask(region, prob.shape, s, offset)
    level = threshold_level(threshold)
    if level == 0:
        mask = inside.copy()
    else:
        _, mask = cv2.threshold(prob, level - 1, 255, cv2.THRESH_BINARY)
        cv2.bitwise_and(mask, inside, dst=mask)
    px_per_um = 1.0 / slide_mpp
    polys = mask_to_polygons(
        mask,
        s,
        offset,
        simplify=simplify_um * px_per_um,
        min_area=min_area_um2 * px_per_um**2,
        min_hole=min_hole_um2 * px_per_um**2,
    )
    prepared_region = shapely.prepared.prep(region)
    out = []
    for p in polys:
        if not prepared_region.contains(p):
            p = polygonal(p.intersection(region))
            p = p if p.is_valid else polygonal(shapely.make_valid(p))
        for part in getattr(p, "geoms", [p]):
            if isinstance(part, Polygon) and not part.is_empty:
                out.append(part)  # buffer and intersection give valid polygons
    return out
