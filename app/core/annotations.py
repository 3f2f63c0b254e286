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
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from app.core.file_locks import hold_while_writing
from app.core.geojson_input import MAX_GEOJSON_BYTES, MAX_VERTICES, AnnotationError, read_features
from app.core.geometry import area_um2, perimeter_um

# Re-exported: the limits and the error belong to the reader of raw GeoJSON.
__all__ = [
    "MAX_GEOJSON_BYTES",
    "MAX_VERTICES",
    "Annotation",
    "AnnotationError",
    "read_geojson",
    "write_geojson",
]

TUMOUR = ("Tumor", (200, 0, 0))
REGION = ("Region*", (0, 120, 255))  # QuPath's convention for an analysis region


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
    hold_while_writing(fd)  # tells a cleaner on open that this one is live, not left by a kill
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
    features, notes = read_features(path)
    out: list[Annotation] = []
    for feature in features:
        props, geom = feature.properties, feature.geometry
        if offset != (0, 0):
            geom = shapely.affinity.translate(geom, offset[0], offset[1])
        cls = props.get("classification") or {}
        name = cls.get("name") if isinstance(cls, dict) else (cls if isinstance(cls, str) else None)
        fid = feature.id
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
