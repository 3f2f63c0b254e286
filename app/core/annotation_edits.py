"""Editing operations on annotations: what a re-run, the brush, the vertex editor, merge,
split, class and lock do, as plain functions over shapely.

Every function returns new objects and never mutates its inputs, so the GUI's undo stack can
keep the old ones as they were. A locked annotation is never changed by any of them. Geometry is
in level-0 pixels; results are valid polygons (repaired, or the edit is refused).
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass

import numpy as np
import shapely
import shapely.ops
import shapely.prepared
from shapely.geometry import LineString, MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from app.core.annotation_classes import AnnotationClass
from app.core.annotations import Annotation
from app.core.geometry import polygonal
from app.errors import DelineoError


class EditError(DelineoError):
    pass


def _parts(geom: BaseGeometry) -> list[Polygon]:
    return [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon) and not g.is_empty]


def _valid(geom: BaseGeometry) -> BaseGeometry:
    """The polygonal part of an overlay's result (GEOS overlays give valid geometry; checking
    a 5,000-vertex outline again would cost a fifth of a brush move)."""
    return polygonal(geom)


# ----------------------------------------------------------------------------- re-runs


def protected_overlapping(existing: list[Annotation], region: BaseGeometry) -> list[Annotation]:
    """Annotations a run over `region` would overlap that are not the model's to replace:
    painted, imported, edited or locked. The GUI asks before replacing them."""
    prepared = shapely.prepared.prep(region)
    return [a for a in existing if not a.is_proposal and prepared.intersects(a.geometry)]


def replace_in_region(
    existing: list[Annotation],
    new: list[Annotation],
    region: BaseGeometry,
    *,
    replace_protected: bool = False,
    min_area: float = 0.0,
) -> list[Annotation]:
    """The annotations after a run over `region` drew `new`: the model's proposals inside the
    region go (one crossing its border keeps its outside part and its id), `new` is added.
    With `replace_protected` painted, imported and edited ones are clipped too; locked ones
    never change. Nothing outside the region changes.

    What clipping leaves outside the region obeys the run's minimum area (`min_area`, level-0
    px²): a piece smaller than that is dropped, not kept as a sliver the run would never have
    drawn; so is a proposal's piece thinner than a pixel. Parts of an outline the region does
    not overlap stay as they were; an outline with nothing left goes, as one inside the region
    does."""
    prepared = shapely.prepared.prep(region)
    out = []
    for a in existing:
        replaceable = not a.locked and (a.is_proposal or replace_protected)
        if not replaceable or not prepared.intersects(a.geometry):
            out.append(a)
            continue
        if prepared.contains(a.geometry):
            continue
        rest = _outside(a, region, prepared, min_area)
        if rest is None:
            out.append(a)
        elif not rest.is_empty:
            out.append(dataclasses.replace(a, geometry=rest))
    return out + list(new)


def _outside(a: Annotation, region: BaseGeometry, prepared, min_area: float) -> BaseGeometry | None:
    """`a` less `region`, without the slivers the clipping made (see `replace_in_region`);
    None when the region only touches it."""
    kept: list[Polygon] = []
    clipped = False
    for part in _parts(a.geometry):
        if not prepared.intersects(part):
            kept.append(part)
            continue
        rest = _valid(part.difference(region))
        if rest.area >= part.area * (1 - 1e-9):  # touched, not cut (an earlier run's border)
            kept.append(part)
            continue
        clipped = True
        for piece in _parts(rest):
            if piece.area < min_area or (a.is_proposal and _thinner_than_a_pixel(piece)):
                continue
            kept.append(piece)
    if not clipped:
        return None
    if not kept:
        return Polygon()
    return kept[0] if len(kept) == 1 else MultiPolygon(kept)


def _thinner_than_a_pixel(piece: Polygon) -> bool:
    """Mean width (twice the area over the perimeter, a strip's width) under one level-0 px:
    a seam along the region's border, not tissue."""
    return 2 * piece.area < piece.length


def accept_in_region(anns: list[Annotation], region: BaseGeometry) -> list[Annotation]:
    """Proposals touching `region` marked reviewed ("accepted"); the rest as they were."""
    prepared = shapely.prepared.prep(region)
    return [
        dataclasses.replace(a, review="accepted")
        if a.review == "proposed" and prepared.intersects(a.geometry)
        else a
        for a in anns
    ]


# ----------------------------------------------------------------------------- brush


def add_to(a: Annotation, geom: BaseGeometry) -> Annotation:
    """`a` grown by `geom` (a brush stroke segment). Only the parts of `a` the stroke touches
    take part in the union, so a move over a large outline costs what the stroke costs."""
    if a.locked or geom.is_empty:
        return a
    return a.edited(_valid(_union_local(a.geometry, geom)))


def subtract_from(a: Annotation, geom: BaseGeometry) -> Annotation | None:
    """`a` less `geom`; None when nothing is left (the GUI deletes it)."""
    if a.locked or geom.is_empty or not a.geometry.intersects(geom):
        return a
    rest = _valid(a.geometry.difference(geom))
    return None if rest.is_empty else a.edited(rest)


def _union_local(base: BaseGeometry, stroke: BaseGeometry) -> BaseGeometry:
    parts = _parts(base)
    touched = [p for p in parts if p.intersects(stroke)]
    if not touched:
        return MultiPolygon([*parts, *_parts(stroke)]) if parts else stroke
    merged = shapely.union_all([*touched, stroke])
    rest = [p for p in parts if not any(p is t for t in touched)]
    return shapely.union_all([merged, *rest]) if rest else merged


# ----------------------------------------------------------------------------- merge and split


def merge(anns: list[Annotation]) -> Annotation:
    """One annotation covering all of `anns`, with the class and id of the largest. Refused
    (EditError) when one is locked, so nothing locked disappears into another."""
    if not anns:
        raise EditError("merge: select two or more annotations first")
    if any(a.locked for a in anns):
        raise EditError("merge: a selected annotation is locked; unlock it first")
    largest = max(anns, key=lambda a: a.geometry.area)
    if len(anns) == 1:
        return largest
    return largest.edited(_valid(shapely.union_all([a.geometry for a in anns])))


def _pieces(a: Annotation, pieces: list[Polygon]) -> list[Annotation]:
    """Annotations for the pieces of `a`, largest first, keeping `a`'s id."""
    if len(pieces) <= 1:
        return [a]
    pieces = sorted(pieces, key=lambda p: -p.area)
    first = a.edited(pieces[0])
    rest = [dataclasses.replace(a.edited(p), id=str(uuid.uuid4()), name=None) for p in pieces[1:]]
    return [first, *rest]


def split_parts(a: Annotation) -> list[Annotation]:
    """Each connected part its own annotation (the largest keeps the id)."""
    if a.locked:
        return [a]
    return _pieces(a, _parts(a.geometry))


def split_along(a: Annotation, line: LineString) -> list[Annotation]:
    """`a` cut along a drawn line; a line that crosses no part leaves it whole."""
    if a.locked or not a.geometry.intersects(line):
        return [a]
    pieces: list[Polygon] = []
    for part in _parts(a.geometry):
        if part.intersects(line):
            pieces += _parts(shapely.ops.split(part, line))
        else:
            pieces.append(part)
    return _pieces(a, pieces)


# ----------------------------------------------------------------------------- vertices


@dataclass(frozen=True)
class VertexRef:
    part: int  # polygon of a multipolygon (0 for a polygon)
    ring: int  # 0 the exterior, 1.. the holes
    index: int  # vertex in the ring (the closing repeat is not counted)
    x: float = 0.0
    y: float = 0.0


def _rings(a: Annotation) -> list[tuple[int, int, np.ndarray]]:
    out = []
    for p, poly in enumerate(_parts(a.geometry)):
        for r, ring in enumerate([poly.exterior, *poly.interiors]):
            out.append((p, r, np.asarray(ring.coords)[:-1, :2]))
    return out


def vertex_at(a: Annotation, x: float, y: float, tolerance: float) -> VertexRef | None:
    """The vertex nearest (x, y) within `tolerance` (level-0 px), or None."""
    best = None
    for p, r, pts in _rings(a):
        d = np.hypot(pts[:, 0] - x, pts[:, 1] - y)
        i = int(np.argmin(d))
        if d[i] <= tolerance and (best is None or d[i] < best[0]):
            best = (d[i], VertexRef(p, r, i, float(pts[i, 0]), float(pts[i, 1])))
    return best[1] if best else None


def edge_at(a: Annotation, x: float, y: float, tolerance: float) -> tuple[VertexRef, float, float] | None:
    """The edge nearest (x, y) within `tolerance`: the vertex it starts at and the point on it
    where a new vertex goes (insert after that vertex)."""
    best = None
    for p, r, pts in _rings(a):
        start, end = pts, np.roll(pts, -1, axis=0)
        seg = end - start
        length2 = np.maximum((seg**2).sum(axis=1), 1e-12)
        t = np.clip(((x - start[:, 0]) * seg[:, 0] + (y - start[:, 1]) * seg[:, 1]) / length2, 0, 1)
        proj = start + seg * t[:, None]
        d = np.hypot(proj[:, 0] - x, proj[:, 1] - y)
        i = int(np.argmin(d))
        if d[i] <= tolerance and (best is None or d[i] < best[0]):
            ref = VertexRef(p, r, i, float(pts[i, 0]), float(pts[i, 1]))
            best = (d[i], ref, float(proj[i, 0]), float(proj[i, 1]))
    return best[1:] if best else None


def _with_ring(a: Annotation, ref: VertexRef, pts: np.ndarray) -> Annotation | None:
    """`a` with one ring replaced; a result that is not a valid polygon of the same shape
    (one that crosses itself, say) refuses the edit: `a` comes back unchanged."""
    parts = _parts(a.geometry)
    poly = parts[ref.part]
    rings = [
        np.asarray(poly.exterior.coords)[:-1, :2],
        *[np.asarray(h.coords)[:-1, :2] for h in poly.interiors],
    ]
    rings[ref.ring] = pts
    new_poly = Polygon(rings[0], rings[1:])
    if not new_poly.is_valid:
        return a
    if new_poly.area <= 0:
        return None if len(parts) == 1 else a
    parts[ref.part] = new_poly
    geom = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    return a.edited(geom) if geom.is_valid else a


def _ring_of(a: Annotation, ref: VertexRef) -> np.ndarray | None:
    parts = _parts(a.geometry)
    if ref.part >= len(parts):
        return None
    poly = parts[ref.part]
    rings = [poly.exterior, *poly.interiors]
    if ref.ring >= len(rings):
        return None
    pts = np.asarray(rings[ref.ring].coords)[:-1, :2].copy()
    return pts if ref.index < len(pts) else None


def move_vertex(a: Annotation, ref: VertexRef, x: float, y: float) -> Annotation:
    if a.locked or (pts := _ring_of(a, ref)) is None:
        return a
    pts[ref.index] = (x, y)
    return _with_ring(a, ref, pts) or a


def insert_vertex(a: Annotation, ref: VertexRef, x: float, y: float) -> Annotation:
    """A new vertex at (x, y) after `ref` (as `edge_at` gives them)."""
    if a.locked or (pts := _ring_of(a, ref)) is None:
        return a
    return _with_ring(a, ref, np.insert(pts, ref.index + 1, (x, y), axis=0)) or a


def delete_vertex(a: Annotation, ref: VertexRef) -> Annotation | None:
    """`a` without the vertex; a ring never goes below 3 vertices (the edit is refused). None
    when what is left has no area (the GUI deletes the annotation)."""
    if a.locked or (pts := _ring_of(a, ref)) is None or len(pts) <= 3:
        return a
    return _with_ring(a, ref, np.delete(pts, ref.index, axis=0))


# ----------------------------------------------------------------------------- class and lock


def set_class(anns: list[Annotation], cls: AnnotationClass) -> list[Annotation]:
    """Class and colour set (locked ones unchanged). A model outline given another class by
    hand counts as edited, so a re-run does not silently replace the pathologist's call."""
    out = []
    for a in anns:
        if a.locked or (a.cls, tuple(a.color)) == (cls.name, tuple(cls.color)):
            out.append(a)
            continue
        prov = a.provenance
        if a.cls != cls.name and prov.origin == "model":
            prov = dataclasses.replace(prov, edited=True)
        out.append(dataclasses.replace(a, cls=cls.name, color=tuple(cls.color), provenance=prov))
    return out


def set_locked(anns: list[Annotation], locked: bool) -> list[Annotation]:
    return [a if a.locked == locked else dataclasses.replace(a, locked=locked) for a in anns]


# ----------------------------------------------------------------------------- totals


@dataclass(frozen=True)
class ClassTotal:
    cls: str
    color: tuple[int, int, int]
    count: int
    area_um2: float | None
    area_px: float  # level-0 px²


def union_area(geoms: list[BaseGeometry]) -> float:
    """The area of the union, uniting only the outlines that overlap another: most outlines of
    a run touch nothing, and GEOS unions of thousands of them take seconds (1,000: 1.3 s)."""
    if not geoms:
        return 0.0
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    touching = left != right
    if not touching.any():
        return float(shapely.area(geoms).sum())
    overlapping = np.zeros(len(geoms), bool)
    overlapping[left[touching]] = True
    alone = float(shapely.area([g for g, o in zip(geoms, overlapping, strict=True) if not o]).sum())
    return alone + float(shapely.union_all([g for g, o in zip(geoms, overlapping, strict=True) if o]).area)


def class_totals(anns: list[Annotation], mpp: float | None) -> list[ClassTotal]:
    """Count and area per class, Tumor first then by name. The area is that of the union:
    overlapping annotations are not counted twice."""
    groups: dict[str, list[Annotation]] = {}
    for a in anns:
        groups.setdefault(a.cls, []).append(a)
    out = []
    for cls in sorted(groups, key=lambda c: (c != "Tumor", c)):
        members = groups[cls]
        area = union_area([a.geometry for a in members])
        out.append(
            ClassTotal(
                cls,
                tuple(members[0].color),
                len(members),
                area * mpp * mpp if mpp else None,
                area,
            )
        )
    return out
