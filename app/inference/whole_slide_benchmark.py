"""`delineo bench adaptive` and `delineo bench memory`: whole slides, the coarse-to-fine run
against the exhaustive one, and peak RSS against the slide's size."""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from app.inference.benchmark import mask_dice


def bench_adaptive(
    data, engine, out_dir=None, split: str = "val", progress=None, coarse_engine=None, repeats: int = 3
) -> dict:
    """Whole slide, exhaustive against adaptive (coarse to fine), on a mock section built from
    `split`'s labelled tiles (~15 % tumour in one focus among benign and pre-invasive mucosa,
    glass around): wall time of each, the share of tissue tiles run at full resolution, the
    time of each pass, and Dice of each tumour outline against the truth and of adaptive
    against exhaustive. `coarse_engine`: the coarse model's (None: the model itself at COARSE_FACTOR x
    its pixel size)."""
    import tempfile

    import shapely

    from app.core.geometry import rasterize
    from app.core.mosaic_slide import build_section_slide
    from app.core.slide import Slide
    from app.core.tissue import tissue_mask
    from app.inference.pipeline import DelineationRun, RunSettings
    from app.inference.refinement import COARSE_FACTOR, RefineRule

    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory()
        out_dir = tmp.name
    section = build_section_slide(data, out_dir, split, tile_mpp=engine.card.mpp)
    if progress:
        progress(
            f"section slide: {section.tiles} tiles ({section.tumour_tiles} adenocarcinoma) -> {section.slide}"
        )
    tile = engine.card.tile
    engine.predict(np.zeros((1, tile, tile, 3), np.uint8))  # compile/warm-up outside the timings
    rule = RefineRule.from_card(engine.card.adaptive)
    out: dict = {"engine": engine.name, "refine_rule": dataclasses.asdict(rule)}
    if coarse_engine is None:
        out["coarse_factor"] = COARSE_FACTOR
    if coarse_engine is not None:
        t = coarse_engine.card.tile
        coarse_engine.predict(np.zeros((1, t, t, 3), np.uint8))
        c = coarse_engine.card
        out["coarse_model"] = f"{c.name} ({coarse_engine.name}, {c.mpp:g} µm/px)"
    masks = {}
    with Slide.open(section.slide) as slide:
        w, h = slide.dimensions
        tissue = tissue_mask(slide)
        th, tw = section.truth.shape
        seconds: dict[str, list[float]] = {"exhaustive": [], "adaptive": []}
        for _ in range(max(1, repeats)):
            for mode in ("exhaustive", "adaptive"):  # interleaved: the machine's drift hits both
                settings = RunSettings(adaptive=mode == "adaptive", keep_map=False)
                t0 = time.perf_counter()
                r = DelineationRun(
                    slide,
                    shapely.geometry.box(0, 0, w, h),
                    engine,
                    settings,
                    tissue=tissue,
                    coarse_engine=coarse_engine if mode == "adaptive" else None,
                ).execute()
                seconds[mode].append(time.perf_counter() - t0)
                masks[mode] = rasterize(
                    shapely.union_all(tumour_polygons(r.outlines)), (th, tw), w / tw, (0.0, 0.0)
                )
                out[mode] = {
                    "seconds": round(statistics.median(seconds[mode]), 2),
                    "runs_s": [round(x, 2) for x in seconds[mode]],
                    "tiles_full_resolution": r.tiles_done,
                    "coarse_tiles": r.coarse_tiles,
                    "full_resolution_share": round(r.full_resolution_share, 3),
                    "coarse_pass_s": round(r.coarse_s, 2),
                    "fine_pass_s": round(r.fine_s, 2),
                    "dice_vs_truth": round(mask_dice(masks[mode], section.truth), 4),
                }
                if progress:
                    progress(f"{mode}: {out[mode]}")
    out["speedup"] = round(out["exhaustive"]["seconds"] / max(1e-9, out["adaptive"]["seconds"]), 2)
    out["dice_adaptive_vs_exhaustive"] = round(mask_dice(masks["adaptive"], masks["exhaustive"]), 4)
    if tmp is not None:
        tmp.cleanup()
    return out


