"""`delineate(...)`: the one pipeline the GUI worker, the CLI and the benchmarks iterate.

It yields a `TileEvent` as each tile finishes (so an outline can grow on screen while you
watch) and finally a `Delineation` with the tumour polygons. Slide reading runs on a reader
thread ahead of inference and the engine keeps several tiles in flight (`predict_stream`;
OpenSlide and the runtimes release the GIL), so the cores stay busy with the model while tiles
are read and blended; cancelling is checked between tiles and keeps what is done.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numpy as np
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from app.core.annotations import Annotation
from app.core.geometry import region_within_slide
from app.core.probability_map import ProbabilityMap
from app.core.slide import Slide, SlideError
from app.core.tiling import Blender, Tile, TilePlan, plan_tiles
from app.core.tissue import TissueMask, tissue_mask
from app.inference.engines import Engine, EngineError, predict_stream

log = logging.getLogger(__name__)

BACKGROUND_TISSUE_FRACTION = 0.02  # tiles with less tissue than this are not sent to the model


@dataclass
class TileEvent:
    tile: Tile
    done: int  # tiles finished so far, this one included (skipped ones count)
    total: int
    core_rect: tuple[float, float, float, float]  # level-0 (x, y, w, h) this tile is authoritative for
    prob: np.ndarray | None  # (tile, tile) float32 tumour probability; None when skipped
    skipped: bool = False
    error: str | None = None
    elapsed_s: float = 0.0


@dataclass
class Delineation:
    polygons: list[Polygon]
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

    def annotations(self) -> list[Annotation]:
        """The outline as the model's proposals, each recording the run and its settings."""
        pm = self.probability_map
        prov = pm.provenance(self.threshold, self.min_area_um2)
        return [Annotation(p, pm.cls, pm.color, provenance=prov, review="proposed") for p in self.polygons]

    @cached_property
    def probability(self) -> np.ndarray:
        """The blended map (float16, model pixels; see plan), made when first asked for: the
        outline is traced from the blender's sums directly, and most runs never need it."""
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


class TileReader:
    """Reads tiles at model resolution on a small thread pool, a few tiles ahead."""

    def __init__(self, slide: Slide, plan: TilePlan, workers: int, lookahead: int):
        self.slide = slide
        self.plan = plan
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tile-reader")
        self.lookahead = lookahead
        self.queue: deque[tuple[Tile, Future]] = deque()

    def read(self, t: Tile) -> np.ndarray:
        x, y, w, h = self.plan.read_rect(t)
        choice, tile = self.plan.choice, self.plan.tile
        rgb = self.slide.read_region(x, y, choice.level, w, h, choice.reduction)
        if (w, h) != (tile, tile):
            interp = cv2.INTER_AREA if choice.scale < 1 else cv2.INTER_LINEAR
            rgb = cv2.resize(rgb, (tile, tile), interpolation=interp)
        return rgb

    def iterate(self, tiles: list[Tile]) -> Iterator[tuple[Tile, Future]]:
        """Tiles with their reads in flight. Until the first tile is on screen only the next two
        are read (behind it on the reader thread): the cores belong mostly to the first tile's
        inference, and both of the model's streams find a tile waiting when it is done."""
        it = iter(tiles)
        for t in itertools.islice(it, min(3, self.lookahead)):
            self.queue.append((t, self.pool.submit(self.read, t)))
        while self.queue:
            t, fut = self.queue.popleft()
            yield t, fut
            while len(self.queue) < self.lookahead and (nxt := next(it, None)) is not None:
                self.queue.append((nxt, self.pool.submit(self.read, nxt)))

    def close(self) -> None:
        for _, fut in self.queue:
            fut.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)


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


