"""`DelineationRun`: the one staged pipeline the GUI worker, the CLI and the benchmarks drive.

A run goes plan (the level to read, the tile grid over the region) -> select tiles (skip glass,
or take the tiles a failed run left) -> infer (tiles through the engine, each reported as a
`TileEvent` so an outline can grow on screen while you watch) -> finish (the blended class map
traced into outlines per class), and `execute` returns the `Delineation`. Slide reading runs on
a reader thread ahead of inference and the engine keeps several tiles in flight
(`predict_stream`; OpenSlide and the runtimes release the GIL), so the cores stay busy with the
model while tiles are read and blended; cancelling is checked between tiles and keeps what is
done. Classes, colours and the decision rule come from the engine's model card.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from app.core.annotations import Annotation, Provenance
from app.core.band_outline import BandOutliner
from app.core.geometry import region_within_slide
from app.core.probability_map import ProbabilityMap, model_proposals, new_run_id
from app.core.slide import Slide, SlideError
from app.core.tiling import BandBlender, Blender, Tile, TilePlan, plan_tiles
from app.core.tissue import TissueMask, tissue_mask
from app.core.tracing import trace_factor
from app.errors import DelineoError
from app.inference.engines import Engine, EngineError, predict_stream
from app.inference.refinement import COARSE_FACTOR, CoarseBlender, CoarseMap, RefineRule, answer_mismatch
from app.inference.tile_reader import Focus, TileReader

log = logging.getLogger(__name__)

BACKGROUND_TISSUE_FRACTION = 0.02  # tiles with less tissue than this are not sent to the model
STANDS_PER_TILE = 4  # into a kept map, coarse answers blended per fine tile (a few ms each)


class RunTooLarge(DelineoError):
    """A region whose map would not fit in memory; said before any tile runs."""


@dataclass
class TileEvent:
    tile: Tile
    done: int  # tiles finished so far, this one included (skipped ones count)
    total: int
    core_rect: tuple[float, float, float, float]  # level-0 (x, y, w, h) this tile is authoritative for
    prob: np.ndarray | None  # (C, tile, tile) float32 class probabilities; None when skipped
    skipped: bool = False
    error: str | None = None
    elapsed_s: float = 0.0
    coarse: bool = False  # an adaptive run's first pass: a coarse tile, over 16x the area


@dataclass
class Delineation:
    outlines: dict[str, list[Polygon]]  # class name -> polygons, in the card's class order
    plan: TilePlan
    blender: Blender = field(repr=False)  # the blended map (see `probability`); resumable
    tiles_done: int
    tiles_skipped: int
    tiles_failed: int
    seconds: float
    first_tile_s: float | None
    cancelled: bool
    source: str = ""  # which model drew it, e.g. "ebhi-tumour-resunet 1.0.0 openvino-int8"
    notes: list[str] = field(default_factory=list)
    engine_error: str | None = None  # the engine failed mid-run (a remote endpoint went away)
    pending: list[Tile] = field(default_factory=list)  # tiles not run (cancelled or failed engine)
    probability_map: ProbabilityMap | None = field(default=None, repr=False)  # re-trace without the model
    threshold: float = 0.5
    min_area_um2: float = 1000.0
    scheme: object = None  # the model's ClassScheme
    run_id: str = ""
    model: tuple[str, str, str] = ("", "", "")  # name, version, engine: the proposals' provenance
    coarse_tiles: int = 0  # an adaptive run: tiles of its coarse pass
    refine_skipped: int = 0  # tissue tiles the coarse pass ruled out (their share is not run)
    coarse_s: float = 0.0
    fine_s: float = 0.0

    @property
    def full_resolution_share(self) -> float:
        """Of the tissue tiles, the share run at full resolution (1.0 when not adaptive)."""
        tissue = self.tiles_done + self.tiles_failed + self.refine_skipped
        return (self.tiles_done + self.tiles_failed) / tissue if tissue else 1.0

    @property
    def polygons(self) -> list[Polygon]:
        """Every class's polygons (a one-class model's outline)."""
        return [p for polygons in self.outlines.values() for p in polygons]

    def annotations(self) -> list[Annotation]:
        """The outline as the model's proposals, each recording the run and its settings."""
        if self.probability_map is not None:
            return self.probability_map.proposals(self.outlines, self.threshold, self.min_area_um2)
        model, version, engine = self.model
        prov = Provenance(
            "model",
            model=model,
            version=version,
            engine=engine,
            threshold=self.threshold,
            min_area_um2=self.min_area_um2,
            run_id=self.run_id,
        )
        return model_proposals(self.outlines, self.scheme, prov)

    @cached_property
    def probability(self) -> np.ndarray:
        """The blended map (C, H, W) float16, model pixels (see plan), made when first asked
        for: the outline is traced from the uint8 map, and most runs never need it."""
        if not isinstance(self.blender, Blender):
            raise DelineoError("this run was finished band by band and kept no map; run it with keep_map")
        return self.blender.probability()

    @property
    def finished(self) -> bool:
        return not self.pending

    @property
    def tiles_total(self) -> int:
        return len(self.plan.tiles)

    @property
    def region_mpix(self) -> float:
        """Model-resolution megapixels of the tiles processed (inference work, overlap included)."""
        return self.tiles_done * self.plan.tile**2 / 1e6

    @property
    def mpix_per_s(self) -> float:
        return self.region_mpix / self.seconds if self.seconds > 0 else 0.0


