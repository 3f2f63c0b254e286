"""Where a slide's annotations live on disk, and how they are saved so nothing is lost.

`<slide file name>.annotations.geojson` beside the slide, a QuPath-compatible FeatureCollection
that any tool can read. When the slide's folder is not writable (a read-only share, a DVD) the
file goes to the per-user data directory instead, named after the slide's full path. Every save
is atomic (temporary file, fsync, rename): a crash leaves the previous complete file, never half
of a new one. The painted region is saved too, as a feature whose `delineo.role` is "region",
and a pixel size the user set for a slide that records none as the collection's `delineo.mpp`.

A DICOM series is one slide in many files: it is keyed on its folder, so whichever file was
opened, the same autosave is found. Each run's probability map is kept beside the annotations
(`<key>.run-<id>.likelihood.tif`) so a re-trace survives a restart; a map that no annotation
refers to any more is deleted when the store saves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from app.core.annotations import (
    REGION,
    REGION_ROLE,
    Annotation,
    feature_collection_text,
    json_text,
    read_document,
    write_text_atomic,
)
from app.core.file_locks import remove_if_stale

SUFFIX = ".annotations.geojson"
MAP_SUFFIX = ".likelihood.tif"
REGION_ID = "00000000-0000-4000-8000-000000000000"
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def slide_key(slide_path: Path) -> Path:
    """What the autosave is named after: the slide file, or for DICOM the series folder."""
    return slide_path.parent if slide_path.suffix.lower() == ".dcm" else slide_path


def beside_slide(slide_path: Path) -> Path:
    key = slide_key(slide_path)
    return key.with_name(key.name + SUFFIX)


def fallback_path(slide_path: Path, data_dir: Path) -> Path:
    key = slide_key(slide_path)
    digest = hashlib.sha1(str(key.resolve()).encode()).hexdigest()[:12]
    return data_dir / "annotations" / f"{key.name}.{digest}{SUFFIX}"


def folder_is_writable(folder: Path) -> bool:
    """Tried, not guessed: os.access is wrong on network shares and for root."""
    try:
        fd = os.open(folder / f".delineo-write-test-{os.getpid()}", os.O_CREAT | os.O_WRONLY | os.O_EXCL)
    except OSError:
        return False
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(folder / f".delineo-write-test-{os.getpid()}")
    return True


@dataclass(frozen=True)
class AutosaveDocument:
    """What the next save will write: a snapshot taken on the GUI thread in microseconds (the
    annotations' geometries are immutable and every edit makes new annotations), turned into
    JSON on the autosave thread by `AnnotationStore.write`."""

    annotations: tuple[Annotation, ...]
    region: BaseGeometry | None
    mpp: float | None  # the pixel size the user set, saved with the annotations
    measure_mpp: float | None  # the one measurements use: the slide's, else the user's
    offset: tuple[float, float]
    built: float  # time.time() when taken: pruning spares maps saved after it
    # Runs whose maps stay though no annotation refers to them now: the open slide's runs,
    # which an undo or redo can bring back (their maps are pruned once the slide is closed).
    keep_runs: frozenset[str] = frozenset()

    def items(self) -> tuple[list[Annotation], list[str | None]]:
        items, roles = list(self.annotations), [None] * len(self.annotations)
        if self.region is not None and not self.region.is_empty:
            items.append(Annotation(self.region, REGION[0], REGION[1], id=REGION_ID, name="Painted region"))
            roles.append(REGION_ROLE)
        return items, roles

    def to_text(self) -> str:
        items, roles = self.items()
        top = {"delineo": {"mpp": self.mpp} if self.mpp is not None else {}}
        return feature_collection_text(items, self.measure_mpp, self.offset, roles, top)

    def to_dict(self) -> dict:
        return json.loads(self.to_text())

    def run_ids(self) -> set[str]:
        """The runs whose maps the save keeps."""
        return {a.provenance.run_id for a in self.annotations if a.provenance.run_id} | self.keep_runs


@dataclass
class SavedState:
    annotations: list[Annotation]
    region: BaseGeometry
    notes: list[str]
    maps: dict[str, Path] = field(default_factory=dict)  # run id -> its probability map on disk
    mpp: float | None = None  # the pixel size the user set (Set pixel size…), if any


class AnnotationStore:
    def __init__(
        self,
        slide_path: str | Path,
        data_dir: Path,
        mpp: float | None = None,
        offset: tuple[float, float] = (0, 0),
    ):
        self.slide_path = Path(slide_path)
        self.mpp = mpp
        self.offset = offset
        beside = beside_slide(self.slide_path)
        self.fallback = fallback_path(self.slide_path, data_dir)
        if folder_is_writable(beside.parent):
            self.path = beside
            self.beside_slide = True
        else:
            self.path = self.fallback
            self.beside_slide = False

    def existing(self) -> Path | None:
        """The file to restore from: beside the slide first, else the per-user copy."""
        for p in (beside_slide(self.slide_path), self.fallback):
            if p.is_file():
                return p
        return None

    def load(self) -> SavedState:
        self.remove_stale_temporaries()
        src = self.existing()
        if src is None:
            return SavedState([], Polygon(), [], self._maps_beside(self.path))
        doc = read_document(src, self.offset)
        return SavedState(doc.annotations, doc.region, doc.notes, self._maps_beside(src), doc.mpp)

    def remove_stale_temporaries(self) -> list[Path]:
        """Temporary files of our own saves (`.<name>.*.tmp`) that a kill during a save left
        beside the slide or in the fallback folder; those a live save holds stay."""
        removed = []
        for target in (beside_slide(self.slide_path), self.fallback):
            with contextlib.suppress(OSError):
                for tmp in target.parent.glob(f".{glob_escape(target.name)}.*.tmp"):
                    if remove_if_stale(tmp):
                        removed.append(tmp)
        return removed

    def document(
        self,
        annotations: list[Annotation],
        region: BaseGeometry,
        mpp: float | None = None,
        keep_runs: frozenset[str] = frozenset(),
    ) -> AutosaveDocument:
        """What will be written, taken on the caller's thread (cheap), written on another.
        `mpp` is a pixel size the user set for a slide that records none: kept, and used to
        measure. `keep_runs`: runs whose maps stay whether or not an annotation refers to them."""
        return AutosaveDocument(
            tuple(annotations), region, mpp, self.mpp or mpp, self.offset, time.time(), frozenset(keep_runs)
        )

    def write(self, document: AutosaveDocument | dict) -> Path:
        """Save atomically, then delete the maps no saved annotation refers to. A document
        whose text is the file's already is not written again: opening a slide and closing it
        unedited leaves its file (and its modification time) as they were."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(document, AutosaveDocument):
            text, keep, built = document.to_text(), document.run_ids(), document.built
        else:  # a FeatureCollection dict (an import written as it is)
            text, keep, built = json_text(document), _run_ids_of(document), time.time()
        if not _holds(self.path, text):
            write_text_atomic(self.path, text)
        self._prune(keep, built)
        return self.path

    # ------------------------------------------------------------------ probability maps

    def map_path(self, run_id: str) -> Path:
        """Where the probability map of run `run_id` is kept: beside the annotations file."""
        if not _RUN_ID.match(run_id):
            raise ValueError(f"run id {run_id!r}: letters, digits, '-' and '_' only")
        return self.path.with_name(self._stem(self.path) + f".run-{run_id}{MAP_SUFFIX}")

    def prune_maps(self, annotations: list[Annotation]) -> list[Path]:
        """Delete the maps whose run no annotation refers to any more; returns what went."""
        return self._prune({a.provenance.run_id for a in annotations if a.provenance.run_id}, None)

    def _prune(self, keep: set[str], older_than: float | None) -> list[Path]:
        gone = []
        for run_id, p in self._maps_beside(self.path).items():
            if run_id in keep:
                continue
            try:
                if older_than is not None and p.stat().st_mtime >= older_than:
                    continue  # saved after the document was built: its annotations are coming
                p.unlink()
                gone.append(p)
            except OSError:
                continue
        return gone

    @staticmethod
    def _stem(annotations_path: Path) -> str:
        return annotations_path.name[: -len(SUFFIX)]

    def _maps_beside(self, annotations_path: Path) -> dict[str, Path]:
        """Run id -> map, oldest first (by when the map was written): the order the runs were
        made in, so the last is the one the review controls take up after a restart."""
        prefix = self._stem(annotations_path) + ".run-"
        found = []
        with contextlib.suppress(OSError):
            for p in annotations_path.parent.glob(glob_escape(prefix) + "*" + MAP_SUFFIX):
                run_id = p.name[len(prefix) : -len(MAP_SUFFIX)]
                if _RUN_ID.match(run_id):
                    with contextlib.suppress(OSError):
                        found.append((p.stat().st_mtime, run_id, p))
        return {run_id: p for _, run_id, p in sorted(found)}


def _holds(path: Path, text: str) -> bool:
    """Whether the file at `path` is `text` (UTF-8) already, byte for byte."""
    data = text.encode("utf-8")
    try:
        if path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except OSError:
        return False


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _run_ids_of(document: dict) -> set[str]:
    ids = set()
    for f in document.get("features", []):
        prov = ((f.get("properties") or {}).get("delineo") or {}).get("provenance") or {}
        if isinstance(prov.get("run_id"), str):
            ids.add(prov["run_id"])
    return ids
