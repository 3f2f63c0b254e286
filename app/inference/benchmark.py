"""`delineo bench model`: the GaNDLF + OpenVINO study's table for our model on this machine.

Every configuration runs in its own process, so peak RSS is that runtime's alone and no
runtime's thread pool warms or starves another's. All run the same real H&E tile from the
bundled sample slide, with the same thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def card_rows() -> dict[str, str]:
    """Each configuration, in the order benchmarked, and the model card's validation row that
    holds its Dice: "<engine>-<precision>" for every local engine in the registry, PyTorch, and
    OpenVINO FP32 left to choose its own precision ("openvino-default": BF16/FP16 where it can)."""
    from app.inference.engine_registry import ENGINES

    rows = {"torch-fp32": "onnxruntime-fp32"}
    for spec in ENGINES.values():
        if spec.local:
            rows.update({f"{spec.key}-{p}": f"{spec.key}-{p}" for p in spec.precisions})
            if spec.key == "openvino":
                rows["openvino-default"] = "openvino-fp32"
    return rows


def benchmark_tile(side: int) -> np.ndarray:
    """A real H&E tile (uint8, 1 x side x side x 3) from the bundled sample slide."""
    from app.core.slide import Slide
    from app.paths import SAMPLE_SLIDE

    with Slide.open(SAMPLE_SLIDE) as s:
        w, h = s.dimensions
        x, y = max(0, w // 2 - side // 2), max(0, h // 2 - side // 2)
        return s.read_region(x, y, 0, side, side)[None]


def peak_rss_mb() -> float:
    """This process's peak resident memory (psutil's peak_wset on Windows, ru_maxrss elsewhere)."""
    if sys.platform == "win32":
        import psutil

        return psutil.Process().memory_info().peak_wset / 2**20
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 1024 / 1024


def time_predict(predict, batch: np.ndarray, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        predict(batch)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        predict(batch)
        times.append((time.perf_counter() - t) * 1000)
    return times


def run_config(config: str, model: str | None, tile: int, repeats: int, threads: int) -> dict:
    """One configuration, in this process."""
    from app.inference.engine_registry import ENGINES, create_engine
    from app.inference.modelcard import ModelCard

    card = ModelCard.load(model)
    batch = benchmark_tile(tile)
    runtime, precision = config.split("-", 1)
    if runtime not in ENGINES or not ENGINES[runtime].local:
        raise ValueError(f"unknown configuration {config}")
    if config == "openvino-default":
        engine = create_engine(runtime, card, "fp32", "CPU", threads, inference_precision="default")
    else:
        engine = create_engine(runtime, card, precision, "CPU", threads)
    times = time_predict(engine.predict, batch, repeats)
    return result_row(config, times, tile, card)


def result_row(config: str, times: list[float], tile: int, card) -> dict:
    ms = statistics.median(times)
    row = card.validation.get("rows", {}).get(card_rows().get(config, ""), {})
    return {
        "config": config,
        "ms_per_tile": round(ms, 2),
        "mpix_per_s": round(tile * tile / 1e6 / (ms / 1000), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "dice": row.get("dice"),
        "tile": tile,
        "repeats": len(times),
    }


def bench_model(
    model: str | None = None,
    tile: int = 512,
    repeats: int = 20,
    threads: int = 0,
    configs: list[str] | None = None,
    progress=None,
) -> list[dict]:
    threads = threads or os.cpu_count() or 1
    rows = []
    known = list(card_rows())
    for config in configs or known:
        if config not in known:
            from app.errors import DelineoError

            raise DelineoError(f"unknown configuration '{config}'; choose from {', '.join(known)}")
        module = "app.model.torch_benchmark" if config == "torch-fp32" else "app.inference.benchmark"
        cmd = [
            sys.executable,
            "-m",
            module,
            "--config",
            config,
            "--tile",
            str(tile),
            "--repeats",
            str(repeats),
            "--threads",
            str(threads),
        ]
        if model:
            cmd += ["--model", str(model)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            if progress:
                progress(f"{config}: skipped ({last})")
            continue
        row = json.loads(r.stdout.strip().splitlines()[-1])
        row["threads"] = threads
        rows.append(row)
        if progress:
            progress(f"{config}: {row['ms_per_tile']:.1f} ms/tile")
    torch_row = next((r for r in rows if r["config"] == "torch-fp32"), None)
    for r in rows:
        r["speedup_vs_torch"] = round(torch_row["ms_per_tile"] / r["ms_per_tile"], 2) if torch_row else None
    return rows


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_model_table(rows: list[dict]) -> str:
    lines = [
        f"CPU: {cpu_name()}, {rows[0]['threads'] if rows else '?'} threads, "
        f"{rows[0]['tile'] if rows else '?'}² tile, median of {rows[0]['repeats'] if rows else '?'}",
        "",
        "| configuration | ms / tile | MPix/s | peak RSS MB | val Dice | vs PyTorch |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        dice = f"{r['dice']:.4f}" if r.get("dice") is not None else "—"
        speed = f"{r['speedup_vs_torch']:.1f}x" if r.get("speedup_vs_torch") else "—"
        lines.append(
            f"| {r['config']} | {r['ms_per_tile']:.1f} | {r['mpix_per_s']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {dice} | {speed} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the per-configuration subprocess."""
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    print(json.dumps(run_config(a.config, a.model, a.tile, a.repeats, a.threads)))


