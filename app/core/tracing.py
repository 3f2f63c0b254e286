"""From a probability map to outlines: threshold, keep the painted region, trace polygons.

The one tracing path: the pipeline traces a run's outline with it, and a re-trace at another
sensitivity or minimum area (`ProbabilityMap.trace`) calls the same function on the same
uint8 map, so a re-trace at the run's own settings gives exactly the run's polygons.
"""

from __future__ import annotations

import numpy as np
import shapely
import shapely.prepared
from shapely.geometry import Polygon, box
from shapely.geometry.base import BaseGeometry

from app.core.class_scores import threshold_level
from app.core.geometry import polygonal, rasterize
from app.core.pixel_rings import Rings, padded_at_or_above, trace_rings

MAX_TOLERANCE_PX = 0.49  # Douglas-Peucker tolerance in traced pixels: under half of one


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
    total = np.zeros((h, w), np.uint16 if factor * factor * 255 < 2**16 else np.uint32)
    for i in range(factor):  # strided adds: 10x faster than a sum over a 4-D view
        for j in range(factor):
            total += prob[i : h * factor : factor, j : w * factor : factor]
    total += factor * factor // 2
    total //= factor * factor
    return total.astype(np.uint8)


def region_mask(
    region: BaseGeometry, shape: tuple[int, int], level0_per_model: float, offset: tuple[float, float]
) -> np.ndarray:
    """uint8 0/255 mask of the region on the map's grid (made once per map and kept)."""
    return rasterize(region, shape, level0_per_model, offset).view(np.uint8) * np.uint8(255)


