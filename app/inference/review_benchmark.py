"""`delineo bench review`: the review loop's interactive costs, measured on real work.

(a) a real run of the shipped model over a slide built from the bundled EBHI-Seg tiles (at least
100 tiles), then re-traces of its stored map over a sweep of sensitivities and minimum areas:
the floor is 100 ms a re-trace; (b) brush add/subtract on a selected annotation of over 5,000
vertices, per mouse move (a stroke segment buffered by the brush radius, united with or
subtracted from the annotation): the floor is 16 ms a move (60 fps); (c) building the autosave
document of 1,000 annotations, the part that runs on the GUI thread, and writing it (on the
autosave thread).
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from app.paths import RESOURCES

BUNDLED_EBHI = RESOURCES.parent / "tests" / "data" / "ebhi"
RETRACE_FLOOR_MS = 100.0
BRUSH_FLOOR_MS = 16.0


class Clock:
    """Wall time and this process's CPU time of each timed step: on a VM whose cores other
    work shares, wall time is what a user would have waited then, CPU time what the step
    costs on a core of its own."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall.append((time.perf_counter() - self._w) * 1000)
        self.cpu.append((time.process_time() - self._c) * 1000)

    def stats(self) -> dict:
        return {**_stats(self.wall), "cpu": _stats(self.cpu)}


