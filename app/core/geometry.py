"""Region and outline geometry: masks to polygons with holes, regions from the CLI, areas in µm².

All geometry is shapely, in level-0 pixel coordinates of the slide.
"""

from __future__ import annotations

import cv2
import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from app.errors import DelineoError


class GeometryError(DelineoError):
    pass


def parse_rect(text: str) -> Polygon:
    """'X,Y,W,H' in level-0 pixels -> a rectangle."""
    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError:
        raise GeometryError(
            f"--region '{text}': expected X,Y,W,H in level-0 pixels, e.g. 1000,2000,4096,4096"
        ) from None
    if w <= 0 or h <= 0:
        raise GeometryError(f"--region '{text}': width and height must be positive")
    return box(x, y, x + w, y + h)


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


def mask_to_polygons(
    mask: np.ndarray,
    scale: float,
    offset: tuple[float, float],
    simplify: float = 0.0,
    min_area: float = 0.0,
    min_hole: float = 0.0,
) -> list[Polygon]:
    """Polygons with holes tracing a binary mask; mask pixel (x, y) covers level-0
    [x*scale + ox, (x+1)*scale + ox) and likewise in y.

    OpenCV traces pixel centres; a mitred half-pixel buffer moves each outline onto the pixel
    edges, so a traced block has the mask's area. `simplify` and `min_area` are in level-0
    units (px, px²); parts smaller than `min_area` are dropped and holes smaller than
    `min_hole` filled, judged on the traced contours before any polygon is built (cheap, and
    specks never reach shapely).
    """
    m = np.ascontiguousarray(mask.astype(np.uint8, copy=False))
    if not m.any():
        return []
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]
    ox, oy = offset

    def ring(c: np.ndarray) -> np.ndarray:
        return (c[:, 0, :].astype(np.float64) + 0.5) * scale + (ox, oy)

    # Douglas-Peucker on the traced rings, before the buffer: far fewer vertices for it to
    # offset, and 10x faster than GEOS' topology-preserving simplifier on a whole slide. Rings
    # are simplified one by one, so a hole may cross its outline: the validity check below
    # repairs that rare case.
    tolerance = simplify / scale  # in mask pixels

    def thin(c: np.ndarray) -> np.ndarray:
        if tolerance <= 0 or len(c) <= 4:
            return c
        simplified = cv2.approxPolyDP(c, tolerance, True)
        return simplified if len(simplified) >= 3 else c

    px_area = scale * scale
    outer_floor = min_area / px_area  # in mask pixels
    polys = []
    for i, c in enumerate(contours):
        if hierarchy[i][3] != -1 or len(c) < 3:
            continue  # holes are collected with their parent
        # A centre-line contour misses half a pixel along its edge (the rim): outer parts gain it
        # back, holes lose it.
        rim = 0.5 * cv2.arcLength(c, True)
        if cv2.contourArea(c) + rim < outer_floor:
            continue
        holes = []
        child = hierarchy[i][2]
        while child != -1:
            h = contours[child]
            if len(h) >= 3 and cv2.contourArea(h) - 0.5 * cv2.arcLength(h, True) >= min_hole / px_area:
                holes.append(ring(thin(h)))
            child = hierarchy[child][0]
        poly = Polygon(ring(thin(c)), holes)
        with np.errstate(divide="ignore", invalid="ignore"):  # one-pixel-wide runs have no area
            poly = poly.buffer(0.5 * scale, join_style="mitre", mitre_limit=2.0)
        if holes and not poly.is_valid:  # a simplified hole crossing its outline; GEOS buffers
            poly = polygonal(shapely.make_valid(poly))  # are valid otherwise
        for part in getattr(poly, "geoms", [poly]):
            if isinstance(part, Polygon) and not part.is_empty and part.area >= min_area:
                polys.append(part)
    return polys


def rasterize(
    geom: BaseGeometry, shape: tuple[int, int], scale: float, offset: tuple[float, float]
) -> np.ndarray:
    """Bool mask (h, w): pixel (x, y), covering level-0 [x*scale + ox, (x+1)*scale + ox), is set
    when its centre lies inside the geometry (the inverse of `mask_to_polygons`)."""
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
