"""Annotations and their QuPath-compatible GeoJSON.

An annotation is a polygon (with holes) or multipolygon in level-0 pixels of the slide, with a
class, a colour, where it came from (`Provenance`: painted, imported, or the model, run and
settings that drew it, and whether a hand edited it since), a review state and a lock. GeoJSON is
the storage format as well as the QuPath exchange format, so any tool can read what Delineo
saves: QuPath's own `classification` and `isLocked`, everything else in a `delineo` property
object that other tools ignore and Delineo restores.

QuPath measures from the top-left of its image, which for formats with a bounds offset (MRXS)
starts at OpenSlide's bounds-x/y; `offset` shifts coordinates on the way out and back in.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import Polygon, mapping
from shapely.geometry.base import BaseGeometry

from app.core.file_locks import hold_while_writing
from app.core.file_modes import make_ordinary
from app.core.geojson_input import MAX_GEOJSON_BYTES, MAX_VERTICES, AnnotationError, read_collection
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
GEOJSON_CHUNK = 32  # outlines converted per call when writing (see feature_collection_text)


ORIGINS = ("painted", "model", "imported")
REVIEW_STATES = ("proposed", "accepted")
REGION_ROLE = "region"  # the `delineo.role` of the painted region's feature
_OLD_REGION_SOURCE = "delineo:region"


@dataclass(frozen=True)
class Provenance:
    """Where an annotation came from: what a pathologist must know before signing it off."""

    origin: str = "painted"  # "painted" | "model" | "imported"
    model: str | None = None  # model card name
    version: str | None = None
    engine: str | None = None  # runtime and precision, e.g. "openvino-int8"
    threshold: float | None = None
    min_area_um2: float | None = None
    run_id: str | None = None  # the run (probability map) it was traced from
    edited: bool = False  # drawn by the model (or imported), then edited by hand

    def describe(self) -> str:
        """One line for a tooltip or a CSV cell, e.g. "model ebhi-tumour-resunet 1.0.0
        (openvino-int8), threshold 0.50, min area 1000 µm², edited"."""
        if self.origin != "model":
            return self.origin + (", edited" if self.edited and self.origin != "painted" else "")
        text = " ".join(v for v in ("model", self.model, self.version) if v)
        if self.engine:
            text += f" ({self.engine})"
        if self.threshold is not None:
            text += f", threshold {self.threshold:.2f}"
        if self.min_area_um2 is not None:
            text += f", min area {self.min_area_um2:g} µm²"
        return text + (", edited" if self.edited else "")

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: object) -> Provenance | None:
        """The provenance a file recorded, or None when it is not one (the caller notes it)."""
        if not isinstance(data, dict) or data.get("origin") not in ORIGINS:
            return None
        kw: dict = {"origin": data["origin"], "edited": data.get("edited") is True}
        for key in ("model", "version", "engine", "run_id"):
            if isinstance(data.get(key), str):
                kw[key] = data[key]
        for key in ("threshold", "min_area_um2"):
            v = data.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                kw[key] = float(v)
        return cls(**kw)

    @classmethod
    def from_source(cls, source: str | None) -> Provenance:
        """From the `source` string of Delineo's earlier files: "painted", or the model's
        "name version engine" (e.g. "ebhi-tumour-resunet 1.0.0 openvino-int8"); anything else
        came from another tool."""
        text = (source or "").strip()
        if text == "painted":
            return cls("painted")
        parts = text.split()
        if len(parts) == 3 and parts[1][:1].isdigit():
            return cls("model", model=parts[0], version=parts[1], engine=parts[2])
        return cls("imported")


