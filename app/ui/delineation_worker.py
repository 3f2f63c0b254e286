"""The delineation worker: an object living on its own QThread that drives the pipeline.

The GUI sends requests by queued signal and gets one signal per finished tile (with the overlay
image already built), so the GUI thread never touches the slide, the model or the disk. The
engine is created once per settings and kept warm; the tissue mask is computed when a slide
opens, so a click on Delineate reaches the first tile quickly.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from PySide6.QtCore import QObject, QRectF, QThread, Signal, Slot
from shapely.geometry.base import BaseGeometry

from app.core.probability_map import ProbabilityMap
from app.core.slide import Slide
from app.core.tissue import TissueMask, tissue_mask, tissue_mask_from_rgb, tissue_regions
from app.errors import is_user_error
from app.inference.engines import Engine, create_engine
from app.inference.modelcard import ModelCard
from app.inference.pipeline import Delineation, DelineationRun, RunSettings, TileEvent
from app.ui.overlay import tile_mask_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    model: str  # shipped model name or folder
    engine: str = "openvino"
    device: str = "CPU"
    precision: str = "auto"  # auto | int8 | fp16 | fp32
    url: str = ""  # remote engine: the endpoint
    token: str = field(default="", repr=False)  # remote engine: bearer token (never logged)

    @property
    def remote(self) -> bool:
        return self.engine == "remote"

    def local(self) -> EngineSettings:
        """The same model on this computer (to finish what a remote endpoint left)."""
        return EngineSettings(self.model, "openvino", "CPU", "auto")


@dataclass
class RunFinished:
    """A run's result with what the GUI keeps of it, all made on the worker thread: the
    probability map (for re-tracing) and the outlines traced from it."""

    delineation: Delineation
    map: ProbabilityMap
    annotations: list
    threshold: float
    min_area_um2: float


@dataclass
class TileUpdate:
    rect: QRectF  # level-0 core rectangle
    image: object  # QImage or None (skipped / failed)
    done: int
    total: int
    ran: int  # tiles actually inferred so far
    elapsed_s: float
    error: str | None
    coarse: bool = False  # an adaptive run's first pass: sharpened by the fine tiles after it


class DelineationWorker(QObject):
    tileDone = Signal(object)  # TileUpdate
    finished = Signal(object)  # RunFinished
    failed = Signal(str)
    status = Signal(str)
    engineReady = Signal(str)  # description, e.g. "openvino-int8 on CPU"
    slideReady = Signal(str)  # path: the slide's tissue mask is computed
    regionChosen = Signal(object)  # a whole-slide run's region (the tissue), before its first tile

    def __init__(self):
        super().__init__()
        self.cancel_event = threading.Event()
        self._engine: Engine | None = None
        self._engine_key: EngineSettings | None = None
        self._coarse: tuple[EngineSettings, Engine | None] | None = None
        self._tissue: dict[str, TissueMask] = {}
        self._regions: dict[str, BaseGeometry] = {}  # the whole-slide region, found with the mask
        self.precision_choice: tuple[str, dict] | None = None

    # ------------------------------------------------------------------ preparation

    def engine_for(self, settings: EngineSettings) -> Engine:
        if self._engine is not None and self._engine_key == settings:
            return self._engine
        t = time.perf_counter()
        if settings.remote:
            self.status.emit(f"Connecting to {settings.url}…")
            engine = create_engine("remote", None, url=settings.url, token=settings.token or None)
            log.info("remote engine %s ready in %.2fs", engine.model_url, time.perf_counter() - t)
            self._engine, self._engine_key = engine, settings
            self.engineReady.emit(f"{engine.info.model} at {settings.url}")
            return engine
        card = ModelCard.load(settings.model)
        precision = settings.precision
        if precision == "auto":
            from app.inference.autoselect import choose_precision

            self.status.emit("Choosing the fastest precision for this computer (first use only)…")
            precision, timings = choose_precision(card, settings.engine, settings.device)
            self.precision_choice = (precision, timings)
        engine = create_engine(settings.engine, card, precision, settings.device)
        engine.predict(_blank(card.tile))  # compile and warm up now, not on the first tile
        log.info("engine %s ready in %.2fs", engine.name, time.perf_counter() - t)
        self._engine, self._engine_key = engine, settings
        self.engineReady.emit(f"{engine.name} on {settings.device}")
        return engine

    def coarse_engine_for(self, settings: EngineSettings, engine: Engine) -> Engine | None:
        """The coarse model a whole-slide run starts with (its card's `adaptive.coarse_model`),
        on the same engine and device, kept warm; None for a remote engine, a model without
        one, or one that cannot serve (logged: the run is then exhaustive)."""
        if self._coarse is not None and self._coarse[0] == settings:
            return self._coarse[1]
        coarse = None
        name = engine.card.coarse_model
        if name is not None and not settings.remote:
            from app.inference.refinement import coarse_mismatch

            try:
                card = ModelCard.load(name)
                problem = coarse_mismatch(engine.card, card)
                if problem:
                    raise ValueError(problem)
                coarse = create_engine(settings.engine, card, None, settings.device)
                coarse.predict(_blank(card.tile))
            except Exception:  # the run goes on at full resolution
                log.warning("coarse model %s unusable; whole slides run exhaustively", name, exc_info=True)
                coarse = None
        self._coarse = (settings, coarse)
        return coarse

    @Slot(object, bool)
    def prepare(self, settings: EngineSettings, adaptive: bool = True) -> None:
        """Compile and warm the model now, and its coarse companion when whole slides use it
        (otherwise the first whole-slide run with it turned on builds it)."""
        try:
            engine = self.engine_for(settings)
            if adaptive:
                self.coarse_engine_for(settings, engine)
        except Exception as e:  # noqa: BLE001 - reported to the user, the app goes on
            self._report(e, "could not prepare the model")

    @Slot(object, object)
    def prepare_slide(self, slide: Slide, thumbnail=None) -> None:
        """Tissue mask from the thumbnail the window already read (or from the slide)."""
        key = str(slide.path)
        if key not in self._tissue:
            try:
                self._tissue[key] = (
                    tissue_mask(slide)
                    if thumbnail is None
                    else TissueMask(tissue_mask_from_rgb(thumbnail), thumbnail.shape[1] / slide.dimensions[0])
                )
            except Exception:  # the pipeline computes it again if it is needed
                log.warning("tissue mask of %s failed", key, exc_info=True)
                return
        if key not in self._regions:
            try:  # now, so that Delineate whole slide starts at once
                self._regions[key] = tissue_regions(slide, self._tissue[key])
            except Exception:  # said when the pathologist asks for the whole slide
                log.info("no whole-slide region for %s yet", key, exc_info=True)
        self.slideReady.emit(key)

    # ------------------------------------------------------------------ the run

    @Slot(object, object, object, object)
    def run(self, slide: Slide, region: BaseGeometry, settings: EngineSettings, options: dict) -> None:
        """A run over the region, or with options["resume"] (an unfinished Delineation) its
        pending tiles; options also carry the minimum area and the slide's mpp."""
        self.cancel_event.clear()
        try:
            engine = self.engine_for(settings)
            self.status.emit(f"Delineating with {engine.name}…")
            card = engine.card
            threshold = options.get("threshold")  # None: each class's own, from the card
            ran = 0

            def on_tile(ev: TileEvent) -> None:
                nonlocal ran
                ran += ev.prob is not None and not ev.coarse
                self.tileDone.emit(self._update(ev, coarse.card if ev.coarse else card, threshold, ran))

            tissue = self._tissue.get(str(slide.path))
            coarse = None
            if options.get("whole_slide"):
                region = self._regions.get(str(slide.path)) or tissue_regions(slide, tissue)
                self.regionChosen.emit(region)
                if options.get("resume") is None and options.get("adaptive", True):
                    coarse = self.coarse_engine_for(settings, engine)
            result = DelineationRun(
                slide,
                region,
                engine,
                RunSettings(
                    threshold=threshold,
                    min_area_um2=options["min_area_um2"],
                    slide_mpp=options.get("slide_mpp"),
                    adaptive=coarse is not None,
                ),
                tissue=tissue,
                resume=options.get("resume"),
                focus=options.get("focus"),
                coarse_engine=coarse,
            ).execute(self.cancel_event, on_tile)
            self.finished.emit(
                RunFinished(
                    result,
                    result.probability_map,
                    result.annotations(),
                    result.threshold,
                    result.min_area_um2,
                )
            )
        except Exception as e:  # noqa: BLE001 - reported to the user, tiles done are kept
            self._report(e, "delineation failed")

    def _update(self, ev: TileEvent, card: ModelCard, threshold: float, ran: int) -> TileUpdate:
        image = None
        if ev.prob is not None:
            trim = card.overlap // 2  # the core: what ev.core_rect covers
            n = ev.prob.shape[-1]
            image = tile_mask_image(ev.prob[:, trim : n - trim, trim : n - trim], card.scheme, threshold)
        return TileUpdate(
            QRectF(*ev.core_rect), image, ev.done, ev.total, ran, ev.elapsed_s, ev.error, ev.coarse
        )

    def _report(self, e: Exception, what: str) -> None:
        if not is_user_error(e):
            log.exception(what)
        self.failed.emit(f"{what}: {e}" if is_user_error(e) else f"{what}: {type(e).__name__}: {e}")


def _blank(tile: int):
    import numpy as np

    return np.full((1, tile, tile, 3), 240, np.uint8)


class WorkerThread(QObject):
    """Owns the QThread and the worker on it; the requests are queued signals."""

    runRequested = Signal(object, object, object, object)  # slide, region, settings, options
    prepareRequested = Signal(object, bool)  # settings, whether whole slides start coarse
    slideRequested = Signal(object, object)  # slide, its thumbnail (RGB array)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.thread = QThread()
        self.thread.setObjectName("delineation")
        self.worker = DelineationWorker()
        self.worker.moveToThread(self.thread)
        self.runRequested.connect(self.worker.run)
        self.prepareRequested.connect(self.worker.prepare)
        self.slideRequested.connect(self.worker.prepare_slide)
        self.thread.start()

    def cancel(self) -> None:
        self.worker.cancel_event.set()

    def stop(self) -> None:
        """Cancel and wait for the thread: a run stops at its next tile, but compiling a model
        or timing its precisions cannot be interrupted, and a QThread destroyed while it still
        runs aborts the process. The window is gone by then, so the wait is not seen."""
        self.worker.cancel_event.set()
        self.thread.quit()
        if not self.thread.wait(10_000):
            log.warning("the delineation thread is still busy (compiling a model?); waiting for it")
            self.thread.wait()