if __name__ == "__main__":
    main()


def bench_pipeline(path, region, engine, repeats: int = 5, progress=None, coarse_engine=None) -> dict:
    """The engine alone against the whole pipeline, on the same tiles of the same region,
    `repeats` times each (medians, and every run's ratio). The slide is opened afresh for each
    pipeline run, as a pathologist opens it, so no run reads from the last one's caches. With
    `coarse_engine`, the region also runs coarse to fine (`adaptive`: the share of tissue tiles
    run at full resolution, each pass's time, Dice against the exhaustive outline)."""
    from app.core.slide import Slide
    from app.core.tissue import tissue_mask
    from app.inference.engine import predict_stream
    from app.inference.pipeline import DelineationRun, split_background
    from app.inference.tile_reader import TileReader

    tile = engine.card.tile
    engine.predict(np.zeros((1, tile, tile, 3), np.uint8))  # compile/warm-up outside the timings
    pipeline_runs, engine_runs, first_tiles = [], [], []
    sequential_runs, streamed_runs = [], []
    tiles = result = None
    for _ in range(max(1, repeats)):
        with Slide.open(path) as slide:
            tissue = tissue_mask(slide)  # the window computes it when the slide opens
            t0 = time.perf_counter()
            result = DelineationRun(slide, region, engine, tissue=tissue).execute()
            pipeline_runs.append(time.perf_counter() - t0)
            first_tiles.append(result.first_tile_s)
            if tiles is None:
                ran, _ = split_background(result.plan, tissue)
                reader = TileReader(slide, result.plan, 1, 1)
                tiles = [reader.read(t) for t in ran]
                reader.close()
        # The engine alone, tiles already in memory, at its best of one tile at a time and its
        # stream (several in flight): the pipeline is measured against the faster of the two.
        t1 = time.perf_counter()
        for rgb in tiles:
            engine.predict(rgb[None])
        sequential_runs.append(time.perf_counter() - t1)
        t2 = time.perf_counter()
        for _ in predict_stream(engine, enumerate(tiles)):
            pass
        streamed_runs.append(time.perf_counter() - t2)
        engine_runs.append(min(sequential_runs[-1], streamed_runs[-1]))
        if progress:
            n, p_s, e_s = len(pipeline_runs), pipeline_runs[-1], engine_runs[-1]
            progress(f"run {n}: pipeline {p_s:.2f} s, engine alone {e_s:.2f} s")
    pipeline_s, engine_s = statistics.median(pipeline_runs), statistics.median(engine_runs)
    plan = result.plan
    mpix = len(tiles) * tile * tile / 1e6
    firsts = [f for f in first_tiles if f is not None]
    out = {
        "engine": engine.name,
        "tiles": len(tiles),
        "tiles_skipped": result.tiles_skipped,
        "tile": tile,
        "read_level": plan.choice.level,
        "read_reduction": plan.choice.reduction,
        "resampled": plan.choice.resampled,
        "repeats": len(pipeline_runs),
        "engine_mpix_per_s": round(mpix / engine_s, 3),
        "pipeline_mpix_per_s": round(mpix / pipeline_s, 3),
        "pipeline_vs_engine": round(engine_s / pipeline_s, 3),
        "pipeline_vs_engine_runs": [round(e / p, 3) for e, p in zip(engine_runs, pipeline_runs, strict=True)],
        "first_tile_s": round(statistics.median(firsts), 3) if firsts else None,
        "pipeline_s": round(pipeline_s, 3),
        "engine_s": round(engine_s, 3),
        "engine_sequential_s": round(statistics.median(sequential_runs), 3),
        "engine_streamed_s": round(statistics.median(streamed_runs), 3),
        "polygons": len(result.polygons),
        "cpu": cpu_name(),
        "threads": os.cpu_count(),
    }
    if progress:
        progress(f"engine {out['engine_mpix_per_s']} MPix/s, pipeline {out['pipeline_mpix_per_s']} MPix/s")
    if coarse_engine is not None:
        out["adaptive"] = _adaptive_runs(path, region, engine, coarse_engine, repeats, result, pipeline_s)
        if progress:
            progress(f"adaptive: {out['adaptive']}")
    return out


