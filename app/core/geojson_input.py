"""A GeoJSON document someone else wrote, parsed without trusting it.

Every limit is checked before the work it bounds: the file's size before reading, its nesting
depth and vertex count (on the raw bytes) before `json.loads` recurses or builds millions of
lists, each feature's structure and numbers before shapely builds anything, and the cost of a
validity check and of a repair before GEOS starts them (both grow with how often the edges
cross, and a scrambled polygon of a few hundred vertices can keep `make_valid` busy for
minutes). What comes out is plain: valid polygonal geometry, a properties dict whose fields
have the types QuPath gives them, and notes on what was skipped or repaired.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from app.core.geometry import MAX_COORDINATE, repair
from app.errors import DelineoError

MAX_GEOJSON_BYTES = 200 << 20
MAX_DEPTH = 64  # GeoJSON needs 6 (a MultiPolygon in a FeatureCollection); properties a few more
MAX_VERTICES = 5_000_000  # in the whole file: about 700 MB once parsed
MAX_FEATURE_VERTICES = 1_000_000
MAX_EDGE_PAIRS = 200_000_000  # edge pairs whose boxes overlap: what GEOS' validity check visits
MAX_REPAIR_VERTICES = 200_000
MAX_REPAIR_CROSSINGS = 500  # make_valid takes ~0.1 s at 500 crossings, ~2.5 s at 2 400
CHEAP_CHECK_VERTICES = 20_000  # below this a validity check is cheap whatever the shape

ANNOTATION_KINDS = ("annotation", "tma_core", "region")
_POLYGONAL = ("Polygon", "MultiPolygon", "GeometryCollection")
_NOT_POLYGONAL = ("Point", "MultiPoint", "LineString", "MultiLineString")
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_WHITESPACE = b" \t\r\n"
_NUMBER_ENDS = np.zeros(256, bool)
_NUMBER_ENDS[list(b"0123456789Ny")] = True  # a number, NaN or Infinity ends with one of these
_BRACKET_STEP = np.zeros(256, np.int8)
_BRACKET_STEP[list(b"[{")] = 1
_BRACKET_STEP[list(b"]}")] = -1


class AnnotationError(DelineoError):
    pass


@dataclass
class InputFeature:
    index: int  # position in the file, for notes
    geometry: BaseGeometry  # valid, polygonal, in the file's coordinates
    properties: dict  # with classification, colours, name and source of the types QuPath writes
    id: object


@dataclass
class InputCollection:
    features: list[InputFeature]
    notes: list[str]
    delineo: dict  # the collection's own `delineo` member (Delineo's autosave: the pixel size set)


def read_features(path: str | Path) -> tuple[list[InputFeature], list[str]]:
    """The annotation features of a GeoJSON file, and notes; AnnotationError naming the file
    and the limit for anything unusable."""
    collection = read_collection(path)
    return collection.features, collection.notes


def read_collection(path: str | Path) -> InputCollection:
    """`read_features`, with the collection's `delineo` member (an object, else empty)."""
    path = Path(path)
    raw = _read_bytes(path)
    _check_structure(raw, path)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise AnnotationError(f"{path}: not a text file; expected GeoJSON") from None
    except json.JSONDecodeError as e:
        raise AnnotationError(
            f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4300 digits
        raise AnnotationError(f"{path}: not usable JSON ({e})") from None
    del raw
    features, notes = _Reader(path).features(data)
    meta = data.get("delineo") if isinstance(data, dict) else None
    return InputCollection(features, notes, meta if isinstance(meta, dict) else {})


def _read_bytes(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_GEOJSON_BYTES:
            raise AnnotationError(
                f"{path}: {size / 1e6:.0f} MB is larger than the {MAX_GEOJSON_BYTES >> 20} MB "
                "Delineo imports; split the file or simplify its polygons"
            )
        with open(path, "rb") as f:
            return f.read(MAX_GEOJSON_BYTES + 1)
    except OSError as e:
        raise AnnotationError(f"{path}: cannot be read ({e.strerror or e})") from None


def _check_structure(raw: bytes, path: Path) -> None:
    """Nesting depth and vertex count from the bytes, without parsing: strings are blanked
    (their brackets are text), then brackets are counted in chunks."""
    structure = _STRING.sub(b'""', raw).translate(None, _WHITESPACE)
    arr = np.frombuffer(structure, np.uint8)
    depth = deepest = 0
    positions = 0
    chunk = 1 << 22
    for start in range(0, len(arr), chunk):
        part = arr[start : start + chunk]
        brackets = np.flatnonzero(_BRACKET_STEP[part])
        if not len(brackets):
            continue
        levels = np.cumsum(_BRACKET_STEP[part[brackets]], dtype=np.int64) + depth
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
        closes = brackets[part[brackets] == ord("]")] + start
        closes = closes[closes > 0]
        positions += int(np.count_nonzero(_NUMBER_ENDS[arr[closes - 1]]))
        if deepest > MAX_DEPTH:
            raise AnnotationError(
                f"{path}: nested more than {MAX_DEPTH} levels deep; GeoJSON needs fewer than 10. "
                "Not a GeoJSON file Delineo can import"
            )
        if positions > MAX_VERTICES:
            raise AnnotationError(
                f"{path}: more than {MAX_VERTICES:,} vertices, the most Delineo imports from one file; "
                "simplify the polygons or split the file"
            )


class _Reader:
    def __init__(self, path: Path):
        self.path = path
        self.notes: list[str] = []
        self.vertices = 0
        self.feature_vertices = 0

    def error(self, i: int, what: str) -> AnnotationError:
        return AnnotationError(f"{self.path}: feature {i} {what}")

    def features(self, data) -> tuple[list[InputFeature], list[str]]:
        if isinstance(data, dict) and data.get("type") == "FeatureCollection":
            features = data.get("features")
        elif isinstance(data, list):
            features = data
        elif isinstance(data, dict) and data.get("type") == "Feature":
            features = [data]
        else:
            raise AnnotationError(
                f"{self.path}: not GeoJSON (expected a FeatureCollection, a Feature or a list)"
            )
        if not isinstance(features, list):
            raise AnnotationError(f"{self.path}: 'features' is not a list")
        out = []
        for i, f in enumerate(features):
            feature = self.feature(i, f)
            if feature is not None:
                out.append(feature)
        return out, self.notes

    def feature(self, i: int, f) -> InputFeature | None:
        if not isinstance(f, dict) or not isinstance(f.get("geometry"), dict):
            self.notes.append(f"feature {i}: no geometry, skipped")
            return None
        props = self.properties(i, f.get("properties"))
        self.feature_vertices = 0
        kind = props.get("objectType") or props.get("object_type") or props.get("type") or "annotation"
        if str(kind).lower() not in ANNOTATION_KINDS:
            self.notes.append(f"feature {i}: a {str(kind)[:40]}, not an annotation; skipped")
            return None
        polygons = self.polygons(i, f["geometry"], depth=0)
        if not polygons:
            self.notes.append(f"feature {i}: not a polygon, skipped")
            return None
        n = sum(len(r) for rings in polygons for r in rings)
        geom = self.build(i, polygons)
        if geom.is_empty:
            self.notes.append(f"feature {i}: empty polygon, skipped")
            return None
        geom = self.validate(i, geom, polygons, n)
        if geom.is_empty:
            self.notes.append(f"feature {i}: empty after repair, skipped")
            return None
        return InputFeature(i, geom, props, f.get("id") if f.get("id") is not None else props.get("id"))

    # ------------------------------------------------------------------ properties

    def properties(self, i: int, props) -> dict:
        """A copy whose fields annotations read have QuPath's types; others are dropped with a note."""
        if props is None:
            return {}
        if not isinstance(props, dict):
            self.notes.append(f"feature {i}: 'properties' is not an object; ignored")
            return {}
        props = dict(props)
        cls = props.get("classification")
        if cls is not None and not isinstance(cls, dict | str):
            self.notes.append(f"feature {i}: 'classification' is neither an object nor a name; ignored")
            props.pop("classification")
        elif isinstance(cls, dict):
            cls = dict(cls)
            if "name" in cls and not isinstance(cls["name"], str | None):
                self.notes.append(f"feature {i}: the class name is not text; ignored")
                cls.pop("name")
            if "color" in cls:
                colour = _rgb(cls["color"])
                if colour is None:
                    self.notes.append(
                        f"feature {i}: colour {str(cls['color'])[:40]} is not [r, g, b]; default used"
                    )
                    cls.pop("color")
                else:
                    cls["color"] = list(colour)
            if "colorRGB" in cls and not _is_int(cls["colorRGB"]):
                cls.pop("colorRGB")
            props["classification"] = cls
        for key in ("colorRGB", "color"):
            if key in props and not _is_int(props[key]):
                props.pop(key)
        for key in ("name", "source"):
            if key in props and not isinstance(props[key], str | None):
                self.notes.append(f"feature {i}: '{key}' is not text; ignored")
                props.pop(key)
        return props

    # ------------------------------------------------------------------ geometry

    def polygons(self, i: int, geom: dict, depth: int) -> list[list[np.ndarray]]:
        """Each polygon as rings of (n, 2) float64 arrays, checked and counted before any
        array is made."""
        kind = geom.get("type")
        if kind == "Polygon":
            return [self.rings(i, geom.get("coordinates"))]
        if kind == "MultiPolygon":
            coords = geom.get("coordinates")
            if not isinstance(coords, list):
                raise self.error(i, "has a malformed geometry (MultiPolygon coordinates are not a list)")
            return [p for p in (self.rings(i, c) for c in coords) if p]
        if kind == "GeometryCollection":
            parts = geom.get("geometries")
            if not isinstance(parts, list):
                raise self.error(i, "has a malformed geometry (GeometryCollection without 'geometries')")
            out = []
            for g in parts:
                if isinstance(g, dict):
                    out.extend(self.polygons(i, g, depth + 1))
            return out
        if kind in _NOT_POLYGONAL:
            return []
        raise self.error(
            i,
            f"has a malformed geometry (type {str(kind)[:40]!r} is not a GeoJSON geometry; "
            "Delineo imports Polygon and MultiPolygon)",
        )

    def rings(self, i: int, coords) -> list[np.ndarray]:
        if not isinstance(coords, list) or not all(isinstance(r, list) for r in coords):
            raise self.error(i, "has a malformed geometry (Polygon coordinates must be a list of rings)")
        n = sum(len(r) for r in coords)
        self.vertices += n
        self.feature_vertices += n
        n = self.feature_vertices
        if n > MAX_FEATURE_VERTICES:
            raise self.error(
                i,
                f"has {n:,} vertices, more than the {MAX_FEATURE_VERTICES:,} Delineo imports in one "
                "polygon; simplify it first",
            )
        if self.vertices > MAX_VERTICES:
            raise AnnotationError(
                f"{self.path}: more than {MAX_VERTICES:,} vertices, the most Delineo imports from one file; "
                "simplify the polygons or split the file"
            )
        rings = []
        for ring in coords:
            if not ring:
                continue
            try:
                a = np.asarray(ring)
            except (ValueError, TypeError, OverflowError):
                a = None
            if a is None or a.ndim != 2 or a.shape[1] not in (2, 3) or a.dtype.kind not in "iuf":
                raise self.error(i, "has a malformed geometry (each position must be [x, y] in numbers)")
            a = a[:, :2].astype(np.float64)
            if not np.isfinite(a).all():
                raise self.error(i, "has coordinates that are not finite numbers (NaN or Infinity)")
            if np.abs(a).max() > MAX_COORDINATE:
                raise self.error(
                    i, f"has coordinates beyond +-{MAX_COORDINATE:.0e} pixels; no slide is that large"
                )
            if len(a) < 3:
                raise self.error(i, "has a malformed geometry (a ring needs at least 3 positions)")
            if not (a[0] == a[-1]).all():
                a = np.vstack([a, a[:1]])
            if len(a) < 4:
                raise self.error(i, "has a malformed geometry (a ring needs at least 3 distinct positions)")
            rings.append(a)
        return rings

    def build(self, i: int, polygons: list[list[np.ndarray]]) -> BaseGeometry:
        parts = [Polygon(rings[0], rings[1:]) for rings in polygons if rings]
        parts = [p for p in parts if not p.is_empty]
        if not parts:
            return Polygon()
        return parts[0] if len(parts) == 1 else MultiPolygon(parts)

    def validate(self, i: int, geom: BaseGeometry, polygons: list[list[np.ndarray]], n: int) -> BaseGeometry:
        """Valid geometry, repaired with a note, with both GEOS steps' costs bounded first."""
        starts, ends = _edges(polygons)
        if n > CHEAP_CHECK_VERTICES:
            pairs = _overlapping_pairs(starts, ends)
            if pairs > MAX_EDGE_PAIRS:
                raise self.error(
                    i,
                    f"is a polygon of {n:,} vertices whose edges cross each other everywhere (about "
                    f"{pairs:,.0f} overlapping edge pairs; Delineo checks at most {MAX_EDGE_PAIRS:,}); "
                    "it is not an outline",
                )
        if geom.is_valid:
            return geom
        if n > MAX_REPAIR_VERTICES:
            raise self.error(
                i,
                f"is a self-intersecting polygon of {n:,} vertices; Delineo repairs polygons of at most "
                f"{MAX_REPAIR_VERTICES:,}. Fix or simplify it in the program that drew it",
            )
        crossings = _crossings(starts, ends)
        if crossings > MAX_REPAIR_CROSSINGS:
            raise self.error(
                i,
                f"crosses itself about {crossings:,.0f} times; Delineo repairs polygons with at most "
                f"{MAX_REPAIR_CROSSINGS} self-intersections. Fix it in the program that drew it",
            )
        geom, _ = repair(geom)
        self.notes.append(f"feature {i}: self-intersecting polygon repaired")
        return geom


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _rgb(c) -> tuple[int, int, int] | None:
    """[r, g, b] (or [r, g, b, a]) of numbers 0-255, or '#rrggbb'; None for anything else."""
    if isinstance(c, str):
        m = re.fullmatch(r"#?([0-9a-fA-F]{6})", c.strip())
        return tuple(bytes.fromhex(m.group(1))) if m else None
    if not isinstance(c, list) or len(c) not in (3, 4):
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in c):
        return None
    if not all(0 <= v <= 255 for v in c):  # False for NaN as well
        return None
    return int(c[0]), int(c[1]), int(c[2])


def _edges(polygons: list[list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    rings = [r for rings in polygons for r in rings]
    return np.concatenate([r[:-1] for r in rings]), np.concatenate([r[1:] for r in rings])


def _sample(n: int, m: int) -> np.ndarray:
    return np.arange(n) if n <= m else np.random.default_rng(n).choice(n, m, replace=False)


def _overlapping_pairs(starts: np.ndarray, ends: np.ndarray, m: int = 64) -> float:
    """Edge pairs whose bounding boxes overlap, estimated from a sample of edges (64 x n work)."""
    lo, hi = np.minimum(starts, ends), np.maximum(starts, ends)
    n = len(starts)
    idx = _sample(n, m)
    hits = 0
    for k in idx:
        hits += int(np.count_nonzero(((lo <= hi[k]) & (hi >= lo[k])).all(axis=1)))
    return hits / len(idx) * n / 2


def _crossings(starts: np.ndarray, ends: np.ndarray, m: int = 256) -> float:
    """Proper crossings between edges (shared end points do not count): exact for up to m
    edges, else estimated from m sampled edges against all."""
    n = len(starts)
    idx = _sample(n, m)
    a1, a2 = starts[idx][:, None], ends[idx][:, None]
    total = 0
    chunk = max(1, (1 << 20) // len(idx))
    for s in range(0, n, chunk):
        b1, b2 = starts[None, s : s + chunk], ends[None, s : s + chunk]
        d1 = _orient(a1, a2, b1) * _orient(a1, a2, b2)
        d2 = _orient(b1, b2, a1) * _orient(b1, b2, a2)
        total += int(np.count_nonzero((d1 < 0) & (d2 < 0)))
    return total / len(idx) * n / 2


def _orient(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> np.ndarray:
    px, py = p[..., 0], p[..., 1]
    return (q[..., 0] - px) * (r[..., 1] - py) - (q[..., 1] - py) * (r[..., 0] - px)
