"""Where the tissue is, from the slide thumbnail, so background tiles are never sent to the model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import Polygon, box
from shapely.geometry.base import BaseGeometry

from app.core import morphology
from app.core.pixel_rings import trace_rings
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
    sat, value = _saturation_value(rgb)
    sat = _gaussian_5x5(sat)
    thresh = max(_otsu_threshold(sat), 20)
    mask = (sat > thresh) & (value > 30)  # very dark = pen marks / debris edges, keep mild
    return morphology.open_(morphology.close(mask))


def _saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV's S and V (0-255) of uint8 RGB, rounded as OpenCV's RGB2HSV does (its 12-bit
    reciprocal table), so the threshold sees the same numbers it always has."""
    r, g, b = (np.asarray(rgb[..., c], np.uint8) for c in range(3))
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    reciprocal = np.zeros(256, np.int32)
    reciprocal[1:] = np.rint((255 << 12) / np.arange(1, 256))
    s = (diff.astype(np.int32) * reciprocal[v] + (1 << 11)) >> 12
    return s.astype(np.uint8), v


def _gaussian_5x5(img: np.ndarray) -> np.ndarray:
    """The 5x5 Gaussian (binomial 1-4-6-4-1, OpenCV's for sigma 0) of uint8, mirrored at the
    border without repeating the edge pixel, rounded to the nearest."""
    taps = (1, 4, 6, 4, 1)
    h, w = img.shape
    p = np.pad(img.astype(np.uint16), 2, mode="reflect")  # 256 * 255 at most: fits
    rows = sum(p[:, i : i + w] * np.uint16(t) for i, t in enumerate(taps))
    both = sum(rows[i : i + h] * np.uint16(t) for i, t in enumerate(taps))
    return ((both + np.uint16(128)) >> 8).astype(np.uint8)


def _otsu_threshold(img: np.ndarray) -> int:
    """Otsu's threshold of uint8: the level that best splits the histogram in two (pixels
    above it are the upper class), the lowest of equals."""
    p = np.bincount(img.ravel(), minlength=256).astype(np.float64) / img.size
    q1 = np.cumsum(p)
    m1 = np.cumsum(p * np.arange(256))
    q2 = 1.0 - q1
    eps = np.finfo(np.float32).eps
    valid = (np.minimum(q1, q2) >= eps) & (np.maximum(q1, q2) <= 1.0 - eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu1 = m1 / q1
        mu2 = (m1[-1] - m1) / q2
        between = np.where(valid, q1 * q2 * (mu1 - mu2) ** 2, 0.0)
    return int(np.argmax(between)) if between.max() > 0 else 0


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


class NoTissueError(SlideError):
    """The thumbnail shows no tissue, so a whole-slide run would have nothing to run on."""


# A whole-slide region: tissue grown by about a tile's context so outlines at its edge are not
# cut, specks (dust, debris) dropped, and the geometry held to a size GEOS handles in no time.
WHOLE_SLIDE_DILATE_UM = 64.0
WHOLE_SLIDE_MIN_SPECK_UM2 = (
    5_000.0  # about a 70 µm square, alone on the glass (a 512² tile at 0.5 µm/px: 65 536)
)
WHOLE_SLIDE_MAX_PARTS = 64
WHOLE_SLIDE_MAX_VERTICES = 4000
ASSUMED_MPP = 0.5  # for the speck and margin sizes only, on a slide that records none


def tissue_regions(
    slide: Slide,
    tissue: TissueMask | None = None,
    *,
    mpp: float | None = None,
    dilate_um: float = WHOLE_SLIDE_DILATE_UM,
    min_speck_um2: float = WHOLE_SLIDE_MIN_SPECK_UM2,
    max_parts: int = WHOLE_SLIDE_MAX_PARTS,
    max_vertices: int = WHOLE_SLIDE_MAX_VERTICES,
) -> BaseGeometry:
    """The tissue on the thumbnail as a (Multi)Polygon in level-0 pixels: the region of a
    whole-slide run. Holes are filled (glass inside is skipped tile by tile anyway). Too many
    parts are merged by growing the margin, never dropped, so no tissue is lost to the cap."""
    tissue = tissue if tissue is not None else tissue_mask(slide)
    mpp = mpp or (sum(slide.mpp) / 2 if slide.mpp else ASSUMED_MPP)
    s = tissue.scale  # mask px per level-0 px
    mask = tissue.mask.astype(np.uint8)
    mask_px_um = mpp / s
    radius = max(1, round(dilate_um / mask_px_um))
    min_area_mask = min_speck_um2 / (mask_px_um * mask_px_um)
    polygons: list[Polygon] = []
    for _ in range(8):
        polygons = _mask_parts(mask, radius, min_area_mask)
        if len(polygons) <= max_parts:
            break
        radius *= 2
    if not polygons:
        raise NoTissueError(
            f"{slide.name}: no tissue found on the slide's thumbnail (blank, out of focus, or unstained?); "
            "check the slide in the viewer, or give the region yourself with --region X,Y,W,H or "
            "--region-geojson FILE"
        )
    polygons = sorted(polygons, key=lambda p: p.area, reverse=True)[:max_parts]
    region = shapely.union_all(polygons)
    tolerance = 1.0  # mask px; simplified inside the margin, so tissue stays covered
    while _vertex_count(region) > max_vertices and tolerance < radius:
        region = shapely.union_all(
            [shapely.buffer(shapely.simplify(p, tolerance), tolerance) for p in polygons]
        )
        tolerance *= 2
    region = shapely.affinity.scale(region, 1 / s, 1 / s, origin=(0, 0))
    return region.intersection(box(0, 0, *slide.dimensions))


GROW_CELLS = 16  # the margin is grown on blocks of about radius / 16 mask px


def _mask_parts(mask: np.ndarray, radius: int, min_area: float) -> list[Polygon]:
    """Outlines of the mask's tissue grown by `radius` mask px, holes filled. A grown part with
    less tissue than `min_area` mask px is a speck on the glass and dropped; a small fragment
    beside tissue merges with it when grown, so it is kept. The growing is done on blocks of
    k x k pixels (any tissue in a block counts), so it covers at least the radius and costs
    the same at any radius."""
    k = max(1, radius // GROW_CELLS)
    h, w = -(-mask.shape[0] // k), -(-mask.shape[1] // k)
    blocks = np.zeros((h * k, w * k), bool)
    blocks[: mask.shape[0], : mask.shape[1]] = mask
    blocks = blocks.reshape(h, k, w, k).any(axis=(1, 3))
    grown = morphology.grow(np.pad(blocks, 1), -(-radius // k) + 1)
    outlines = trace_rings(grown, bridge=True)
    outer = np.flatnonzero(outlines.area > 0)
    if not len(outer):
        return []
    parts = list(shapely.polygons(outlines.linear_rings(outer, float(k), (-float(k), -float(k)))))
    # Tissue per part: the signed areas of the tissue's rings in it (outlines less holes).
    tissue = trace_rings(mask.astype(bool), bridge=False)
    if not len(tissue):
        return []
    firsts = shapely.points(tissue.xy[tissue.start[:-1]] + 0.5)
    hit, part = shapely.STRtree(parts).query(firsts, predicate="intersects")
    tissue_in = np.bincount(part, weights=tissue.area[hit], minlength=len(parts))
    return [p for p, t in zip(parts, tissue_in, strict=True) if t >= min_area]


def _vertex_count(geom: BaseGeometry) -> int:
    return int(shapely.get_num_coordinates(geom))
