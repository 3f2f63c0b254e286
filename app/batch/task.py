"""One slide of a batch, as it runs on a Dask worker: open, run, write, return its row.

This module does not import Dask: the progress hook finds the worker only if there is one, so
the same function runs in a plain process (and in the tests of its parts). Engines are built
once per worker process and reused by every slide it runs: a model compiles in about a second,
which on small slides is most of the work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.batch.summary import SlideResult
from app.errors import DelineoError

log = logging.getLogger(__name__)

PROGRESS_TOPIC = "delineo-batch-progress"
NO_MPP = "areas are left empty: the slide records no pixel size (give --mpp to have them)"


@dataclass(frozen=True)
class EngineSpec:
    """What `create_engine` needs; hashable, so equal specs share a cached engine."""

    engine: str
    model: str | None = None
    precision: str | None = None  # None: the best the model has (INT8, FP16, FP32)
    device: str = "CPU"
    threads: int = 0
    url: str | None = None
    token: str | None = None

    def create(self):
        from app.inference.engine_registry import create_engine, engine_spec

        if not engine_spec(self.engine).local:
            token = self.token or os.environ.get("DELINEO_TOKEN")
            return create_engine(self.engine, self.model, url=self.url, token=token)
        return create_engine(self.engine, self.model, self.precision, self.device, threads=self.threads)


@dataclass(frozen=True)
class SlideJob:
    slide: str  # absolute path (a worker elsewhere must see the same path)
    out: str  # the GeoJSON to write
    engine: EngineSpec
    region_geojson: str | None = None  # None: the whole slide's tissue
    threshold: float | None = None
    min_area_um2: float = 1000.0
    mpp: float | None = None
    adaptive: bool = True  # whole slides: the model's coarse model first, where it names one
    likelihood: bool = False  # also <out stem>_likelihood_map.tif beside `out`, streamed to disk


class EnginePool:
    """Idle engines by spec, in this process. A worker with several threads runs several slides
    at once; each takes an engine of its own, so no engine is ever used by two slides at once."""

    def __init__(self):
        self._lock = threading.Lock()
        self._idle: dict[EngineSpec, list] = {}

    def acquire(self, spec: EngineSpec):
        with self._lock:
            idle = self._idle.get(spec)
            if idle:
                return idle.pop()
        with one_process_at_a_time("engine-build"):
            return spec.create()

    def release(self, spec: EngineSpec, engine) -> None:
        with self._lock:
            self._idle.setdefault(spec, []).append(engine)


@contextmanager
def one_process_at_a_time(name: str) -> Iterator[None]:
    """A machine-wide lock (an advisory lock on a file in the per-user data folder). Workers
    starting together on a cold cache would otherwise all compile the model and write the same
    OpenVINO cache blob at once, and one of them fails ("cannot set permissions"); in turn, the
    first compiles and the others load its blob."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; workers there start unserialized
        yield
        return
    from app.logs import data_dir

    folder = data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{name}.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


ENGINES = EnginePool()  # one per worker process: Dask pickles `run_slide` by reference


def run_slide(job: SlideJob) -> SlideResult:
    """The slide's outline written to `job.out`; its row (ok, failed or skipped) returned. Any
    failure becomes a failed row, so one bad slide never ends the batch."""
    t0 = time.perf_counter()
    name = Path(job.out).name
    try:
        return _run(job, t0)
    except NoRegion as e:
        return SlideResult(job.slide, name, "skipped", seconds=time.perf_counter() - t0, error=str(e))
    except DelineoError as e:
        return _failed(job, name, str(e), t0)
    except Exception as e:  # a bug or an unexpected library error: still one slide's failure
        log.exception("batch: %s failed", job.slide)
        return _failed(job, name, f"internal error: {type(e).__name__}: {e}", t0)


class NoRegion(DelineoError):
    """Nothing to run on: no tissue found, or no region file for this slide."""


def _failed(job: SlideJob, name: str, message: str, t0: float) -> SlideResult:
    return SlideResult(
        job.slide, name, "failed", seconds=time.perf_counter() - t0, error=" ".join(message.split())
    )