def delineate(
    slide: Slide,
    region: BaseGeometry,
    engine: Engine,
    *,
    cancel: threading.Event | None = None,
    tissue: TissueMask | None = None,
    threshold: float | None = None,
    simplify_um: float = 1.0,
    min_area_um2: float = 1000.0,
    min_hole_um2: float = 1000.0,
    slide_mpp: float | None = None,
    readers: int = 1,
    lookahead: int = 3,
    resume: Delineation | None = None,
) -> Iterator[TileEvent | Delineation]:
    """Delineate tumour in `region` (level-0 pixels). Yields TileEvents, then one Delineation.

    If the engine fails mid-run, the Delineation keeps the finished tiles and says why
    (`engine_error`); `resume=` that result runs only its pending tiles, on this engine, into the
    same map (finish locally what a remote endpoint left)."""
    t0 = time.perf_counter()
    card = engine.card
    # Validated and clipped here once, whoever calls: a region reaching past the slide would
    # otherwise be rasterized at its full size.
    region, clipped = region_within_slide(region, slide.dimensions)
    if resume is not None and (resume.engine_error is None or resume.plan.tile != card.tile):
        raise ValueError("resume needs a Delineation whose engine failed, from a model of the same tile size")
    plan = (
        resume.plan
        if resume is not None
        else plan_tiles(slide, region, card.mpp, card.tile, card.overlap, card.multiple, slide_mpp)
    )
    notes = [clipped] if clipped else []
    choice = plan.choice
    if choice.mpp_assumed:
        notes.append(
            f"{slide.name} records no pixel size; assumed {choice.slide_mpp:g} µm/px (the model's own "
            "resolution), so the slide is read as it is. Pass the slide's real mpp to be exact."
        )
    if choice.resampled:
        notes.append(
            f"no level within 10% of the model's {card.mpp:g} µm/px; reading {choice.describe()} "
            f"resampled x{choice.scale:.3g}"
        )
    elif choice.reduction > 1:
        log.info("%s: reading %s for a %g µm/px model", slide.name, choice.describe(), card.mpp)
    threshold = card.raw.get("output", {}).get("threshold", 0.5) if threshold is None else threshold
    tissue = tissue if tissue is not None else tissue_mask(slide)
    if tissue.note:
        notes.append(tissue.note)
    total = len(plan.tiles)
    if resume is None:
        blender = Blender(plan)
        to_run, skipped = split_background(plan, tissue)
        done = failed = 0
    else:
        blender, to_run, skipped = resume.blender, list(resume.pending), []
        done, failed = total - len(to_run), resume.tiles_failed
        notes.append(f"finished {len(to_run)} tile(s) with {engine.name} after {resume.source}")
    first_tile_s = None
    engine_error = None
    finished: set[Tile] = set()

    def core_rect(t: Tile) -> tuple[float, float, float, float]:
        return tile_core_rect(plan, t)

    for t in skipped:
        done += 1
        yield TileEvent(t, done, total, core_rect(t), None, skipped=True, elapsed_s=time.perf_counter() - t0)
    reader = TileReader(slide, plan, readers, lookahead)

    def tiles_read() -> Iterator[tuple[Tile, np.ndarray | BaseException]]:
        for t, fut in reader.iterate(to_run):
            if cancel is not None and cancel.is_set():
                return
            try:
                yield t, fut.result()
            except SlideError as e:
                yield t, e

    results = predict_stream(engine, tiles_read())
    try:
        for t, prob in results:
            if cancel is not None and cancel.is_set():
                break
            done += 1
            finished.add(t)
            elapsed = time.perf_counter() - t0
            if isinstance(prob, BaseException):
                failed += 1
                log.warning("tile %s unreadable: %s", t, prob)
                yield TileEvent(t, done, total, core_rect(t), None, error=str(prob), elapsed_s=elapsed)
                continue
            blender.add(t, prob)
            if first_tile_s is None:
                first_tile_s = elapsed
            yield TileEvent(t, done, total, core_rect(t), prob, elapsed_s=elapsed)
    except EngineError as e:  # the finished tiles stay; the caller may finish on another engine
        engine_error = str(e)
        log.warning("engine %s failed after %d of %d tiles: %s", engine.name, done, total, e)
    finally:
        results.close()  # abandons tiles still in the engine
        reader.close()
    pending = [t for t in to_run if t not in finished]
    cancelled = cancel is not None and cancel.is_set() and bool(pending)
    if failed:
        notes.append(f"{failed} tile(s) could not be read and were left out")
    tumour_class = card.classes[0] if card.classes else {}
    pmap = ProbabilityMap.from_blender(
        blender,
        plan,
        region,
        choice.slide_mpp,
        model=card.name,
        version=card.version,
        engine=engine.name,
        default_threshold=float(card.raw.get("output", {}).get("threshold", 0.5)),
        cls=str(tumour_class.get("name", "Tumor")),
        color=tuple(tumour_class.get("color", (200, 0, 0))),
        simplify_um=float(simplify_um),
        min_hole_um2=float(min_hole_um2),
        **(
            {"run_id": resume.probability_map.run_id} if resume is not None and resume.probability_map else {}
        ),
    )
    polygons = pmap.trace(threshold, min_area_um2, simplify_um, min_hole_um2)
    yield Delineation(
        polygons=polygons,
        plan=plan,
        blender=blender,
        tiles_done=done - failed - (resume.tiles_skipped if resume else len(skipped)),
        tiles_skipped=resume.tiles_skipped if resume else len(skipped),
        tiles_failed=failed,
        seconds=time.perf_counter() - t0 + (resume.seconds if resume else 0.0),
        first_tile_s=first_tile_s if resume is None else resume.first_tile_s,
        cancelled=cancelled,
        source=f"{card.name} {card.version} {engine.name}",
        notes=[*(resume.notes if resume else []), *notes],
        engine_error=engine_error,
        pending=pending,
        probability_map=pmap,
        threshold=float(threshold),
        min_area_um2=float(min_area_um2),
    )


def run_to_end(events: Iterator[TileEvent | Delineation]) -> Delineation:
    """Drain a delineation generator and return its result."""
    result = None
    for ev in events:
        result = ev
    assert isinstance(result, Delineation)
    return result