def tile_core_rect(plan: TilePlan, t: Tile) -> tuple[float, float, float, float]:
    """Level-0 (x, y, w, h) of the tile minus half the overlap on each side: the part of the
    canvas this tile dominates, and the part the live overlay paints."""
    x, y, w, _ = t.level0_rect(plan)
    m = plan.overlap / 2 * plan.level0_per_model
    return x + m, y + m, w - 2 * m, w - 2 * m


def split_background(plan: TilePlan, tissue: TissueMask) -> tuple[list[Tile], list[Tile]]:
    """(tiles to run, tiles skipped as background) by the tissue in each tile's core."""
    run, skip = [], []
    for t in plan.tiles:
        (run if tissue.fraction(*tile_core_rect(plan, t)) >= BACKGROUND_TISSUE_FRACTION else skip).append(t)
    return run, skip


@dataclass(frozen=True)
class RunSettings:
    """What the caller chooses about a run; the model card says the rest."""

    threshold: float | None = None  # None: the card's
    simplify_um: float = 1.0
    min_area_um2: float = 1000.0
    min_hole_um2: float = 1000.0
    slide_mpp: float | None = None  # the slide's pixel size when it records none (or wrongly)
    readers: int = 1
    lookahead: int = 3
    # Keep the whole class map (to re-trace, resume, export likelihood); False finishes the
    # outline band by band, in memory that follows the region's width, not its area.
    keep_map: bool = True
    # Coarse to fine: the region first through the coarse model (or this one at COARSE_FACTOR x
    # its pixel size), then full resolution where the card's refine rule says; elsewhere the
    # coarse answer stands.
    adaptive: bool = False