def _run(job: SlideJob, t0: float) -> SlideResult:
    from app.core.annotations import write_geojson
    from app.core.geometry import area_um2
    from app.core.slide import Slide
    from app.core.tissue import NoTissueError, tissue_mask, tissue_regions
    from app.inference.pipeline import DelineationRun, RunSettings

    name = Path(job.out).name
    with Slide.open(job.slide) as slide:
        tissue = None
        if job.region_geojson is None:
            tissue = tissue_mask(slide)
            try:
                region = tissue_regions(slide, tissue, mpp=job.mpp)
            except NoTissueError as e:
                raise NoRegion(str(e)) from None
        else:
            region = region_from_file(Path(job.region_geojson), slide)
        engine = ENGINES.acquire(job.engine)
        coarse_spec = coarse = None
        try:
            coarse_spec = _coarse_spec(job, engine) if job.region_geojson is None and job.adaptive else None
            coarse = _acquire_coarse(coarse_spec)
        except BaseException:
            ENGINES.release(job.engine, engine)
            raise
        settings = RunSettings(
            threshold=job.threshold,
            min_area_um2=job.min_area_um2,
            slide_mpp=job.mpp,
            keep_map=False,
            adaptive=coarse is not None,
        )
        with contextlib.ExitStack() as spool:
            likelihood = None
            if job.likelihood:
                from app.core.likelihood_map import RunLikelihood

                out = Path(job.out)
                likelihood = RunLikelihood(slide.dimensions, engine.card.scheme, out.parent, out.stem)
                spool.callback(likelihood.close)
            try:
                report = ProgressReport(Path(job.slide).name)
                run = DelineationRun(
                    slide,
                    region,
                    engine,
                    settings,
                    tissue=tissue,
                    coarse_engine=coarse,
                    map_sink=likelihood.sink if likelihood else None,
                )
                if likelihood:
                    likelihood.prepare(run.plan())
                result = run.execute(on_tile=lambda ev: report(ev.done, ev.total))
            finally:
                ENGINES.release(job.engine, engine)
                if coarse is not None:
                    ENGINES.release(coarse_spec, coarse)
            if result.engine_error:
                raise DelineoError(
                    f"{result.engine_error} ({result.tiles_done} of {result.tiles_total} tiles were done; "
                    "nothing was written, a re-run retries the slide)"
                )
            mpp = job.mpp or (sum(slide.mpp) / 2 if slide.mpp else None)
            if likelihood:  # before the GeoJSON: a slide counted done has both
                likelihood.write(mpp)
            annotations = result.annotations()
            offset = tuple(slide.bounds[:2]) if slide.bounds else (0, 0)
            write_geojson(job.out, annotations, mpp, offset)
    areas: dict[str, float | None] = {}
    for cls, polygons in result.outlines.items():
        total = sum((area_um2(p, mpp) or 0.0) for p in polygons)
        areas[cls] = total if mpp is not None else None
    return SlideResult(
        job.slide,
        name,
        "ok",
        tiles_run=result.tiles_done,
        areas_um2=areas,
        seconds=time.perf_counter() - t0,
        notes="; ".join(" ".join(n.split()) for n in [*result.notes, *([] if mpp else [NO_MPP])]),
    )


def _coarse_spec(job: SlideJob, engine) -> EngineSpec | None:
    """The engine of the coarse model the slide's model names, on the same engine and device;
    None for a remote engine or a model without a usable one (the slide then runs exhaustively)."""
    from app.inference.engine_registry import engine_spec
    from app.inference.modelcard import ModelCard, ModelCardError
    from app.inference.refinement import coarse_mismatch

    name = engine.card.coarse_model
    if name is None or not engine_spec(job.engine.engine).local:
        return None
    try:
        problem = coarse_mismatch(engine.card, ModelCard.load(name))
    except ModelCardError as e:
        problem = str(e)
    if problem:
        log.warning("batch: %s; running every tissue tile at full resolution", problem)
        return None
    spec = job.engine
    return EngineSpec(spec.engine, name, None, spec.device, spec.threads)


def _acquire_coarse(spec: EngineSpec | None):
    """The coarse engine, or None when it cannot be built (a damaged file, a device gone): the
    slide then runs every tissue tile at full resolution, which is slower, not wrong."""
    if spec is None:
        return None
    try:
        return ENGINES.acquire(spec)
    except Exception as e:  # noqa: BLE001 - logged; the slide goes on exhaustively
        log.warning("batch: coarse model %s unusable (%s); all tiles at full resolution", spec.model, e)
        return None


def region_from_file(path: Path, slide):
    """The region a --region-geojson-dir file gives this slide, clipped to the slide."""
    import shapely

    from app.core.annotations import read_document
    from app.core.geometry import polygonal, region_within_slide

    if not path.is_file():
        raise NoRegion(f"no region file {path} for {slide.name}; add one, or run it with --whole-slide")
    offset = tuple(slide.bounds[:2]) if slide.bounds else (0, 0)
    doc = read_document(path, offset)
    geoms = [a.geometry for a in doc.annotations] + ([] if doc.region.is_empty else [doc.region])
    if not geoms:
        raise NoRegion(f"{path}: no polygon to use as the region of {slide.name}")
    region, _ = region_within_slide(polygonal(shapely.union_all(geoms)), slide.dimensions, str(path))
    return region


class ProgressReport:
    """Tiles done on this slide, sent to the client every 10% (through the worker's event log,
    when running on a Dask worker; nowhere otherwise)."""

    def __init__(self, name: str):
        self.name = name
        self.last = -1
        try:
            from distributed import get_worker

            self.worker = get_worker()
        except (ImportError, ValueError):
            self.worker = None

    def __call__(self, done: int, total: int) -> None:
        decile = int(10 * done / max(1, total))
        if self.worker is None or decile == self.last:
            return
        self.last = decile
        try:
            self.worker.log_event(PROGRESS_TOPIC, {"slide": self.name, "done": done, "total": total})
        except Exception:  # progress is a courtesy: never a reason for the slide to fail
            log.debug("batch: progress not sent", exc_info=True)
