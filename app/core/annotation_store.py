"""Where a slide's annotations live on disk, and how they are saved so nothing is lost.

`<slide file name>.annotations.geojson` beside the slide, a QuPath-compatible FeatureCollection
that any tool can read. When the slide's folder is not writable (a read-only share, a DVD) the
file goes to the per-user data directory instead, named after the slide's full path. Every save
is atomic (temporary file, fsync, rename): a crash leaves the previous complete file, never half
of a new one. The painted region is saved too, as a feature whose `delineo_role` is "region".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import shapely
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from app.core.annotations import REGION, Annotation, read_geojson, to_feature_collection, write_json_atomic
from app.core.file_locks import remove_if_stale

SUFFIX = ".annotations.geojson"
REGION_ROLE = "region"


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def beside_slide(slide_path: Path) -> Path:
    return slide_path.with_name(slide_path.name + SUFFIX)


def fallback_path(slide_path: Path, data_dir: Path) -> Path:
    digest = hashlib.sha1(str(slide_path.resolve()).encode()).hexdigest()[:12]
    return data_dir / "annotations" / f"{slide_path.name}.{digest}{SUFFIX}"


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


@dataclass
class SavedState:
    annotations: list[Annotation]
    region: BaseGeometry
    notes: list[str]


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
            return SavedState([], Polygon(), [])
        anns, notes = read_geojson(src, self.offset)
        regions = [a for a in anns if a.source == f"delineo:{REGION_ROLE}"]
        others = [a for a in anns if a.source != f"delineo:{REGION_ROLE}"]
        region = shapely.union_all([a.geometry for a in regions]) if regions else Polygon()
        return SavedState(others, region, notes)

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

    def document(self, annotations: list[Annotation], region: BaseGeometry) -> dict:
        """What will be written; built on the caller's thread, written on another."""
        items = list(annotations)
        if region is not None and not region.is_empty:
            items.append(
                Annotation(
                    region,
                    cls=REGION[0],
                    color=REGION[1],
                    source=f"delineo:{REGION_ROLE}",
                    id="00000000-0000-4000-8000-000000000000",
                    name="Painted region",
                )
            )
        return to_feature_collection(items, self.mpp, self.offset)

    def write(self, document: dict) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return write_json_atomic(self.path, document)