@dataclass
class Annotation:
    geometry: BaseGeometry
    cls: str = TUMOUR[0]
    color: tuple[int, int, int] = TUMOUR[1]
    provenance: Provenance = Provenance()
    review: str = "accepted"  # "proposed" | "accepted"; the model's outlines start "proposed"
    locked: bool = False  # neither edited nor replaced by a run
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    name: str | None = None

    @property
    def source(self) -> str:
        return self.provenance.describe()

    @property
    def is_proposal(self) -> bool:
        """Only what the model drew and nobody touched, accepted or locked is the model's to
        replace: a re-run or a re-trace never takes back a pathologist's decision silently."""
        p = self.provenance
        return p.origin == "model" and not p.edited and not self.locked and self.review == "proposed"

    def edited(self, geometry: BaseGeometry) -> Annotation:
        """This annotation with a hand-edited geometry: same id (the undo stack and the panel
        follow it), provenance marked edited."""
        return dataclasses.replace(
            self, geometry=geometry, provenance=dataclasses.replace(self.provenance, edited=True)
        )

    def area_um2(self, mpp: float | None) -> float | None:
        return area_um2(self.geometry, mpp)

    def properties(self, measurements: dict, role: str | None = None) -> dict:
        """The feature's properties: QuPath's, and Delineo's own in a `delineo` object."""
        own = {"role": role} if role else {"provenance": self.provenance.to_json(), "review": self.review}
        props = {
            "objectType": "annotation",
            "classification": {"name": self.cls, "color": list(self.color)},
            "isLocked": self.locked,
            "measurements": measurements,
            "delineo": own,
        }
        if self.name:
            props["name"] = self.name
        return props

    def to_feature(
        self, mpp: float | None, offset: tuple[float, float] = (0, 0), role: str | None = None
    ) -> dict:
        geom = written_geometry(np.asarray([self.geometry], dtype=object), offset)[0]
        measurements = {}
        if mpp:
            measurements["Area µm^2"] = round(area_um2(geom, mpp), 2)
            measurements["Perimeter µm"] = round(perimeter_um(geom, mpp), 2)
        props = self.properties(measurements, role)
        return {"type": "Feature", "id": self.id, "geometry": mapping(geom), "properties": props}


def written_geometry(geoms: np.ndarray, offset: tuple[float, float] = (0, 0)) -> np.ndarray:
    """The geometries as a file holds them: shifted by `offset` and rounded to 1/100 px. The
    measurements are taken on these, so a file read back and saved again (with the rounded
    coordinates it holds) writes the same areas, byte for byte."""
    ox, oy = offset
    return shapely.transform(geoms, lambda c: np.round(c - (ox, oy), COORDINATE_DECIMALS))


COORDINATE_DECIMALS = 2


def to_feature_collection(
    annotations: list[Annotation], mpp: float | None, offset: tuple[float, float] = (0, 0)
) -> dict:
    return json.loads(feature_collection_text(annotations, mpp, offset))


def feature_collection_text(
    annotations: list[Annotation],
    mpp: float | None,
    offset: tuple[float, float] = (0, 0),
    roles: list[str | None] | None = None,
    top: dict | None = None,
) -> str:
    """The FeatureCollection as JSON text, as `to_feature` would give it feature by feature but
    with the geometry written by GEOS (vectorised, the GIL released): 1,000 outlines take a
    tenth of the time, which matters on the autosave thread while the GUI thread waits for
    the GIL. `roles` gives a feature's `delineo.role`; `top` adds top-level members."""
    geoms = np.empty(len(annotations), dtype=object)
    geoms[:] = [a.geometry for a in annotations]
    written = np.empty(len(annotations), dtype=object)
    geometry_json: list[str] = []
    for k in range(0, len(geoms), GEOJSON_CHUNK):  # short C calls: other threads get the GIL between
        written[k : k + GEOJSON_CHUNK] = written_geometry(geoms[k : k + GEOJSON_CHUNK], offset)
        geometry_json += shapely.to_geojson(written[k : k + GEOJSON_CHUNK]).tolist()
    if mpp:  # measured on the coordinates written, not the unrounded ones in memory
        areas = shapely.area(written) * mpp * mpp
        lengths = shapely.length(written) * mpp
    parts = []
    for i, a in enumerate(annotations):
        role = roles[i] if roles else None
        measurements = (
            {"Area µm^2": round(float(areas[i]), 2), "Perimeter µm": round(float(lengths[i]), 2)}
            if mpp
            else {}
        )
        props = a.properties(measurements, role)
        parts.append(
            '{"type":"Feature","id":' + json.dumps(a.id) + ',"geometry":' + geometry_json[i]
            + ',"properties":' + json.dumps(props, ensure_ascii=False, separators=(",", ":")) + "}"
        )  # fmt: skip
    head = {"type": "FeatureCollection", **(top or {})}
    return (
        json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1]
        + ',"features":['
        + ",".join(parts)
        + "]}"
    )


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write to a temporary file in the same folder, fsync, rename: a reader (or a crash) sees
    the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    hold_while_writing(fd)  # tells a cleaner on open that this one is live, not left by a kill
    try:
        make_ordinary(tmp)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
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


