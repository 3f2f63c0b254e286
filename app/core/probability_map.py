"""A run's blended probability map, kept so the outline can be re-traced without the model.

A pathologist tunes the sensitivity (threshold) and the minimum area while looking at the
slide; tracing the stored map again takes tens of milliseconds where re-running the model takes
minutes. The map holds one uint8 channel per class of the model (255 = 1.0): 4x smaller than
float32, in steps of 1/255, and the run's own outline is traced from the same uint8 map, so a
re-trace at the run's settings gives the run's polygons exactly. The model's `ClassScheme`
decides which pixels are which class. Saved beside the slide as a compressed TIFF whose
ImageDescription holds the run's metadata as JSON, so it survives a restart.
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
from app.core.class_scores import SINGLE_TUMOUR, ClassScheme, OutputClass, threshold_level
from app.core.file_modes import make_ordinary
from app.core.tracing import coarse, masked_map, region_mask, rings_at, trace_factor, vectorize
from app.errors import DelineoError

FORMAT = "delineo-probability-map"
FORMAT_VERSION = 2  # 1: one 2-D channel and one "class"; still read


class ProbabilityMapError(DelineoError):
    pass


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class ProbabilityMap:
    run_id: str
    prob: np.ndarray  # (C, H, W) uint8 0-255, model pixels, one channel per class of `scheme`
    level0_per_model: float
    offset: tuple[float, float]  # level-0 position of model pixel (0, 0)
    region: BaseGeometry  # the painted region the run covered (level-0 px)
    slide_mpp: float
    model: str
    version: str
    engine: str
    default_threshold: float
    scheme: ClassScheme = SINGLE_TUMOUR
    simplify_um: float = 1.0  # the run's tracing settings: a re-trace uses them unless told
    min_hole_um2: float = 1000.0
    _grids: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    # Per layer, the rings of the last level traced: a new minimum area re-filters them.
    _rings: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_blender(
        map_type, blender, plan, region: BaseGeometry, slide_mpp: float, **meta
    ) -> ProbabilityMap:
        """The map of a run (its Blender and TilePlan); `meta`: model, version, engine,
        default_threshold, scheme and optionally run_id."""
        meta.setdefault("run_id", new_run_id())
        return map_type(
            prob=blender.probability_u8(),
            level0_per_model=float(plan.level0_per_model),
            offset=tuple(float(v) for v in plan.model_to_level0(0, 0)),
            region=region,
            slide_mpp=float(slide_mpp),
            **meta,
        )

    def _inside(self, factor: int, shape: tuple[int, int]) -> np.ndarray:
        key = ("inside", factor)
        if key not in self._grids:
            self._grids[key] = region_mask(self.region, shape, self.level0_per_model * factor, self.offset)
        return self._grids[key]

    def _layers(self, threshold: float | None) -> dict[str, tuple[np.ndarray, float]]:
        """The scheme's layers; exclusive ones (a decision over every channel) made once per
        sensitivity, those of other sensitivities dropped."""
        if not self.scheme.exclusive:
            return self.scheme.layers(self.prob, threshold)  # views of the channels: nothing to keep
        key = ("layers", threshold)
        if key not in self._grids:
            self._grids = {k: v for k, v in self._grids.items() if k[0] not in ("layers", "exclusive")}
            self._grids[key] = self.scheme.layers(self.prob, threshold)
        return self._grids[key]

    def _grid(self, factor: int, name: str, layer: np.ndarray, threshold: float | None) -> tuple:
        """A layer on the tracing grid of `factor` and its `masked_map` inside the region, made
        once: every re-trace at that grid only thresholds them (exclusive layers: once per
        sensitivity)."""
        key = ("exclusive", factor, name, threshold) if self.scheme.exclusive else ("channel", factor, name)
        if key not in self._grids:
            prob = coarse(layer, factor)
            self._grids[key] = (prob, masked_map(prob, self._inside(factor, prob.shape)))
        return self._grids[key]

    def trace(
        self,
        threshold: float | None,
        min_area_um2: float,
        simplify_um: float | None = None,
        min_hole_um2: float | None = None,
    ) -> dict[str, list]:
        """The run's outline per class at another sensitivity (None: each class's own threshold)
        and minimum area; the model is not called. Simplification and hole filling default to
        the run's own."""
        simplify_um = self.simplify_um if simplify_um is None else simplify_um
        min_hole_um2 = self.min_hole_um2 if min_hole_um2 is None else min_hole_um2
        factor = trace_factor(simplify_um, self.level0_per_model * self.slide_mpp)
        settings = (
            self.level0_per_model,
            self.offset,
            self.region,
            self.slide_mpp,
            simplify_um,
            min_area_um2,
        )
        out = {}
        for name, (layer, t) in self._layers(threshold).items():
            prob, masked = self._grid(factor, name, layer, threshold)
            rings = self._rings_of(factor, name, masked, threshold_level(t))
            out[name] = vectorize(prob, t, *settings, min_hole_um2, masked=masked, factor=factor, rings=rings)
        return out

    def _rings_of(self, factor: int, name: str, masked: np.ndarray, level: int):
        """The layer's rings at `level`, kept for the next re-trace (a new minimum area is
        then a filter, not a trace)."""
        kept = self._rings.get((factor, name))
        if kept is None or kept[0] is not masked or kept[1] != level:
            kept = self._rings[factor, name] = (masked, level, rings_at(masked, level))
        return kept[2]

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
        return self.proposals(self.trace(threshold, min_area_um2, **trace_kw), threshold, min_area_um2)

    def proposals(self, outlines: dict[str, list], threshold: float, min_area_um2: float) -> list[Annotation]:
        """Traced outlines (class name -> polygons) as the run's proposals, in class order."""
        return model_proposals(outlines, self.scheme, self.provenance(threshold, min_area_um2))

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
            "classes": [
                {"name": c.name, "color": list(c.color), "channel": c.channel, "threshold": c.threshold}
                for c in self.scheme.classes
            ],
            "exclusive": self.scheme.exclusive,
            "background": self.scheme.background,
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
            one = self.prob.shape[0] == 1  # a one-class map stays the plain 2-D TIFF it was
            tifffile.imwrite(
                tmp,
                self.prob[0] if one else self.prob,
                compression="zlib",
                compressionargs={"level": 1},  # maps are smooth: level 1 is within 10% of 9, 5x faster
                tile=(256, 256) if min(self.prob.shape[1:]) >= 256 else None,
                planarconfig=None if one else "separate",
                photometric="minisblack",
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
        if meta.get("format_version") not in (1, FORMAT_VERSION):
            raise bad(f"written by another Delineo (format {meta.get('format_version')!r})")
        if prob.ndim == 2:
            prob = prob[None]
        if prob.dtype != np.uint8 or prob.ndim != 3:
            raise bad(f"holds {prob.dtype} {prob.shape}, expected a uint8 map per class")
        scheme = _scheme_of(meta)
        if scheme is None or scheme.channels != prob.shape[0]:
            raise bad(f"its classes do not match its {prob.shape[0]} channel(s)")

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
            scheme=scheme,
            simplify_um=number("simplify_um", positive=False),
            min_hole_um2=number("min_hole_um2", positive=False),
        )