def masked_map(prob: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The map with every pixel outside the region zero (uint8, made once per map and kept):
    every re-trace only thresholds it."""
    return np.bitwise_and(prob, inside)


def rings_at(masked: np.ndarray, level: int) -> Rings:
    """The pixel-edge rings where the masked map is at or above `level` (pixels touching at a
    corner bridged): the part of a trace that depends on the level only, so a caller that
    re-traces at one level with other filters (another minimum area) keeps it."""
    return trace_rings(padded_at_or_above(masked, max(1, level)), bridge=True, padded=True)


def trace_masked(
    masked: np.ndarray,
    level: int,
    scale: float,
    offset: tuple[float, float],
    simplify: float = 0.0,
    min_area: float = 0.0,
    min_hole: float = 0.0,
    rings: Rings | None = None,
) -> list[Polygon]:
    """Polygons with holes along the edges of the pixels at or above `level` (see
    `masked_map`; `rings`: its `rings_at`, when the caller keeps them); mask pixel (x, y)
    covers level-0 [x*scale + ox, (x+1)*scale + ox). `simplify`, `min_area` and `min_hole` are
    in level-0 units (px, px²): parts smaller than `min_area` are dropped and holes smaller than
    `min_hole` filled, judged on the rings before any polygon is built (specks never reach
    shapely)."""
    return trace_band(masked, level, scale, offset, simplify, min_area, min_hole, rings=rings)[0]


def trace_band(
    masked: np.ndarray,
    level: int,
    scale: float,
    offset: tuple[float, float],
    simplify: float = 0.0,
    min_area: float = 0.0,
    min_hole: float = 0.0,
    open_rows: tuple[int, ...] = (),
    rings: Rings | None = None,
) -> tuple[list[Polygon], list[Polygon]]:
    """`trace_masked` of one band of a larger map: (finished polygons, open polygons). A part
    touching a vertex row in `open_rows` (0, or the band's height, where the band meets a
    neighbour not traced with it) is open: returned whole, neither simplified nor filtered,
    for `finish_open_parts` once it is united with the neighbour's side."""
    rings = rings if rings is not None else rings_at(masked, level)
    pinch_free = not rings.pinched
    if not len(rings):
        return [], []
    outer_floor, hole_floor = min_area / (scale * scale), min_hole / (scale * scale)
    is_outer = rings.area > 0
    is_open = np.zeros(len(rings), bool)
    if open_rows:
        is_open = np.isin(rings.row_min, open_rows) | np.isin(rings.row_max, open_rows)
    keep = is_outer & (is_open | (rings.area >= outer_floor))
    if not keep.any():
        return [], []
    lines_of = _RingLines(rings, scale, offset)
    parent = _hole_parents(rings, keep, hole_floor if not is_open.any() else 0.0, lines_of)
    holes = np.flatnonzero(parent >= 0)
    holes = holes[is_open[parent[holes]] | (-rings.area[holes] >= hole_floor)]

    # Every kept ring, shells first then holes, as rings of level-0 coordinates.
    shells = np.flatnonzero(keep)
    order = np.concatenate([shells, holes[np.argsort(parent[holes], kind="stable")]])
    owner = np.concatenate([shells, parent[holes][np.argsort(parent[holes], kind="stable")]])
    lines = lines_of(order)
    tolerance = min(simplify / scale, MAX_TOLERANCE_PX) * scale  # under half a mask pixel (below)
    if tolerance > 0:
        thin = ~is_open[owner] & (np.diff(rings.start)[order] > 4)
        fewer = shapely.simplify(lines[thin], tolerance, preserve_topology=False)
        enough = shapely.get_num_coordinates(fewer) >= 4
        lines[np.flatnonzero(thin)[enough]] = fewer[enough]
    by_owner = np.argsort(owner, kind="stable")  # each shell before its holes
    _, index = np.unique(owner[by_owner], return_inverse=True)
    made = shapely.polygons(lines[by_owner], indices=index)
    made_open = is_open[np.unique(owner)]
    polys = [p for p, o in zip(made, made_open, strict=True) if not o]
    open_parts = [p for p, o in zip(made, made_open, strict=True) if o]
    if open_parts and not pinch_free:
        open_parts = [q for p in open_parts for q in _valid_parts(p)]
    if not polys:
        return [], open_parts
    # Distinct pixel-edge rings are at least a pixel apart (bridged rings never touch), and
    # Douglas-Peucker moves no point of a ring by more than its tolerance, under half a pixel:
    # simplified rings stay apart, so the polygons are valid as built. Where a pinch was left
    # (a bridge made a new one, rarely) they are checked and the bad ones repaired.
    if not pinch_free:
        polys = [q for p in polys for q in _valid_parts(p)]
    out = []
    for p in polys:
        for part in getattr(p, "geoms", [p]):
            if isinstance(part, Polygon) and not part.is_empty and part.area >= min_area:
                out.append(part)
    return out, open_parts


class _RingLines:
    """Rings as shapely LinearRings in level-0 coordinates, each made once: the hole nesting
    and the polygons share them."""

    def __init__(self, rings: Rings, scale: float, offset: tuple[float, float]):
        self.rings, self.scale, self.offset = rings, scale, offset
        self.lines = np.empty(len(rings), dtype=object)
        self.made = np.zeros(len(rings), bool)

    def __call__(self, which: np.ndarray) -> np.ndarray:
        todo = which[~self.made[which]]
        if len(todo):
            todo = np.unique(todo)
            self.lines[todo] = self.rings.linear_rings(todo, self.scale, self.offset)
            self.made[todo] = True
        return self.lines[which]


def _hole_parents(rings: Rings, shells: np.ndarray, hole_floor: float, lines_of: _RingLines) -> np.ndarray:
    """For each hole of at least `hole_floor` (mask px²), the kept outline it lies in (the
    smallest one around a point inside it); -1 for the others (filled)."""
    parent = np.full(len(rings), -1, np.int64)
    holes = np.flatnonzero((rings.area < 0) & (-rings.area >= max(hole_floor, 1.0)))
    if not len(holes):
        return parent
    # Only an outline larger than a hole can hold it; nested islands count, kept or not. Of
    # those, the ones whose bounding box holds a hole are made polygons and asked.
    smallest = (-rings.area[holes]).min()
    candidates = np.flatnonzero((rings.area > 0) & (rings.area > smallest))
    if not len(candidates):
        return parent
    x, y, at = rings.xy[:, 0], rings.xy[:, 1], rings.start[:-1]
    boxes = shapely.box(
        *(
            f.reduceat(v, at)[candidates]
            for f, v in ((np.minimum, x), (np.minimum, y), (np.maximum, x), (np.maximum, y))
        )
    )
    points = shapely.points(rings.inner[holes])
    _, in_box = shapely.STRtree(boxes).query(points, predicate="intersects")
    candidates = candidates[np.unique(in_box)]
    if not len(candidates):
        return parent
    outlines = shapely.polygons(lines_of(candidates))
    s, (ox, oy) = lines_of.scale, lines_of.offset
    points = shapely.points(rings.inner[holes] * s + (ox, oy))
    hit, tree_idx = shapely.STRtree(outlines).query(points, predicate="within")
    area = rings.area[candidates[tree_idx]]
    pick = np.lexsort((area, hit))
    first = np.r_[True, hit[pick][1:] != hit[pick][:-1]]
    owner = candidates[tree_idx[pick][first]]
    parent[holes[hit[pick][first]]] = np.where(shells[owner], owner, -1)
    return parent


def finish_open_parts(
    parts: list[Polygon], scale: float, simplify: float = 0.0, min_area: float = 0.0, min_hole: float = 0.0
) -> list[Polygon]:
    """Open parts of neighbouring bands united along the borders they share (pixel edges meet
    exactly), then filtered and simplified as `trace_band` does a finished part."""
    if not parts:
        return []
    united = _bridged(polygonal(shapely.union_all(parts)), scale)
    tolerance = min(simplify, MAX_TOLERANCE_PX * scale)
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
    """Parts that meet at a point only (pixels touching diagonally, left by the bands' traces)
    joined by the pixel the whole-map trace bridges them with (the upper one of the window's
    two empty pixels, see pixel_rings._bridge), so a band border never splits what tracing
    the map at once keeps whole."""
    pieces = list(getattr(united, "geoms", [united]))
    if len(pieces) < 2:
        return united
    tree = shapely.STRtree(pieces)
    left, right = tree.query(pieces, predicate="touches")
    bridges = []
    for i, j in zip(left, right, strict=True):
        if i >= j:
            continue
        touch = pieces[i].intersection(pieces[j])
        for g in getattr(touch, "geoms", [touch]):
            if g.geom_type == "Point":
                x, y = g.x, g.y
                upper_left = box(x - scale, y - scale, x, y)
                taken = united.covers(upper_left.centroid)
                bridges.append(box(x, y - scale, x + scale, y) if taken else upper_left)
    return polygonal(shapely.union_all(pieces + bridges)) if bridges else united


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
    masked: np.ndarray | None = None,
    factor: int = 1,
    rings: Rings | None = None,
) -> list[Polygon]:
    """Tumour polygons with holes, in level-0 pixels, where `prob` (uint8, 255 = 1.0, model
    pixels whose (0, 0) is level-0 `offset`) is at least `threshold`, inside the painted
    region only. `prob` may be the `coarse` map of `factor`; `masked` is its `masked_map`
    and `rings` their `rings_at` this threshold, when the caller keeps them. Parts
    smaller than `min_area_um2` are dropped and holes smaller than `min_hole_um2` filled: a
    pathologist outlines tumour, not single cells or lumens."""
    if prob.dtype != np.uint8:
        raise TypeError("vectorize takes the uint8 map (255 = 1.0)")
    s = level0_per_model * factor
    if masked is None:
        masked = masked_map(prob, region_mask(region, prob.shape, s, offset))
    px_per_um = 1.0 / slide_mpp
    polys = trace_masked(
        masked,
        threshold_level(threshold),
        s,
        offset,
        simplify=simplify_um * px_per_um,
        min_area=min_area_um2 * px_per_um**2,
        min_hole=min_hole_um2 * px_per_um**2,
        rings=rings,
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