def json_text(data: dict | list) -> str:
    """`data` as the compact JSON text Delineo writes."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def write_json_atomic(path: str | Path, data: dict | list) -> Path:
    """`data` as JSON, written as `write_text_atomic` writes."""
    return write_text_atomic(path, json_text(data))


def write_geojson(
    path: str | Path, annotations: list[Annotation], mpp: float | None, offset: tuple[float, float] = (0, 0)
) -> Path:
    return write_text_atomic(path, feature_collection_text(annotations, mpp, offset))


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


@dataclass
class GeoJSONDocument:
    annotations: list[Annotation]
    region: BaseGeometry  # Delineo's painted region (features whose delineo role is "region")
    notes: list[str]
    mpp: float | None  # a pixel size the user set for the slide (top-level `delineo.mpp`)


def read_geojson(
    path: str | Path, offset: tuple[float, float] = (0, 0)
) -> tuple[list[Annotation], list[str]]:
    """Annotations from a QuPath (or Delineo) GeoJSON file, and notes on what was repaired.
    A Delineo painted region in the file is not an annotation and is left out."""
    doc = read_document(path, offset)
    return doc.annotations, doc.notes


def read_document(path: str | Path, offset: tuple[float, float] = (0, 0)) -> GeoJSONDocument:
    """Everything Delineo reads from a GeoJSON file: annotations, painted region, pixel size.

    Accepts a FeatureCollection, a list of features or one feature; `objectType`,
    `object_type` or `type` for the object type; colours as [r, g, b] or packed ints.
    Raises AnnotationError (naming the file) when the file is unusable.
    """
    collection = read_collection(path)
    notes = collection.notes
    out: list[Annotation] = []
    regions: list[BaseGeometry] = []
    for feature in collection.features:
        i, props, geom = feature.index, feature.properties, feature.geometry
        if offset != (0, 0):
            geom = shapely.affinity.translate(geom, offset[0], offset[1])
        cls = props.get("classification") or {}
        name = cls.get("name") if isinstance(cls, dict) else (cls if isinstance(cls, str) else None)
        own = props.get("delineo") if isinstance(props.get("delineo"), dict) else {}
        if own.get("role") == REGION_ROLE or props.get("source") == _OLD_REGION_SOURCE:
            regions.append(geom)
            continue
        fid = feature.id
        try:
            fid = str(uuid.UUID(str(fid)))
        except ValueError:
            fid = str(uuid.uuid4())
        provenance, review = _provenance_and_review(own, props, i, notes)
        out.append(
            Annotation(
                geometry=geom,
                cls=name or "Unclassified",
                color=_colour(props) or (TUMOUR[1] if name == TUMOUR[0] else (160, 160, 160)),
                provenance=provenance,
                review=review,
                locked=props.get("isLocked") is True,
                id=fid,
                name=props.get("name") if isinstance(props.get("name"), str) else None,
            )
        )
    mpp = collection.delineo.get("mpp")
    if mpp is not None and not (
        isinstance(mpp, int | float) and not isinstance(mpp, bool) and 0 < mpp < 1000
    ):
        notes.append(f"the pixel size {mpp!r} saved with the annotations is not usable; ignored")
        mpp = None
    # One region feature (what Delineo writes) is taken as it is: a union would re-node it and
    # the next save would write other coordinates for the same region.
    region = regions[0] if len(regions) == 1 else shapely.union_all(regions) if regions else Polygon()
    return GeoJSONDocument(out, region, notes, float(mpp) if mpp is not None else None)


def _provenance_and_review(own: dict, props: dict, i: int, notes: list[str]) -> tuple[Provenance, str]:
    """Delineo's own record when the file has one; else the earlier `source` string; else
    another tool drew it. Unreviewed model outlines of earlier files stay proposals."""
    if "provenance" in own:
        provenance = Provenance.from_json(own["provenance"])
        if provenance is None:
            notes.append(f"feature {i}: its provenance is not readable; taken as imported")
            provenance = Provenance("imported")
    elif "source" in props:
        provenance = Provenance.from_source(str(props.get("source")))
    else:
        provenance = Provenance("imported")
    review = own.get("review")
    if review not in REVIEW_STATES:
        review = "proposed" if provenance.origin == "model" and not provenance.edited else "accepted"
    return provenance, review