def tumour_polygons(outlines: dict) -> list:
    """What the section's truth (adenocarcinoma) is scored against: the class named Tumor of a
    model that has one (a multi-class model's other epithelium is not tumour), else every
    class's outline."""
    if "Tumor" in outlines:
        return list(outlines["Tumor"])
    return [p for polygons in outlines.values() for p in polygons]


def bench_memory(
    sides=(7000, 40000),
    mpp: float = 0.5,
    out_dir=None,
    progress=None,
    whole_slide: bool = False,
    likelihood: bool = False,
) -> dict:
    """Peak RSS of `delineo delineate` over a whole slide of each side (level-0 px at `mpp`):
    generated slides of glass with islands of real H&E (the bundled sample) in the corners and
    the middle, so the map spans the whole slide while the model runs on the islands only.
    Each run is its own process, sampled every 20 ms; the peak is the largest RSS seen.
    `whole_slide`: `delineate --whole-slide` (the tissue found, coarse model first) instead of
    a region of the whole slide; `likelihood`: `--likelihood` too (the map streamed to a TIFF)."""
    import tempfile

    import psutil

    from app.core.pyramid_tiff import level_sizes, write_pyramidal_tiff
    from app.core.slide import Slide
    from app.paths import SAMPLE_SLIDE

    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory()
        out_dir = tmp.name
    with Slide.open(SAMPLE_SLIDE) as s:
        tissue = s.read_region(0, 0, 0, 2048, 2048)
    rows = {}
    for side in sides:
        path = Path(out_dir) / f"islands-{side}.tif"
        sizes = level_sizes(side, side, 2, 256)
        write_pyramidal_tiff(path, _islands_source(tissue, sizes), sizes, mpp=mpp)
        out = Path(out_dir) / f"islands-{side}.geojson"
        cmd = [
            sys.executable,
            "-m",
            "app",
            "delineate",
            str(path),
            *(["--whole-slide"] if whole_slide else ["--region", f"0,0,{side},{side}"]),
            *(["--likelihood"] if likelihood else []),
            "--out",
            str(out),
        ]
        t0 = time.perf_counter()
        proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak = 0
        while proc.poll() is None:
            try:
                peak = max(peak, proc.memory_info().rss)
            except psutil.Error:
                break
            time.sleep(0.02)
        err = proc.stderr.read().decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"delineate of {path.name} failed: {err.strip().splitlines()[-1:]}")
        rows[side] = {"peak_rss_mb": round(peak / 1e6), "seconds": round(time.perf_counter() - t0, 1)}
        if progress:
            progress(f"{side}²: {rows[side]}")
    if tmp is not None:
        tmp.cleanup()
    small, large = rows[min(sides)], rows[max(sides)]
    ratio = round(large["peak_rss_mb"] / small["peak_rss_mb"], 3)
    return {"mpp": mpp, "whole_slide": whole_slide, "likelihood": likelihood, "runs": rows, "ratio": ratio}


def _islands_source(tissue: np.ndarray, sizes: list[tuple[int, int]]):
    """Glass (242) with square islands of `tissue` (level 0) at the corners and the centre."""
    from app.core import resample

    w0 = sizes[0][0]
    t = tissue.shape[0]
    spots = [(0, 0), (w0 - t, 0), (0, w0 - t), (w0 - t, w0 - t), ((w0 - t) // 2, (w0 - t) // 2)]
    levels: dict[int, tuple[np.ndarray, list]] = {}

    def source(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = w0 / sizes[level][0]
        if level not in levels:
            side = max(1, round(t / ds))
            small = resample.area_downscale(tissue, (side, side)) if side != t else tissue
            levels[level] = (small, [(round(sx / ds), round(sy / ds)) for sx, sy in spots])
        small, at = levels[level]
        out = np.full((h, w, 3), 242, np.uint8)
        for sx, sy in at:
            x0, y0 = max(x, sx), max(y, sy)
            x1, y1 = min(x + w, sx + small.shape[1]), min(y + h, sy + small.shape[0])
            if x1 > x0 and y1 > y0:
                out[y0 - y : y1 - y, x0 - x : x1 - x] = small[y0 - sy : y1 - sy, x0 - sx : x1 - sx]
        return out

    return source