def _adaptive_runs(
    path, region, engine, coarse_engine, repeats: int, exhaustive, exhaustive_s: float
) -> dict:
    """The same region coarse to fine, `repeats` times (medians)."""
    import shapely

    from app.core.slide import Slide
    from app.core.tissue import tissue_mask
    from app.inference.pipeline import DelineationRun, RunSettings

    t = coarse_engine.card.tile
    coarse_engine.predict(np.zeros((1, t, t, 3), np.uint8))
    runs, coarse_s, fine_s, result = [], [], [], None
    for _ in range(max(1, repeats)):
        with Slide.open(path) as slide:
            tissue = tissue_mask(slide)
            t0 = time.perf_counter()
            result = DelineationRun(
                slide, region, engine, RunSettings(adaptive=True), tissue=tissue, coarse_engine=coarse_engine
            ).execute()
            runs.append(time.perf_counter() - t0)
            coarse_s.append(result.coarse_s)
            fine_s.append(result.fine_s)
    a, e = shapely.union_all(result.polygons), shapely.union_all(exhaustive.polygons)
    both = a.area + e.area
    seconds = statistics.median(runs)
    return {
        "coarse_model": f"{coarse_engine.card.name} ({coarse_engine.name})",
        "seconds": round(seconds, 3),
        "speedup": round(exhaustive_s / seconds, 2),
        "coarse_tiles": result.coarse_tiles,
        "tiles_full_resolution": result.tiles_done,
        "full_resolution_share": round(result.full_resolution_share, 3),
        "coarse_pass_s": round(statistics.median(coarse_s), 3),
        "fine_pass_s": round(statistics.median(fine_s), 3),
        "dice_vs_exhaustive": round(2 * a.intersection(e).area / both, 4) if both else 1.0,
    }


def bench_accuracy(
    data: str | Path,
    engine,
    split: str = "val",
    out_dir: str | Path | None = None,
    upscale: int = 4,
    limit: int | None = None,
    progress=None,
) -> dict:
    """Whole-slide Dice of the full pipeline on a mosaic slide of labelled tiles (see
    core.mosaic_slide): the outline against the ground truth, at the tiles' resolution."""
    import tempfile

    import shapely

    from app.core import resample
    from app.core.geometry import rasterize
    from app.core.mosaic_slide import build_mosaic_slide
    from app.core.slide import Slide
    from app.inference.pipeline import DelineationRun

    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory()
        out_dir = tmp.name
    card = engine.card
    mosaic = build_mosaic_slide(data, out_dir, split, tile_mpp=card.mpp, upscale=upscale, limit=limit)
    if progress:
        progress(
            f"mosaic slide: {mosaic.tiles} {split} tiles ({mosaic.tumour_tiles} adenocarcinoma) "
            f"at {mosaic.slide_mpp:g} µm/px -> {mosaic.slide}"
        )
    with Slide.open(mosaic.slide) as slide:
        w, h = slide.dimensions
        t0 = time.perf_counter()
        result = DelineationRun(slide, shapely.geometry.box(0, 0, w, h), engine).execute()
        seconds = time.perf_counter() - t0
    th, tw = mosaic.truth.shape
    scale = w / tw  # level-0 px per truth px
    tumour = tumour_class(card)  # the truth is adenocarcinoma: a multi-class model's Tumor class
    drawn = rasterize(shapely.union_all(result.outlines[tumour.name]), (th, tw), scale, (0.0, 0.0))
    # The blended probability itself, resampled to the truth grid, before vectorizing.
    plan = result.plan
    ox, oy = plan.model_to_level0(0, 0)
    f = plan.level0_per_model / scale  # truth px per model px
    x0, y0 = round(-ox / scale / f), round(-oy / scale / f)
    canvas = result.probability[tumour.channel].astype(np.float32)
    sub = canvas[y0 : y0 + round(th / f), x0 : x0 + round(tw / f)]
    prob = resample.bilinear(sub, (tw, th))

    out = {
        "engine": engine.name,
        "split": split,
        "tiles": mosaic.tiles,
        "tumour_tiles": mosaic.tumour_tiles,
        "slide_px": [w, h],
        "slide_mpp": mosaic.slide_mpp,
        "read_level": plan.choice.level,
        "read_reduction": plan.choice.reduction,
        "whole_slide_dice_outline": round(mask_dice(drawn, mosaic.truth), 4),
        "whole_slide_dice_probability": round(mask_dice(prob >= 0.5, mosaic.truth), 4),
        "polygons": len(result.polygons),
        "seconds": round(seconds, 1),
        "pipeline_mpix_per_s": round(result.mpix_per_s, 3),
    }
    if tmp is not None:
        tmp.cleanup()
    return out


