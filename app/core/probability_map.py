"""A run's blended probability map, kept so the outline can be re-traced without the model.

A pathologist tunes the sensitivity (threshold) and the minimum area while looking at the
slide; tracing the stored map again takes tens of milliseconds where re-running the model takes
minutes. The map is uint8 (255 = 1.0): 4x smaller than float32, in steps of 1/255, and the run's
own outline is traced from the same uint8 map, so a re-trace at the run's settings gives the
run's polygons exactly. Saved beside the slide as a compressed TIFF whose ImageDescription holds
the run's metadata as JSON, so it survives a restart.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from app.core.annotations import Annotation, Provenance
from app.core.file_modes import make_ordinary
from app.core.tracing import coarse, corner_map, region_mask, trace_factor, vectorize
from app.errors import DelineoError

FORMAT = "delineo-probability-map"
FORMAT_VERSION = 1
TUMOUR = ("Tumor", (200, 0, 0))


class ProbabilityMapError(DelineoError):
    pass


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class ProbabilityMap:
    run_id: str
    prob: np.ndarray  # uint8 0-255, model pixels
    level0_per_model: float
    offset: tuple[float, float]  # level-0 position of model pixel (0, 0)
    region: BaseGeometry  # the painted region the run covered (level-0 px)
    slide_mpp: float
    model: str
    version: str
    engine: str
    default_threshold: float
    cls: str = TUMOUR[0]
    color: tuple[int, int, int] = TUMOUR[1]
    simplify_um: float = 1.0  # the run's tracing settings: a re-trace uses them unless told
    min_hole_um2: float = 1000.0
    _grids: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_blender(
        map_type, blender, plan, region: BaseGeometry, slide_mpp: float, **meta
    ) -> ProbabilityMap:
        """The map of a run (its Blender and TilePlan); `meta`: model, version, engine,
        default_threshold and optionally run_id, cls, color."""
        meta.setdefault("run_id", new_run_id())
        return map_type(
            prob=blender.probability_u8(),
            level0_per_model=float(plan.level0_per_model),
            offset=tuple(float(v) for v in plan.model_to_level0(0, 0)),
            region=region,
            slide_mpp=float(slide_mpp),
            **meta,
        )

    def grid(self, factor: int) -> tuple[np.ndarray, np.ndarray]:
        """The map on the tracing grid of `factor` and its `corner_map` inside the region, made
        once: every re-trace at that grid only thresholds them."""
        if factor not in self._grids:
            prob = coarse(self.prob, factor)
            inside = region_mask(self.region, prob.shape, self.level0_per_model * factor, self.offset)
            self._grids[factor] = (prob, corner_map(prob, inside))
        return self._grids[factor]

    def trace(
        self,
        threshold: float,
        min_area_um2: float,
        simplify_um: float | None = None,
        min_hole_um2: float | None = None,
    ) -> list:
        """The run's outline at another sensitivity and minimum area; the model is not called.
        Simplification and hole filling default to the run's own."""
        simplify_um = self.simplify_um if simplify_um is None else simplify_um
        min_hole_um2 = self.min_hole_um2 if min_hole_um2 is None else min_hole_um2
        factor = trace_factor(simplify_um, self.level0_per_model * self.slide_mpp)
        prob, corners = self.grid(factor)
        return vectorize(
            prob,
            threshold,
            self.level0_per_model,
            self.offset,
            self.region,
            self.slide_mpp,
            simplify_um,
            min_area_um2,
            min_hole_um2,
            corners=corners,
            factor=factor,
        )

    def provenance(self, threshold: float, min_area_um2: float) -> Provenance:
        return Provenance(
            "model",
            model=self.model,
            version=self.version,
            engine=self.engine,
            threshold=float(threshold),
            min_area_um2=float(min_area_um2),
            run_id=self.run_id,
        )

    def annotations(self, threshold: float, min_area_um2: float, **trace_kw) -> list[Annotation]:
        """The traced outline as proposals, each recording the run and the settings used."""
        prov = self.provenance(threshold, min_area_um2)
        return [
            Annotation(p, self.cls, self.color, provenance=prov, review="proposed")
            for p in self.trace(threshold, min_area_um2, **trace_kw)
        ]

    # ------------------------------------------------------------------ on disk

    def meta(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "run_id": self.run_id,
            "level0_per_model": self.level0_per_model,
            "offset": list(self.offset),
            "region": mapping(self.region),
            "slide_mpp": self.slide_mpp,
            "model": self.model,
            "version": self.version,
            "engine": self.engine,
            "default_threshold": self.default_threshold,
            "class": {"name": self.cls, "color": list(self.color)},
            "simplify_um": self.simplify_um,
            "min_hole_um2": self.min_hole_um2,
        }

    def save(self, path: str | Path) -> Path:
        """Compressed TIFF (deflate), written atomically: a crash leaves the old map or none."""
        import tifffile

        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            make_ordinary(tmp)
            tifffile.imwrite(
                tmp,
                self.prob,
                compression="zlib",
                compressionargs={"level": 1},  # maps are smooth: level 1 is within 10% of 9, 5x faster
                tile=(256, 256) if min(self.prob.shape) >= 256 else None,
                description=json.dumps(self.meta()),
                metadata=None,
            )
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(map_type, path: str | Path) -> ProbabilityMap:
        """A map saved by `save`; anything else is a ProbabilityMapError naming the file."""
        import tifffile

        path = Path(path)

        def bad(why: str) -> ProbabilityMapError:
            return ProbabilityMapError(
                f"{path}: {why}; it cannot be re-traced. Delete it and delineate the region again"
            )

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                description = page.description
                prob = page.asarray()
        except FileNotFoundError:
            raise ProbabilityMapError(f"{path}: no such file; delineate the region again") from None
        except Exception as e:  # noqa: BLE001 - tifffile raises many kinds on a damaged file
            raise bad(f"not a readable TIFF ({type(e).__name__}: {e})") from None
        try:
            meta = json.loads(description)
        except (json.JSONDecodeError, TypeError):
            raise bad("not a Delineo probability map (no run metadata)") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise bad("not a Delineo probability map")
        if meta.get("format_version") != FORMAT_VERSION:
            raise bad(f"written by another Delineo (format {meta.get('format_version')!r})")
        if prob.dtype != np.uint8 or prob.ndim != 2:
            raise bad(f"holds {prob.dtype} {prob.shape}, expected a 2-D uint8 map")

        def number(key: str, positive: bool = True) -> float:
            v = meta.get(key)
            if (
                not isinstance(v, int | float)
                or isinstance(v, bool)
                or not math.isfinite(v)
                or (positive and v <= 0)
            ):
                raise bad(f"'{key}' is {v!r}")
            return float(v)

        offset = meta.get("offset")
        if not (
            isinstance(offset, list) and len(offset) == 2 and all(isinstance(v, int | float) for v in offset)
        ):
            raise bad(f"'offset' is {offset!r}")
        try:
            region = shape(meta["region"])
        except (KeyError, ValueError, TypeError, AttributeError):
            raise bad("its region is missing or malformed") from None
        for key in ("run_id", "model", "version", "engine"):
            if not isinstance(meta.get(key), str):
                raise bad(f"'{key}' is missing")
        threshold = number("default_threshold")
        if threshold > 1:
            raise bad(f"'default_threshold' is {threshold}")
        klass = meta.get("class") or {}
        color = klass.get("color") if isinstance(klass, dict) else None
        ok_color = isinstance(color, list) and len(color) == 3 and all(isinstance(v, int) for v in color)
        return map_type(
            run_id=meta["run_id"],
            prob=prob,
            level0_per_model=number("level0_per_model"),
            offset=(float(offset[0]), float(offset[1])),
            region=region,
            slide_mpp=number("slide_mpp"),
            model=meta["model"],
            version=meta["version"],
            engine=meta["engine"],
            default_threshold=threshold,
            cls=klass.get("name")
            if isinstance(klass, dict) and isinstance(klass.get("name"), str)
            else TUMOUR[0],
            color=tuple(color) if ok_color else TUMOUR[1],
            simplify_um=number("simplify_um", positive=False),
            min_hole_um2=number("min_hole_um2", positive=False),
        )
