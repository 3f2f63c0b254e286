"""Region and outline geometry: masks to polygons with holes, regions from the CLI, areas in µm².

All geometry is shapely, in level-0 pixel coordinates of the slide.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from app.errors import DelineoError


class GeometryError(DelineoError):
    pass


# Level-0 coordinates beyond this are no slide's (the largest scans are about 250 000 px wide):
# bounding them keeps GEOS and the rasterizer's arithmetic far from overflow.
MAX_COORDINATE = 1e7


def parse_rect(text: str, what: str = "--region") -> Polygon:
    """'X,Y,W,H' in level-0 pixels -> a rectangle. Sizes may reach past the slide (clip it
    with `region_within_slide`); they are held to +-MAX_COORDINATE, which changes no slide's
    part of the rectangle."""
    try:
        values = [float(v) for v in text.split(",")]
        if len(values) != 4:
            raise ValueError
    except ValueError:
        raise GeometryError(
            f"{what} '{text}': expected X,Y,W,H in level-0 pixels, e.g. 1000,2000,4096,4096"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise GeometryError(f"{what} '{text}': X, Y, W and H must be finite numbers")
    x, y, w, h = values
    if w <= 0 or h <= 0:
        raise GeometryError(f"{what} '{text}': width and height must be positive")
    if abs(x) > MAX_COORDINATE or abs(y) > MAX_COORDINATE:
        raise GeometryError(f"{what} '{text}': X and Y must lie within +-{MAX_COORDINATE:.0e} pixels")
    return box(x, y, min(x + w, MAX_COORDINATE), min(y + h, MAX_COORDINATE))


def check_coordinates(geom: BaseGeometry, what: str) -> None:
    """GeometryError unless every coordinate is finite and within +-MAX_COORDINATE."""
    coords = shapely.get_coordinates(geom)
    if not coords.size:
        return
    if not np.isfinite(coords).all():
        raise GeometryError(f"{what} has coordinates that are not finite numbers (NaN or infinity)")
    if np.abs(coords).max() > MAX_COORDINATE:
        raise GeometryError(
            f"{what} has coordinates beyond +-{MAX_COORDINATE:.0e} pixels; no slide is that large"
        )


def region_within_slide(
    region: BaseGeometry, dimensions: tuple[int, int], what: str = "the region"
) -> tuple[BaseGeometry, str | None]:
    """The part of a region on the slide, and a note when some of it was not: the one check
    every region (CLI rectangle, GeoJSON, the GUI's painting) passes before a run. Raises
    GeometryError for a region that is empty, not finite, or entirely off the slide."""
    check_coordinates(region, what)
    region = repair(region)[0]
    if region.is_empty or region.area <= 0:
        raise GeometryError(f"{what} is empty: paint or give a region with an area")
    w, h = dimensions
    slide_box = box(0, 0, w, h)
    if slide_box.covers(region):
        return region, None
    inside = polygonal(region.intersection(slide_box))
    bx = ", ".join(f"{v:.0f}" for v in region.bounds)
    if inside.is_empty or inside.area <= 0:
        raise GeometryError(
            f"{what} (bounds {bx}) lies outside the slide ({w} x {h} px); nothing is left to delineate"
        )
    kept = ", ".join(f"{v:.0f}" for v in inside.bounds)
    return inside, f"{what} reaches outside the slide ({w} x {h} px); clipped to bounds {kept}"


def polygonal(geom: BaseGeometry) -> BaseGeometry:
    """Only the polygon parts of a geometry (intersections can leave lines and points)."""
    if geom.is_empty:
        return Polygon()
    if isinstance(geom, Polygon | MultiPolygon):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon | MultiPolygon)]
    return shapely.union_all(parts) if parts else Polygon()


def repair(geom: BaseGeometry) -> tuple[BaseGeometry, bool]:
    """A valid polygonal geometry and whether repair was needed (self-intersections etc.)."""
    if geom.is_valid:
        return polygonal(geom), False
    return polygonal(shapely.make_valid(geom)), True


def rasterize(
    geom: BaseGeometry, shape: tuple[int, int], scale: float, offset: tuple[float, float]
) -> np.ndarray:
    """Bool mask (h, w): pixel (x, y), covering level-0 [x*scale + ox, (x+1)*scale + ox), is set
    when its centre lies inside the geometry (the inverse of `app.core.tracing.vectorize`).

    A scan-line fill: on each row's centre line every edge crossing marks +1 or -1 (the edge's
    direction) at the first pixel centre at or right of it, and the running sum along the row
    is the winding number. Rings are oriented first (exteriors one way, holes the other), so a
    hole cancels its exterior and overlapping parts stay filled. Rows go in chunks, so memory
    stays bounded on the largest band masks (20000 x 512 and more)."""
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), bool)
    x0, y0, x1, y1 = _edges(geom, scale, offset)
    # Rows whose centre r + 0.5 lies in [min(y), max(y)) of the edge: half-open, so a vertex
    # shared by two edges is counted once and horizontal edges not at all.
    lo = np.clip(np.ceil(np.minimum(y0, y1) - 0.5), 0, h).astype(np.int64)
    hi = np.clip(np.ceil(np.maximum(y0, y1) - 0.5), 0, h).astype(np.int64)
    keep = hi > lo
    if not keep.any():
        return out
    x0, y0, x1, y1, lo, hi = x0[keep], y0[keep], x1[keep], y1[keep], lo[keep], hi[keep]
    direction = np.where(y1 > y0, 1, -1).astype(np.int16)
    slope = (x1 - x0) / (y1 - y0)
    # Only the columns between the leftmost and the rightmost crossing can be inside: left of
    # them no edge is crossed yet, right of them every ring has been crossed in and out.
    c0 = int(np.clip(np.ceil(min(x0.min(), x1.min()) - 0.5), 0, w))
    c1 = int(np.clip(np.ceil(max(x0.max(), x1.max()) - 0.5), 0, w))
    if c1 <= c0:
        return out
    width = c1 - c0 + 1  # a mark at c1 changes nothing, but has a place to go
    chunk = max(1, _CHUNK_MARKS // width)
    for r0 in range(int(lo.min()), int(hi.max()), chunk):
        r1 = min(h, r0 + chunk)
        e = np.flatnonzero((lo < r1) & (hi > r0))
        if e.size == 0:
            continue
        first, last = np.maximum(lo[e], r0), np.minimum(hi[e], r1)
        counts = last - first
        edge = np.repeat(e, counts)
        row = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts - first, counts)
        x = x0[edge] + (row + 0.5 - y0[edge]) * slope[edge]
        col = np.clip(np.ceil(x - 0.5), c0, c1).astype(np.int64) - c0
        marks = np.zeros((r1 - r0) * width, np.int16)  # windings beyond 32767 parts deep: none
        np.add.at(marks, (row - r0) * width + col, direction[edge])
        winding = np.cumsum(marks.reshape(r1 - r0, width)[:, :-1], axis=1, dtype=np.int16)
        out[r0:r1, c0:c1] = winding != 0
    return out


_CHUNK_MARKS = 1 << 22  # mark cells per chunk of rows (8 MB of int16)


def _edges(
    geom: BaseGeometry, scale: float, offset: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every ring's edges (x0, y0, x1, y1) in mask-pixel units, rings oriented."""
    polys = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon) and not g.is_empty]
    if not polys:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    rings = shapely.get_rings(shapely.orient_polygons(np.asarray(polys, dtype=object)))
    coords, ring = shapely.get_coordinates(rings, return_index=True)
    xs = (coords[:, 0] - offset[0]) / scale
    ys = (coords[:, 1] - offset[1]) / scale
    same = ring[1:] == ring[:-1]  # a ring's last point repeats its first: no edge to the next ring
    return xs[:-1][same], ys[:-1][same], xs[1:][same], ys[1:][same]


def area_um2(geom: BaseGeometry, mpp: float | None) -> float | None:
    return None if mpp is None else float(geom.area) * mpp * mpp


def perimeter_um(geom: BaseGeometry, mpp: float | None) -> float | None:
    return None if mpp is None else float(geom.length) * mpp
