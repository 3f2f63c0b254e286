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

from app.core.class_scores import threshold_level
from app.core.geometry import polygonal, rasterize


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


_KERNEL_2X2 = np.ones((2, 2), np.uint8)


def corner_map(prob: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """(h + 1, w + 1) uint8: at corner (x, y) of the pixel grid, the highest probability of the
    (up to four) region pixels touching it. Thresholded, it is the set of corners a tumour pixel
    touches, which traced at its pixel centres gives the outline along the pixels' edges
    directly: no half-pixel buffer to offset centre lines (that buffer was most of a trace's
    time), and since a 2x2 maximum and a threshold commute, it is made once per map and every
    re-trace only thresholds it."""
    h, w = prob.shape
    masked = cv2.bitwise_and(prob, inside)
    padded = cv2.copyMakeBorder(masked, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    return cv2.dilate(padded, _KERNEL_2X2, anchor=(0, 0))[: h + 1, : w + 1].copy()


def _bridge_pinches(grid: np.ndarray, passes: int = 2) -> bool:
    """Fill the 2x2 windows of two diagonal corners with nothing beside them (in place): traced
    8-connected, they would pinch a ring into an invalid figure of eight. The bridge joins two
    pixels that touch diagonally across a gap pixel, adding 3 pixels² at most (0.1% of the
    area on the benchmark run). True when none is left (a bridge can make a new one, rarely)."""
    marks = np.zeros_like(grid)
    for _ in range(passes):
        a, b, c, d = grid[:-1, :-1], grid[:-1, 1:], grid[1:, :-1], grid[1:, 1:]
        pinch = marks[:-1, :-1]  # marked at the window's top left
        np.bitwise_xor(a, b, out=pinch)
        pinch &= np.bitwise_xor(a, c)
        pinch &= ~np.bitwise_xor(a, d)
        pinch &= 1
        if not cv2.countNonZero(pinch):
            return True
        grid |= cv2.dilate(marks, _KERNEL_2X2, anchor=(1, 1))  # the whole window
    return False


def trace_corners(
    corners: np.ndarray,
    level: int,
    scale: float,
    offset: tuple[float, float],
    simplify: float = 0.0,
    min_area: float = 0.0,
    min_hole: float = 0.0,
) -> list[Polygon]:
    """Polygons with holes along the edges of the pixels at or above `level` (see
    `corner_map`); mask pixel (x, y) covers level-0 [x*scale + ox, (x+1)*scale + ox).
    `simplify`, `min_area` and `min_hole` are in level-0 units (px, px²): parts smaller than
    `min_area` are dropped and holes smaller than `min_hole` filled, judged on the contours
    before any polygon is built (specks never reach shapely)."""
    return trace_band(corners, level, scale, offset, simplify, min_area, min_hole)[0]


def trace_band(
    corners: np.ndarray,
    level: int,
    scale: float,
    offset: tuple[float, float],
    simplify: float = 0.0,
    min_area: float = 0.0,
    min_hole: float = 0.0,
    open_rows: tuple[int, ...] = (),
) -> tuple[list[Polygon], list[Polygon]]:
    """`trace_corners` of one band of a larger map: (finished polygons, open polygons). A part
    touching a corner row in `open_rows` (0, or the last, where the band meets a neighbour not
    traced with it) is open: returned whole, neither simplified nor filtered, for
    `finish_open_parts` once it is united with the neighbour's side."""
    _, grid = cv2.threshold(corners, max(1, level) - 1, 1, cv2.THRESH_BINARY)
    pinch_free = _bridge_pinches(grid)
    contours, hierarchy = cv2.findContours(grid, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return [], []
    hierarchy = hierarchy[0]
    ox, oy = offset
    tolerance = min(simplify / scale, 0.5)  # in mask pixels; at most half of one (see below)
    outer_floor, hole_floor = min_area / (scale * scale), min_hole / (scale * scale)

    def ring(c: np.ndarray, thin: bool) -> np.ndarray:
        if thin and tolerance > 0 and len(c) > 4:
            fewer = cv2.approxPolyDP(c, tolerance, True)
            c = fewer if len(fewer) >= 3 else c
        return c[:, 0, :] * scale + (ox, oy)

    polys, open_parts = [], []
    for i in np.flatnonzero(hierarchy[:, 3] == -1):
        c = contours[i]
        rows = c[:, 0, 1]
        is_open = bool(open_rows) and (int(rows.min()) in open_rows or int(rows.max()) in open_rows)
        if len(c) < 3 or (not is_open and cv2.contourArea(c) < outer_floor):
            continue
        holes = []
        child = hierarchy[i][2]
        while child != -1:
            hole = contours[child]
            if len(hole) >= 3 and (is_open or cv2.contourArea(hole) >= hole_floor):
                holes.append(ring(hole, not is_open))
            child = hierarchy[child][0]
        (open_parts if is_open else polys).append(Polygon(ring(c, not is_open), holes))
    if open_parts and not pinch_free:
        open_parts = [q for p in open_parts for q in _valid_parts(p)]
    if not polys:
        return [], open_parts
    # Pixel-edge rings without pinches are simple, and Douglas-Peucker below half a pixel keeps
    # a ring off itself; but rings are simplified one by one, so a hole may cross its outline:
    # polygons with holes (all of them if a pinch was left) are checked, the rare bad one
    # repaired. Checking every polygon would be a third of a re-trace.
    check = [i for i, p in enumerate(polys) if p.interiors or not pinch_free]
    if check:
        geoms = np.empty(len(check), dtype=object)
        geoms[:] = [polys[i] for i in check]
        for i, ok in zip(check, shapely.is_valid(geoms), strict=True):
            if not ok:
                polys[i] = _repair(polys[i])
    out = []
    for p in polys:
        for part in getattr(p, "geoms", [p]):
            if isinstance(part, Polygon) and not part.is_empty and part.area >= min_area:
                out.append(part)
    return out, open_parts


def finish_open_parts(
    parts: list[Polygon], scale: float, simplify: float = 0.0, min_area: float = 0.0, min_hole: float = 0.0
) -> list[Polygon]:
    """Open parts of neighbouring bands united along the borders they share (pixel edges meet
    exactly), then filtered and simplified as `trace_band` does a finished part."""
    if not parts:
        return []
    united = _bridged(polygonal(shapely.union_all(parts)), scale)
    tolerance = min(simplify, 0.5 * scale)
    out = []
    for p in getattr(united, "geoms", [united]):
        if not isinstance(p, Polygon) or p.is_empty:
            continue
        if Polygon(p.exterior).area < min_area:  # judged on the outline, as a contour is
            continue
        p = Polygon(p.exterior, [h for h in p.interiors if Polygon(h).area >= min_hole])
        if tolerance > 0:
            p = p.simplify(tolerance, preserve_topology=True)
        out.extend(q for q in _valid_parts(p) if q.area >= min_area)
    return out


def _bridged(united: BaseGeometry, scale: float) -> BaseGeometry:
    """Parts of two bands that meet at a point only (pixels touching diagonally across the
    border) joined by the diamond the whole-map trace bridges them with (see _bridge_pinches),
    so a band border never splits what tracing the map at once keeps whole."""
    pieces = list(getattr(united, "geoms", [united]))
    if len(pieces) < 2:
        return united
    tree = shapely.STRtree(pieces)
    left, right = tree.query(pieces, predicate="touches")
    diamonds = []
    for i, j in zip(left, right, strict=True):
        if i >= j:
            continue
        touch = pieces[i].intersection(pieces[j])
        for g in getattr(touch, "geoms", [touch]):
            if g.geom_type == "Point":
                x, y = g.x, g.y
                diamonds.append(Polygon([(x - scale, y), (x, y + scale), (x + scale, y), (x, y - scale)]))
    return polygonal(shapely.union_all(pieces + diamonds)) if diamonds else united


def _valid_parts(p: Polygon) -> list[Polygon]:
    fixed = p if p.is_valid else _repair(p)
    return [q for q in getattr(fixed, "geoms", [fixed]) if isinstance(q, Polygon) and not q.is_empty]


def _repair(p: Polygon) -> BaseGeometry:
    """A pinched or crossed ring made valid: a zero-width buffer (20x faster than make_valid
    here, and the same area on these), make_valid where that is not enough."""
    fixed = p.buffer(0)
    return polygonal(fixed if fixed.is_valid else shapely.make_valid(p, method="structure"))


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
    corners: np.ndarray | None = None,
    factor: int = 1,
) -> list[Polygon]:
    """Tumour polygons with holes, in level-0 pixels, where `prob` (uint8, 255 = 1.0, model
    pixels whose (0, 0) is level-0 `offset`) is at least `threshold`, inside the painted
    region only. `prob` may be the `coarse` map of `factor`; `corners` is its `corner_map`
    when the caller keeps one. Parts
    smaller than `min_area_um2` are dropped and holes smaller than `min_hole_um2` filled: a
    pathologist outlines tumour, not single cells or lumens."""
    if prob.dtype != np.uint8:
        raise TypeError("vectorize takes the uint8 map (255 = 1.0)")
    s = level0_per_model * factor
    if corners is None:
        corners = corner_map(prob, region_mask(region, prob.shape, s, offset))
    px_per_um = 1.0 / slide_mpp
    polys = trace_corners(
        corners,
        threshold_level(threshold),
        s,
        offset,
        simplify=simplify_um * px_per_um,
        min_area=min_area_um2 * px_per_um**2,
        min_hole=min_hole_um2 * px_per_um**2,
    )
    return within_region(polys, region)


def within_region(polys: list[Polygon], region: BaseGeometry) -> list[Polygon]:
    """The polygons cut to the painted region (the mask covered whole pixels of its border)."""
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
