"""`delineo batch`: many slides on Dask, one GeoJSON each plus summary.csv; resumable."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from app.cli.arguments import UsageError, add_engine_choice

log = logging.getLogger(__name__)


def add_to(sub) -> None:
    b = sub.add_parser(
        "batch",
        help="delineate many slides (files or folders) on Dask; one GeoJSON each and summary.csv",
    )
    b.add_argument("slides", nargs="+", metavar="SLIDE_OR_FOLDER")
    b.add_argument(
        "--out", required=True, help="folder for <slide>.geojson and summary.csv (made if missing)"
    )
    b.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local cluster: worker processes (default: a worker per 4 cores)",
    )
    b.add_argument("--scheduler", default=None, help="an existing Dask cluster, e.g. tcp://HOST:8786")
    where = b.add_mutually_exclusive_group()
    where.add_argument(
        "--whole-slide", action="store_true", help="every tissue region on each slide (the default)"
    )
    where.add_argument("--region-geojson-dir", metavar="D", help="the region of slide S is D/S.geojson")
    b.add_argument(
        "--exhaustive",
        action="store_true",
        help="whole slides: run every tissue tile at full resolution (default: the model's coarse "
        "model first, full resolution only where it finds or may miss tumour)",
    )
    b.add_argument(
        "--likelihood",
        action="store_true",
        help="also DIR/<slide>_likelihood_map.tif per slide (ASAP's overlay; streamed to disk)",
    )
    b.add_argument(
        "--redo",
        action="store_true",
        help="run every slide again, ignoring the results of earlier runs in --out (needed to change "
        "the settings of a folder that has results)",
    )
    add_engine_choice(b)
    b.add_argument("--model", default=None, help="shipped model name or folder with card.json")
    b.add_argument("--device", default="CPU", help="local engines: CPU, GPU or AUTO")
    b.add_argument("--url", default=None, help="remote engine: the endpoint, e.g. http://npu-host:8080")
    b.add_argument("--token", default=None, help="remote engine: bearer token (or $DELINEO_TOKEN)")
    b.add_argument(
        "--threads", type=int, default=0, help="inference threads per worker (0: the cores shared out)"
    )
    b.add_argument("--mpp", type=float, default=None, help="µm/px, for slides that record none")
    b.add_argument("--threshold", type=float, default=None, help="sensitivity (default: the model card's)")
    b.add_argument(
        "--min-area", type=float, default=1000.0, metavar="UM2", help="drop parts smaller than this"
    )
    b.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from app.batch.cluster import ClusterChoice, connect, default_workers, run_jobs
    from app.batch.run_settings import check_resumable, save_settings
    from app.batch.slides import find_slides, slide_stem
    from app.batch.summary import Summary
    from app.batch.task import SlideJob
    from app.core.file_locks import remove_if_stale
    from app.inference.engine_registry import engine_spec

    check_args(args)
    out = Path(args.out).expanduser().resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot make the folder ({e.strerror or e})") from None
    for tmp in out.glob(".*.tmp"):  # left by a batch killed mid-write; a live writer holds its lock
        remove_if_stale(tmp)
    slides = find_slides(args.slides)
    summary = Summary(out)
    workers = args.workers or default_workers()
    spec, card = engine_spec_from_args(args, workers)
    regions = Path(args.region_geojson_dir).expanduser().resolve() if args.region_geojson_dir else None
    settings = outline_settings_from_args(args, spec, card, regions)
    if args.redo:
        summary.clear()
    else:
        check_resumable(out, settings, summary.has_results())
    jobs: list[SlideJob] = []
    done_before = 0
    for s in slides:
        name = f"{slide_stem(s)}.geojson"
        if summary.is_done(name):
            done_before += 1
            continue
        jobs.append(
            SlideJob(
                slide=str(s),
                out=str(out / name),
                engine=spec,
                region_geojson=str(regions / name) if regions else None,
                threshold=args.threshold,
                min_area_um2=args.min_area,
                mpp=args.mpp,
                adaptive=not args.exhaustive,
                likelihood=args.likelihood,
            )
        )
    where = f"Dask scheduler {args.scheduler}" if args.scheduler else f"{workers} local worker(s)"
    say(
        f"batch: {len(slides)} slide(s); {done_before} done in an earlier run (skipped), "
        f"{len(jobs)} to run on {where}"
    )
    if not jobs:
        say(f"batch: nothing to do; summary in {summary.path}")
        return 0
    save_settings(out, settings)
    if args.redo:
        summary.write()  # the earlier rows are gone before the first slide is done
    t0 = time.perf_counter()
    counts = {"ok": 0, "failed": 0, "skipped": 0}

    def on_result(job, result) -> None:
        summary.record(result)
        counts[result.status] += 1
        n = sum(counts.values())
        what = f"{result.tiles_run} tiles, {result.seconds:.1f} s" if result.status == "ok" else result.error
        elapsed = time.perf_counter() - t0
        left = elapsed / n * (len(jobs) - n)
        say(
            f"[{n}/{len(jobs)}] {Path(job.slide).name}: {result.status}: {what} "
            f"(batch {elapsed:.0f} s, about {left:.0f} s left)"
        )

    def on_progress(msg: dict) -> None:
        done, total = msg.get("done", 0), max(1, msg.get("total", 1))
        say(f"  {msg.get('slide')}: {done}/{total} tiles ({done / total:.0%})")

    with connect(ClusterChoice(args.scheduler, workers)) as client:
        if args.scheduler and engine_spec(spec.engine).local:  # the workers' devices, not this machine's
            check_device_on_workers(client, spec)
        run_jobs(client, jobs, on_result, on_progress)
    say(
        f"batch: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped in "
        f"{time.perf_counter() - t0:.1f} s; {done_before} done before -> {summary.path}"
    )
    if counts["failed"]:
        say("batch: run the same command again to retry the failed slides (finished ones are skipped)")
        return 1
    return 0


def check_args(args: argparse.Namespace) -> None:
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: give 1 or more worker processes")
    if args.workers is not None and args.scheduler:
        raise UsageError("--workers is for the local cluster; an existing --scheduler has its own workers")
    if args.threshold is not None and not 0 < args.threshold <= 1:
        raise UsageError(
            f"--threshold {args.threshold:g}: give a probability above 0 and at most 1, e.g. 0.5"
        )
    if args.min_area < 0:
        raise UsageError(f"--min-area {args.min_area:g}: give an area of 0 µm² or more, e.g. 1000")
    if args.region_geojson_dir and not Path(args.region_geojson_dir).expanduser().is_dir():
        raise UsageError(f"--region-geojson-dir {args.region_geojson_dir}: no such folder")


def engine_spec_from_args(args: argparse.Namespace, workers: int):
    """The engine every worker builds, checked here first (a bad model or a missing --url would
    otherwise fail every slide, one by one, on the workers)."""
    from app.batch.cluster import engine_threads
    from app.batch.task import EngineSpec
    from app.inference.engine_registry import engine_spec
    from app.inference.modelcard import ModelCard

    local = engine_spec(args.engine).local
    if not local and not args.url:
        raise UsageError(f"--engine {args.engine} needs --url (the endpoint, e.g. http://npu-host:8080)")
    if args.url and local:
        raise UsageError(f"--url is for --engine remote, not {args.engine}")
    model = args.model
    card = None
    if local:
        card = ModelCard.load(model)  # a missing or damaged model: one line, before any worker starts
        if model and Path(model).expanduser().is_dir():
            model = str(Path(model).expanduser().resolve())
        if not args.scheduler:  # a cluster's workers are asked once it is connected
            from app.batch.devices import available_devices

            check_device(args.engine, args.device.upper(), available_devices(args.engine), "here")
    threads = args.threads or (0 if args.scheduler else engine_threads(workers))
    return EngineSpec(
        engine=args.engine,
        model=model,
        precision=args.precision.lower() if args.precision else None,
        device=args.device.upper(),
        threads=threads,
        url=args.url,
        token=args.token or os.environ.get("DELINEO_TOKEN"),
    ), card


def check_device(engine: str, device: str, available: list[str], where: str) -> None:
    """A --device the engine does not have is refused once, naming what it has (the engine's own
    check would fail every slide with it)."""
    from app.batch.devices import accepts
    from app.inference.engine_registry import engine_spec

    if not accepts(engine, device, available):
        name = engine_spec(engine).display_name
        choices = " or ".join(f"--device {d}" for d in available)
        raise UsageError(
            f"--device {device}: {name} has no such device {where} (available: {', '.join(available)}); "
            f"pass {choices}"
        )


def check_device_on_workers(client, spec) -> None:
    from app.batch.devices import available_devices

    try:
        by_worker = client.run(available_devices, spec.engine)
    except Exception:  # a worker that cannot answer says why on its first slide
        log.debug("batch: the workers' devices could not be asked", exc_info=True)
        return
    for worker, available in sorted(by_worker.items()):
        check_device(spec.engine, spec.device, available, f"on Dask worker {worker}")


def outline_settings_from_args(args: argparse.Namespace, spec, card, regions: Path | None) -> dict:
    """What shapes the outlines, resolved where it can be (the model's name, version and the
    precision it runs), so that naming the default explicitly is the same setting."""
    from app.batch.run_settings import outline_settings
    from app.inference.engine_registry import engine_spec, preferred_precision

    precision = spec.precision
    if card is not None and precision is None:
        precision = preferred_precision(engine_spec(spec.engine), card)
    return outline_settings(
        engine=spec.engine,
        model=card.name if card is not None else spec.model,
        model_version=card.version if card is not None else None,
        precision=precision,
        threshold=args.threshold,
        min_area_um2=args.min_area,
        mpp=args.mpp,
        region_dir=regions,
        exhaustive=args.exhaustive or regions is not None,  # a region runs every tile
        likelihood=args.likelihood,
    )


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