def model_proposals(
    outlines: dict[str, list], scheme: ClassScheme, provenance: Provenance
) -> list[Annotation]:
    """A run's outlines (class name -> polygons) as its proposals, in the classes' colours."""
    colours = {c.name: c.color for c in scheme.classes}
    return [
        Annotation(p, name, colours[name], provenance=provenance, review="proposed")
        for name, polygons in outlines.items()
        for p in polygons
    ]


def _scheme_of(meta: dict) -> ClassScheme | None:
    """The classes a saved map declares (format 1: one "class"), or None when malformed."""

    def one(c: object, channel: int) -> OutputClass | None:
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            return None
        color = c.get("color")
        if not (
            isinstance(color, list)
            and len(color) == 3
            and all(isinstance(v, int) and 0 <= v <= 255 for v in color)
        ):
            return None
        t = c.get("threshold", 0.5)
        if not isinstance(t, int | float) or not 0 <= t <= 1:
            return None
        ch = c.get("channel", channel)
        return OutputClass(c["name"], tuple(color), ch, float(t)) if isinstance(ch, int) else None

    if meta.get("format_version") == 1:
        klass = one(meta.get("class") or {"name": "Tumor", "color": [200, 0, 0]}, 0)
        return ClassScheme((klass,)) if klass else SINGLE_TUMOUR
    raw = meta.get("classes")
    if not isinstance(raw, list) or not 1 <= len(raw) <= 64:
        return None
    classes = [one(c, i) for i, c in enumerate(raw)]
    if any(c is None for c in classes) or sorted(c.channel for c in classes) != list(range(len(classes))):
        return None
    background = meta.get("background")
    if background is not None and background not in {c.name for c in classes}:
        return None
    return ClassScheme(
        tuple(sorted(classes, key=lambda c: c.channel)), bool(meta.get("exclusive")), background
    )