def _stats(ms: list[float]) -> dict:
    p95 = sorted(ms)[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return {
        "median_ms": round(statistics.median(ms), 2),
        "p95_ms": round(p95, 2),
        "max_ms": round(max(ms), 2),
        "n": len(ms),
    }


def ebhi_slide(out_dir: Path, data: Path, side: int = 4416) -> Path:
    """A `side`² pyramid at 1 µm/px (the model's) of the bundled EBHI-Seg tiles repeated:
    4416² is exactly 10 x 10 model tiles of 512 with 64 overlap."""
    from app.core.dataset import load_image, read_manifest
    from app.core.pyramid_tiff import level_sizes, periodic_source, write_pyramidal_tiff

    pairs = read_manifest(data)
    n = math.isqrt(min(16, len(pairs)))
    tiles = [load_image(p) for p in pairs[: n * n]]
    period = np.concatenate([np.concatenate(tiles[r * n : (r + 1) * n], axis=1) for r in range(n)], axis=0)
    path = out_dir / "ebhi-review.tif"
    sizes = level_sizes(side, side, 2, 256)
    write_pyramidal_tiff(path, periodic_source(period, sizes), sizes, mpp=1.0)
    return path


def bench_retrace(engine, data: Path | None = None, progress=None) -> dict:
    from shapely.geometry import box

    from app.core.slide import Slide
    from app.inference.pipeline import DelineationRun

    with tempfile.TemporaryDirectory(prefix="delineo-bench-review-") as tmp:
        path = ebhi_slide(Path(tmp), Path(data or BUNDLED_EBHI))
        with Slide.open(path) as slide:
            w, h = slide.dimensions
            t0 = time.perf_counter()
            result = DelineationRun(slide, box(0, 0, w, h), engine).execute()
            run_s = time.perf_counter() - t0
    pmap = result.probability_map
    if progress:
        progress(
            f"run: {result.tiles_done} tiles in {run_s:.1f} s; map {pmap.prob.shape[2]}x{pmap.prob.shape[1]}"
        )
    pmap.trace(0.5, 1000.0)  # the first re-trace rasterises the region once (kept)
    clock, counts = Clock(), []
    sensitivity, area_only = Clock(), Clock()  # a new threshold traces; a new area re-filters
    for threshold in (0.3, 0.4, 0.5, 0.6, 0.7):
        for i, min_area in enumerate((250.0, 500.0, 1000.0, 2500.0, 5000.0)):
            with clock, area_only if i else sensitivity:
                outlines = pmap.trace(threshold, min_area)
            counts.append(sum(map(len, outlines.values())))
    specks = Clock()  # no minimum area at all: every speck becomes a polygon
    for threshold in (0.3, 0.5, 0.7):
        with specks:
            n = sum(map(len, pmap.trace(threshold, 0.0).values()))
    out = {
        "tiles": result.tiles_done,
        "tiles_skipped": result.tiles_skipped,
        "map_px": f"{pmap.prob.shape[2]}x{pmap.prob.shape[1]}",
        "run_s": round(run_s, 2),
        "retrace": clock.stats(),
        "retrace_new_sensitivity": sensitivity.stats(),
        "retrace_new_minimum_area": area_only.stats(),
        "retrace_min_area_0": {**specks.stats(), "polygons_at_0.7": n},
        "polygons_min_max": [min(counts), max(counts)],
        "retrace_floor_ms": RETRACE_FLOOR_MS,
    }
    if progress:
        progress(f"re-trace: median {out['retrace']['median_ms']} ms, max {out['retrace']['max_ms']} ms")
    return out


def wobbly_outline(vertices: int = 6000, radius: float = 2000.0, seed: int = 0):
    """A gland-like outline of `vertices` vertices (level-0 px) with a ragged border."""
    from shapely.geometry import Polygon

    rng = np.random.default_rng(seed)
    a = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    r = radius * (1 + 0.08 * np.sin(7 * a) + 0.04 * np.sin(31 * a)) + rng.normal(0, 2.0, vertices)
    return Polygon(np.c_[radius * 3 + r * np.cos(a), radius * 3 + r * np.sin(a)])


def bench_brush(moves: int = 200, brush_px: float = 40.0, step_px: float = 12.0, progress=None) -> dict:
    """Brush strokes along the outline's border, where a pathologist corrects it."""
    from shapely.geometry import LineString

    from app.core.annotation_edits import add_to, subtract_from
    from app.core.annotations import Annotation, Provenance

    outline = wobbly_outline()
    base = Annotation(outline, provenance=Provenance("model", "bench", "0", "none"), review="proposed")
    ring = outline.exterior
    results = {}
    for name, op in (("add", add_to), ("subtract", subtract_from)):
        a, clock = base, Clock()
        prev = ring.interpolate(0)
        for i in range(1, moves + 1):
            cur = ring.interpolate(i * step_px)
            with clock:
                dab = LineString([prev.coords[0], cur.coords[0]]).buffer(brush_px, quad_segs=8)
                a = op(a, dab) or a
            prev = cur
        results[name] = clock.stats()
        results[name]["vertices_after"] = int(
            sum(len(p.exterior.coords) for p in getattr(a.geometry, "geoms", [a.geometry]))
        )
    out = {
        "vertices": len(outline.exterior.coords) - 1,
        "brush_radius_px": brush_px,
        "move_px": step_px,
        "brush_add": results["add"],
        "brush_subtract": results["subtract"],
        "brush_floor_ms": BRUSH_FLOOR_MS,
    }
    if progress:
        progress(
            f"brush: add median {results['add']['median_ms']} ms, "
            f"subtract {results['subtract']['median_ms']} ms"
        )
    return out


def bench_autosave(count: int = 1000, progress=None) -> dict:
    """Build (GUI thread) and write (autosave thread) the document of `count` annotations,
    outlines of about 100 vertices each, as a delineation leaves them."""
    from shapely.geometry import Point

    from app.core.annotation_store import AnnotationStore
    from app.core.annotations import Annotation, Provenance

    prov = Provenance("model", "bench", "0", "none", 0.5, 1000.0, "run")
    anns = [
        Annotation(Point(300 * (i % 40), 300 * (i // 40)).buffer(100, quad_segs=25), provenance=prov)
        for i in range(count)
    ]
    with tempfile.TemporaryDirectory(prefix="delineo-bench-save-") as tmp:
        store = AnnotationStore(Path(tmp) / "slide.svs", Path(tmp) / "data", mpp=0.5)
        builds, writes = Clock(), Clock()
        for _ in range(5):
            with builds:
                doc = store.document(anns, None)
            with writes:
                path = store.write(doc)
        size = path.stat().st_size
        stall = _longest_stall_while(lambda: store.write(store.document(anns, None)))
    out = {
        "annotations": count,
        "vertices": int(sum(len(a.geometry.exterior.coords) for a in anns)),
        "build_on_caller_thread": builds.stats(),
        "write_on_autosave_thread": writes.stats(),
        "longest_stall_of_another_thread_ms": round(stall, 2),
        "file_mb": round(size / 1e6, 2),
    }
    if progress:
        progress(
            f"autosave: build {out['build_on_caller_thread']['median_ms']} ms, "
            f"write {out['write_on_autosave_thread']['median_ms']} ms"
        )
    return out


def _longest_stall_while(work) -> float:
    """The longest gap (ms) between 1 ms ticks of this thread while `work` runs on another:
    what a GUI thread sharing the GIL with the autosave thread would feel."""
    import threading

    worker = threading.Thread(target=work)
    worker.start()
    longest, last = 0.0, time.perf_counter()
    while worker.is_alive():
        time.sleep(0.001)
        now = time.perf_counter()
        longest, last = max(longest, now - last - 0.001), now
    worker.join()
    return longest * 1000


def bench_review(engine, data: Path | None = None, progress=None) -> dict:
    from app.inference.benchmark import cpu_name

    out = {"cpu": cpu_name(), "cores": os.cpu_count(), "engine": engine.name}
    out["retrace"] = bench_retrace(engine, data, progress)
    out["brush"] = bench_brush(progress=progress)
    out["autosave"] = bench_autosave(progress=progress)
    return out
