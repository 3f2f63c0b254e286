"""Annotations and their QuPath-compatible GeoJSON.

An annotation is a polygon (with holes) or multipolygon in level-0 pixels of the slide, with a
class, a colour and where it came from ("painted", or the model that drew it). GeoJSON is the
storage format as well as the QuPath exchange format, so any tool can read what Delineo saves.

QuPath measures from the top-left of its image, which for formats with a bounds offset (MRXS)
starts at OpenSlide's bounds-x/y; `offset` shifts coordinates on the way out and back in.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import shapely
import shapely.affinity
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry

from app.core.geometry import area_um2, perimeter_um, polygonal, repair
from app.errors import DelineoError

TUMOUR = ("Tumor", (200, 0, 0))
REGION = ("Region*", (0, 120, 255))  # QuPath's convention for an analysis region
MAX_GEOJSON_BYTES = 200 << 20
MAX_VERTICES = 5_000_000


class AnnotationError(DelineoError):
    pass


@dataclass
class Annotation:
    geometry: BaseGeometry
    cls: str = TUMOUR[0]
    color: tuple[int, int, int] = TUMOUR[1]
    source: str = "painted"
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    name: str | None = None

    def area_um2(self, mpp: float | None) -> float | None:
        return area_um2(self.geometry, mpp)

    def to_feature(self, mpp: float | None, offset: tuple[float, float] = (0, 0)) -> dict:
        geom = self.geometry
        if offset != (0, 0):
            geom = shapely.affinity.translate(geom, -offset[0], -offset[1])
        measurements = {}
        if mpp:
            measurements["Area µm^2"] = round(area_um2(self.geometry, mpp), 2)
            measurements["Perimeter µm"] = round(perimeter_um(self.geometry, mpp), 2)
        props = {
            "objectType": "annotation",
            "classification": {"name": self.cls, "color": list(self.color)},
            "isLocked": False,
            "measurements": measurements,
            "source": self.source,
        }
        if self.name:
            props["name"] = self.name
        return {"type": "Feature", "id": self.id, "geometry": _rounded(mapping(geom)), "properties": props}


def _rounded(obj):
    if isinstance(obj, float):
        return round(obj, 2)
    if isinstance(obj, list | tuple):
        return [_rounded(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    return obj


def to_feature_collection(
    annotations: list[Annotation], mpp: float | None, offset: tuple[float, float] = (0, 0)
) -> dict:
    return {"type": "FeatureCollection", "features": [a.to_feature(mpp, offset) for a in annotations]}


def write_json_atomic(path: str | Path, data: dict | list) -> Path:
    """Write to a temporary file in the same folder, fsync, rename: a reader (or a crash) sees
    the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def write_geojson(
    path: str | Path, annotations: list[Annotation], mpp: float | None, offset: tuple[float, float] = (0, 0)
) -> Path:
    return write_json_atomic(path, to_feature_collection(annotations, mpp, offset))


def _colour(props: dict) -> tuple[int, int, int] | None:
    cls = props.get("classification") or {}
    c = cls.get("color") if isinstance(cls, dict) else None
    if isinstance(c, list | tuple) and len(c) >= 3:
        return tuple(int(v) & 255 for v in c[:3])
    packed = (
        (cls.get("colorRGB") if isinstance(cls, dict) else None)
        or props.get("colorRGB")
        or props.get("color")
    )
    if isinstance(packed, int):
        packed &= 0xFFFFFF
        return (packed >> 16) & 255, (packed >> 8) & 255, packed & 255
    return None


def read_geojson(
    path: str | Path, offset: tuple[float, float] = (0, 0)
) -> tuple[list[Annotation], list[str]]:
    """Annotations from a QuPath (or Delineo) GeoJSON file, and notes on what was repaired.

    Accepts a FeatureCollection, a list of features or one feature; `objectType`,
    `object_type` or `type` for the object type; colours as [r, g, b] or packed ints.
    Raises AnnotationError (naming the file) when the file is unusable.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise AnnotationError(f"{path}: cannot be read ({e.strerror or e})") from None
    if size > MAX_GEOJSON_BYTES:
        raise AnnotationError(
            f"{path}: {size / 1e6:.0f} MB is larger than the {MAX_GEOJSON_BYTES >> 20} MB "
            "Delineo imports; split the file or simplify its polygons"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise AnnotationError(f"{path}: not a text file; expected GeoJSON") from None
    except json.JSONDecodeError as e:
        raise AnnotationError(
            f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, list):
        features = data
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    else:
        raise AnnotationError(f"{path}: not GeoJSON (expected a FeatureCollection, a Feature or a list)")
    if not isinstance(features, list):
        raise AnnotationError(f"{path}: 'features' is not a list")
    out: list[Annotation] = []
    notes: list[str] = []
    vertices = 0
    for i, f in enumerate(features):
        if not isinstance(f, dict) or not isinstance(f.get("geometry"), dict):
            notes.append(f"feature {i}: no geometry, skipped")
            continue
        props = f.get("properties") or {}
        kind = props.get("objectType") or props.get("object_type") or props.get("type") or "annotation"
        if str(kind).lower() not in ("annotation", "tma_core", "region"):
            notes.append(f"feature {i}: a {kind}, not an annotation; skipped")
            continue
        try:
            geom = shape(f["geometry"])
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            raise AnnotationError(f"{path}: feature {i} has a malformed geometry ({e})") from None
        geom = polygonal(geom) if not isinstance(geom, Polygon | MultiPolygon) else geom
        if geom.is_empty:
            notes.append(f"feature {i}: not a polygon, skipped")
            continue
        vertices += shapely.get_num_coordinates(geom)
        if vertices > MAX_VERTICES:
            raise AnnotationError(f"{path}: more than {MAX_VERTICES:,} vertices; simplify it before import")
        geom, repaired = repair(geom)
        if repaired:
            notes.append(f"feature {i}: self-intersecting polygon repaired")
        if geom.is_empty:
            notes.append(f"feature {i}: empty after repair, skipped")
            continue
        if offset != (0, 0):
            geom = shapely.affinity.translate(geom, offset[0], offset[1])
        cls = props.get("classification") or {}
        name = cls.get("name") if isinstance(cls, dict) else (cls if isinstance(cls, str) else None)
        fid = f.get("id") or props.get("id")
        try:
            fid = str(uuid.UUID(str(fid)))
        except ValueError:
            fid = str(uuid.uuid4())
        out.append(
            Annotation(
                geometry=geom,
                cls=name or "Unclassified",
                color=_colour(props) or (TUMOUR[1] if name == TUMOUR[0] else (160, 160, 160)),
                source=str(props.get("source") or "imported"),
                id=fid,
                name=props.get("name"),
            )
        )
    return out, notes