def bench_remote(
    url: str | None = None,
    token: str | None = None,
    model: str | None = None,
    tiles: int = 24,
    tile: int = 512,
    in_flight: int = 4,
    progress=None,
) -> dict:
    """The remote engine against the local engines on the same real tiles: per-tile latency one
    at a time (the round trip), and throughput with several tiles in flight (batched on the
    server). Without a URL a `delineo serve` is started on 127.0.0.1 for the run (loopback:
    on one machine the server and the client share its cores)."""
    from app.inference.engine import predict_stream
    from app.inference.engine_registry import create_engine
    from app.inference.remote import RemoteEngine

    say = progress or (lambda _: None)
    server = None
    if url is None:
        server = _start_local_server(model, token)
        url = server[1]
    try:
        base = benchmark_tile(max(tile, 1024))
        batch = np.stack(
            [base[0, y : y + tile, x : x + tile] for y, x in _offsets(base.shape[1], tile, tiles)]
        )
        remote = RemoteEngine(url, token, model, in_flight=in_flight)
        rows = {}
        engines = {
            "local onnxruntime-int8": create_engine("onnxruntime", model, "int8"),
            "local openvino-int8": create_engine("openvino", model, "int8"),
            f"remote ({url})": remote,
        }
        for name, engine in engines.items():
            say(f"{name}…")
            engine.predict(batch[:1])  # warm-up
            times = []
            for t in batch[: min(len(batch), 10)]:
                t0 = time.perf_counter()
                engine.predict(t[None])
                times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in predict_stream(engine, enumerate(batch)):
                pass
            seconds = time.perf_counter() - t0
            rows[name] = {
                "latency_ms_median": round(statistics.median(times) * 1000, 1),
                "latency_ms_max": round(max(times) * 1000, 1),
                "mpix_per_s": round(len(batch) * tile * tile / 1e6 / seconds, 3),
                "tiles_per_s": round(len(batch) / seconds, 2),
            }
        r = remote.client.get(f"{remote.model_url}/stats")  # Delineo's and Triton's servers have it
        batches = r.json().get("model_stats", [{}])[0].get("batch_stats", []) if r.status_code == 200 else []
        return {
            "tiles": len(batch),
            "tile": tile,
            "in_flight": in_flight,
            "server": "started on 127.0.0.1 for this run" if server else url,
            "engines": rows,
            "server_batch_sizes": {b["batch_size"]: b["compute_infer"]["count"] for b in batches},
            "cpu": cpu_name(),
            "threads": os.cpu_count(),
        }
    finally:
        if server is not None:
            server[0].terminate()
            server[0].wait(15)


def _offsets(side: int, tile: int, n: int) -> list[tuple[int, int]]:
    step = max(1, (side - tile) // 4)
    grid = [(y, x) for y in range(0, side - tile + 1, step) for x in range(0, side - tile + 1, step)]
    return [grid[i % len(grid)] for i in range(n)]


def _start_local_server(model: str | None, token: str | None):
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "app", "serve", "--port", str(port)]
    cmd += ["--model", model] if model else []
    cmd += ["--token", token] if token else []
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    from app.inference.engine import EngineError

    raise EngineError("delineo serve did not become ready within 120 s (is the [serve] extra installed?)")


def tumour_class(card):
    """The class the EBHI-Seg tumour truth is compared with: "Tumor", else the first outlined."""
    fg = card.scheme.foreground
    return next((c for c in fg if c.name == "Tumor"), fg[0])


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two bool masks (0 when both are empty)."""
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))