class DelineationRun:
    """One delineation of `region` (level-0 pixels) in stages: `plan`, `select_tiles`,
    `infer`, `finish`; `execute` runs them all. `resume=` a result whose engine failed runs only
    its pending tiles, on this engine, into the same map (finish locally what a remote endpoint
    left). `map_sink(first_row, band)`: a run finished band by band also hands it each finished
    band of the class map (uint8 (C, rows, width), canvas rows), to stream the map to disk."""

    def __init__(
        self,
        slide: Slide,
        region: BaseGeometry,
        engine: Engine,
        settings: RunSettings | None = None,
        *,
        tissue: TissueMask | None = None,
        resume: Delineation | None = None,
        focus: Focus | None = None,
        coarse_engine: Engine | None = None,
        map_sink: Callable[[int, np.ndarray], None] | None = None,
    ):
        card = engine.card
        if map_sink is not None and (settings is None or settings.keep_map):
            raise ValueError("map_sink needs a run finished band by band (RunSettings(keep_map=False))")
        if resume is not None and (resume.engine_error is None or resume.plan.tile != card.tile):
            raise ValueError(
                "resume needs a Delineation whose engine failed, from a model of the same tile size"
            )
        if resume is not None and (
            not isinstance(resume.blender, Blender) or resume.blender.channels != card.channels
        ):
            raise ValueError("resume needs a run that kept its map, from a model with the same classes")
        self.slide, self.engine, self.card = slide, engine, card
        self.coarse_engine = coarse_engine  # an adaptive run's first pass (None: this model)
        self.map_sink = map_sink
        self.settings = settings or RunSettings()
        self.resume = resume
        self.tissue = tissue
        self.focus = focus
        self.t0 = time.perf_counter()
        # Validated and clipped here once, whoever calls: a region reaching past the slide would
        # otherwise be rasterized at its full size.
        self.region, clipped = region_within_slide(region, slide.dimensions)
        self.notes: list[str] = [clipped] if clipped else []
        self.threshold = self.settings.threshold  # None: each class's own
        self.tiles_plan: TilePlan | None = None
        self.blender: Blender | None = None
        self.to_run: list[Tile] = []
        self.skipped: list[Tile] = []
        self.done = self.failed = 0
        self.first_tile_s: float | None = None
        self.engine_error: str | None = None
        self.finished: set[Tile] = set()
        self.cancelled = False
        self.coarse_plan: TilePlan | None = None
        self.coarse_tiles = 0  # tiles the coarse pass ran
        self.coarse_counted = self.coarse_failed = 0  # its share of `done` and `failed`
        self.refine_skipped = 0  # tissue tiles the coarse pass ruled out
        self.coarse_map: CoarseMap | None = None
        self._standing: list[Tile] = []  # tiles whose coarse answer is still to be blended
        self.coarse_s = self.fine_s = 0.0

    # ------------------------------------------------------------------ stages

    def plan(self) -> TilePlan:
        """The level to read and the tile grid over the region (a resumed run keeps its own)."""
        if self.tiles_plan is not None:
            return self.tiles_plan
        card, slide = self.card, self.slide
        plan = (
            self.resume.plan
            if self.resume is not None
            else plan_tiles(
                slide, self.region, card.mpp, card.tile, card.overlap, card.multiple, self.settings.slide_mpp
            )
        )
        choice = plan.choice
        if choice.mpp_assumed:
            self.notes.append(
                f"{slide.name} records no pixel size; assumed {choice.slide_mpp:g} µm/px (the model's own "
                "resolution), so the slide is read as it is. Pass the slide's real mpp to be exact."
            )
        if choice.resampled:
            self.notes.append(
                f"no level within 10% of the model's {card.mpp:g} µm/px; reading {choice.describe()} "
                f"resampled x{choice.scale:.3g}"
            )
        elif choice.reduction > 1:
            log.info("%s: reading %s for a %g µm/px model", slide.name, choice.describe(), card.mpp)
        self.tiles_plan = plan
        self._check_fits(plan)
        return plan

    def memory_needed(self, plan: TilePlan) -> int:
        """Bytes the run's map takes: the whole blended map and its uint8 copy when it is kept,
        else the few bands in flight (three, each a stride of rows across the region)."""
        width, height = plan.size
        c = self.card.channels
        per_px = (2 * c + 2) + (c + 1)  # fixed-point sums and weight, then the uint8 map and region
        rows = height if self.settings.keep_map else min(height, 3 * plan.stride)
        return width * rows * per_px

    def _check_fits(self, plan: TilePlan) -> None:
        """Refuse before the first tile a run whose map cannot fit in this computer's memory."""
        import psutil

        need, free = self.memory_needed(plan), psutil.virtual_memory().available
        if need > 0.8 * free:
            width, height = plan.size
            gib, free_gib = need / 2**30, free / 2**30
            if self.settings.keep_map:
                raise RunTooLarge(
                    f"the region is {width} x {height} model pixels, whose map needs about {gib:.1f} GiB; "
                    f"{free_gib:.1f} GiB of memory is free. Delineate a smaller region, or run "
                    "delineo delineate (it finishes the outline band by band)"
                )
            raise RunTooLarge(
                f"the region is {width} model pixels wide, whose bands need about {gib:.1f} GiB; "
                f"{free_gib:.1f} GiB of memory is free. Delineate a narrower region"
            )

    def select_tiles(
        self, cancel: threading.Event | None = None, on_tile: Callable[[TileEvent], None] | None = None
    ) -> tuple[list[Tile], list[Tile]]:
        """(tiles to run, tiles skipped: glass, or ruled out by the coarse pass of an adaptive
        run, whose tiles are reported to `on_tile` as they finish); a resumed run takes the
        pending tiles."""
        plan = self.plan()
        if self.resume is not None:
            self.blender = self.resume.blender
            self.to_run, self.skipped = list(self.resume.pending), []
            self.done, self.failed = len(plan.tiles) - len(self.to_run), self.resume.tiles_failed
            self.notes.append(
                f"finished {len(self.to_run)} tile(s) with {self.engine.name} after {self.resume.source}"
            )
            return self.to_run, self.skipped
        tissue = self.tissue if self.tissue is not None else tissue_mask(self.slide)
        if tissue.note:
            self.notes.append(tissue.note)
        self.to_run, self.skipped = split_background(plan, tissue)
        if self.settings.adaptive and self.to_run:
            refine = self._coarse_pass(tissue, cancel, on_tile or (lambda ev: None))
            self.refine_skipped = len(self.to_run) - len(refine)
            if self.refine_skipped:
                chosen = set(refine)
                if self._stands_in():
                    standing = (t for t in self.to_run if t not in chosen)
                    self._standing = sorted(standing, key=lambda t: t.index)
                self.skipped += [t for t in self.to_run if t not in chosen]
                self.to_run = refine
        blended = self.to_run + self._standing
        if self.settings.keep_map:
            self.blender = Blender(plan, self.card.channels)
        else:
            self.outliner = self._outliner(plan)
            on_band = self.outliner.add_band
            if self.map_sink is not None:
                sink, outline = self.map_sink, on_band

                def on_band(first_row: int, band: np.ndarray) -> None:
                    outline(first_row, band)
                    sink(first_row, band)

            self.blender = BandBlender(plan, self.card.channels, blended, on_band, self.outliner.factor)
        return self.to_run, self.skipped

    def _stands_in(self) -> bool:
        """Whether the coarse map can stand in for the fine one (a coarse model made for this
        one; the model itself at a coarser size)."""
        coarse = (self.coarse_engine or self.engine).card
        return self.coarse_map is not None and answer_mismatch(self.card, coarse) is None

    def _outliner(self, plan: TilePlan) -> BandOutliner:
        s = self.settings
        mpp = plan.choice.slide_mpp
        return BandOutliner(
            self.card.scheme,
            self.threshold,
            self.region,
            plan.level0_per_model,
            plan.model_to_level0(0, 0),
            plan.size[1],
            mpp,
            trace_factor(s.simplify_um, plan.level0_per_model * mpp),
            s.simplify_um,
            s.min_area_um2,
            s.min_hole_um2,
        )

    def infer(
        self, cancel: threading.Event | None = None, on_tile: Callable[[TileEvent], None] | None = None
    ) -> None:
        """Run the selected tiles through the engine into the blended map, reporting each tile
        (skipped ones first). An engine failing mid-run ends this stage with what is done kept
        (`engine_error`); the caller may finish the rest on another engine."""
        plan, report = self.plan(), on_tile or (lambda ev: None)
        t0 = time.perf_counter()
        for t in self.skipped:
            self.done += 1
            rect = tile_core_rect(plan, t)
            report(TileEvent(t, self.done, self.total, rect, None, skipped=True, elapsed_s=self._elapsed()))
        if self.engine_error is None:
            stand = lambda t: self._stand(t, cancel)  # noqa: E731 - the coarse answers, interleaved
            self._stream(plan, self.to_run, self.blender, cancel, report, self.finished, before=stand)
        self._stand(None, cancel)
        self.fine_s = time.perf_counter() - t0
        pending = any(t not in self.finished for t in self.to_run)
        self.cancelled = cancel is not None and cancel.is_set() and pending

    def _stream(
        self,
        plan: TilePlan,
        tiles: list[Tile],
        blender,
        cancel,
        report,
        finished: set,
        engine=None,
        before: Callable[[Tile], None] | None = None,
    ) -> None:
        """`tiles` of `plan` read ahead, through the engine, into `blender`, each reported;
        `before(tile)` runs before a tile is blended."""
        engine = engine or self.engine
        reader = TileReader(self.slide, plan, self.settings.readers, self.settings.lookahead)

        def tiles_read() -> Iterator[tuple[Tile, np.ndarray | BaseException]]:
            for t, fut in reader.iterate(tiles, self.focus):
                if cancel is not None and cancel.is_set():
                    return
                try:
                    yield t, fut.result()
                except SlideError as e:
                    yield t, e

        results = predict_stream(engine, tiles_read())
        total, coarse = self.total, plan is self.coarse_plan
        try:
            for t, prob in results:
                if cancel is not None and cancel.is_set():
                    break
                self.done += 1
                finished.add(t)
                rect = tile_core_rect(plan, t)
                if isinstance(prob, BaseException):
                    self.failed += 1
                    blender.skip(t)
                    log.warning("tile %s unreadable: %s", t, prob)
                    report(
                        TileEvent(
                            t,
                            self.done,
                            total,
                            rect,
                            None,
                            error=str(prob),
                            elapsed_s=self._elapsed(),
                            coarse=coarse,
                        )
                    )
                    continue
                if before is not None:
                    before(t)
                blender.add(t, prob)
                if self.first_tile_s is None:
                    self.first_tile_s = self._elapsed()
                report(TileEvent(t, self.done, total, rect, prob, elapsed_s=self._elapsed(), coarse=coarse))
        except EngineError as e:  # the finished tiles stay; the caller may finish on another engine
            self.engine_error = str(e)
            log.warning("engine %s failed after %d of %d tiles: %s", engine.name, self.done, total, e)
        finally:
            results.close()  # abandons tiles still in the engine
            reader.close()

    @property
    def total(self) -> int:
        """Tiles the progress counts: the coarse pass's too, in an adaptive run."""
        return len(self.plan().tiles) + (len(self.coarse_plan.tiles) if self.coarse_plan else 0)

    # ------------------------------------------------------------------ adaptive refinement

    def _coarse_pass(self, tissue: TissueMask, cancel, report) -> list[Tile]:
        """The region through the coarse model (its own pixel size; without one, this model at
        COARSE_FACTOR x its pixel size, which the shipped one does not hold up at: README) into
        `self.coarse_map`, then the fine tiles the card's refine rule sends to full resolution;
        the others keep the coarse answer (`_stand`)."""
        engine = self.coarse_engine or self.engine
        card, fine = engine.card, self.plan()
        mpp = card.mpp if self.coarse_engine is not None else card.mpp * COARSE_FACTOR
        t0 = time.perf_counter()
        coarse = plan_tiles(
            self.slide,
            self.region,
            mpp,
            card.tile,
            card.overlap,
            card.multiple,
            # The fine plan's slide pixel size, assumed or not: a slide without one is read at
            # the same scale by both passes.
            self.settings.slide_mpp or fine.choice.slide_mpp,
        )
        run, glass = split_background(coarse, tissue)
        self.coarse_plan, self.coarse_tiles = coarse, len(run)
        for t in glass:
            self.done += 1
            rect = tile_core_rect(coarse, t)
            report(
                TileEvent(
                    t, self.done, self.total, rect, None, skipped=True, elapsed_s=self._elapsed(), coarse=True
                )
            )
        cmap = CoarseMap(coarse, card.channels, mpp)
        blender = CoarseBlender(cmap, run)
        failed_before = self.failed
        self._stream(coarse, run, blender, cancel, report, set(), engine)
        blender.close()
        self.coarse_s = time.perf_counter() - t0
        self.coarse_counted, self.coarse_failed = self.done, self.failed - failed_before
        if self.engine_error is not None:
            # The coarse engine failed: the run goes on as if exhaustive, saying so.
            self.notes.append(
                f"the coarse pass stopped ({self.engine_error}); every tissue tile ran at full resolution"
            )
            self.engine_error = None
            return self.to_run
        if cancel is not None and cancel.is_set():
            return self.to_run  # not judged: the fine pass stops at once too
        self.coarse_map = cmap
        rule = RefineRule.from_card(self.card.adaptive)
        return cmap.refine(fine, self.to_run, self.card.scheme, rule)

    def _stand(self, upto: Tile | None = None, cancel: threading.Event | None = None) -> None:
        """Blend the coarse answer of tiles that do not run at full resolution: before fine tile
        `upto` is blended, those before it in row-major order (band by band, so bands finish in
        order) or, into a kept map, a few at a time (spread over the fine pass); None: all.
        Cancelling stops it; what is left stays pending."""
        n = 0
        while self._standing and not (cancel is not None and cancel.is_set()):
            t = self._standing[0]
            if upto is not None and (
                n >= STANDS_PER_TILE if self.settings.keep_map else t.index >= upto.index
            ):
                return
            self._standing.pop(0)
            self.blender.add(t, self.coarse_map.tile_answer(self.plan(), t))
            n += 1

    def finish(self) -> Delineation:
        """The blended map traced into outlines per class, with what the run did and noticed."""
        plan, card, settings, resume = self.plan(), self.card, self.settings, self.resume
        if self.failed:
            self.notes.append(f"{self.failed} tile(s) could not be read and were left out")
        if not settings.keep_map:
            self.blender.close()  # bands a cancelled or failed run left open
            return self._result(self.outliner.outlines(), None)
        pmap = ProbabilityMap.from_blender(
            self.blender,
            plan,
            self.region,
            plan.choice.slide_mpp,
            model=card.name,
            version=card.version,
            engine=self.engine.name,
            default_threshold=float(card.default_threshold),
            scheme=card.scheme,
            simplify_um=float(settings.simplify_um),
            min_hole_um2=float(settings.min_hole_um2),
            **(
                {"run_id": resume.probability_map.run_id}
                if resume is not None and resume.probability_map
                else {}
            ),
        )
        outlines = pmap.trace(
            self.threshold, settings.min_area_um2, settings.simplify_um, settings.min_hole_um2
        )
        return self._result(outlines, pmap)

    def _result(self, outlines: dict, pmap: ProbabilityMap | None) -> Delineation:
        plan, card, settings, resume = self.plan(), self.card, self.settings, self.resume
        skipped = resume.tiles_skipped if resume else len(self.skipped)
        failed = self.failed - self.coarse_failed
        return Delineation(
            outlines=outlines,
            plan=plan,
            blender=self.blender,
            tiles_done=self.done - self.coarse_counted - failed - skipped,
            tiles_skipped=skipped,
            tiles_failed=failed,
            seconds=self._elapsed() + (resume.seconds if resume else 0.0),
            first_tile_s=self.first_tile_s if resume is None else resume.first_tile_s,
            cancelled=self.cancelled,
            source=f"{card.name} {card.version} {self.engine.name}",
            notes=[*(resume.notes if resume else []), *self.notes],
            engine_error=self.engine_error,
            pending=[t for t in self.to_run if t not in self.finished] + self._standing,
            probability_map=pmap,
            threshold=float(card.default_threshold if self.threshold is None else self.threshold),
            min_area_um2=float(settings.min_area_um2),
            scheme=card.scheme,
            run_id=pmap.run_id if pmap is not None else new_run_id(),
            model=(card.name, card.version, self.engine.name),
            coarse_tiles=self.coarse_tiles,
            refine_skipped=self.refine_skipped,
            coarse_s=self.coarse_s,
            fine_s=self.fine_s,
        )

    def execute(
        self, cancel: threading.Event | None = None, on_tile: Callable[[TileEvent], None] | None = None
    ) -> Delineation:
        """Every stage in order; `on_tile` is called (on this thread) as each tile finishes."""
        self.plan()
        self.select_tiles(cancel, on_tile)
        self.infer(cancel, on_tile)
        return self.finish()

    def _elapsed(self) -> float:
        return time.perf_counter() - self.t0
