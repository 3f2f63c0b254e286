"""Region and outline geometry: masks to polygons with holes, regions from the CLI, areas in µm².

All geometry is shapely, in level-0 pixel coordinates of the slide.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from app.errors import DelineoError


class GeometryError(DelineoError):
    pass


# Level-0 coordinates beyond this are no slide's (the largest scans are about 250 000 px wide):
# bounding them keeps GEOS and OpenCV's fixed-point rasterizer far from overflow.
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
    when its centre lies inside the geometry (the inverse of `app.core.tracing.vectorize`)."""
    out = np.zeros(shape, np.uint8)
    ox, oy = offset
    # In mask-pixel units, shrunk by 0.05 px: OpenCV fills [round(left), round(right)] with
    # halves rounded up, so an edge exactly on a pixel boundary would take one pixel too many.
    # Exteriors and holes are each shrunk, since filling holes with 0 rounds the same way.
    local = shapely.affinity.affine_transform(geom, [1 / scale, 0, 0, 1 / scale, -ox / scale, -oy / scale])

    def fill(ring, value: int) -> None:
        shrunk = polygonal(Polygon(ring).buffer(-0.05, join_style="mitre"))
        for part in getattr(shrunk, "geoms", [shrunk]):
            if isinstance(part, Polygon) and not part.is_empty:
                pts = np.round((np.asarray(part.exterior.coords)[:, :2] - 0.5) * 16).astype(np.int32)
                cv2.fillPoly(out, [pts], value, lineType=cv2.LINE_8, shift=4)  # 4 fraction bits

    for poly in getattr(local, "geoms", [local]):
        if not isinstance(poly, Polygon) or poly.is_empty:
            continue
        fill(poly.exterior, 1)
        for hole in poly.interiors:
            fill(hole, 0)
    return out.astype(bool)


def area_um2(geom: BaseGeometry, mpp: float | None) -> float | None:
    return None if mpp is None else float(geom.area) * mpp * mpp


def perimeter_um(geom: BaseGeometry, mpp: float | None) -> float | None:
    return None if mpp is None else float(geom.length) * mpp
