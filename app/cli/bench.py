"""`delineo bench`: speed and accuracy, measured by the project's own commands."""

from __future__ import annotations

import argparse
import json
import os

from app.cli.arguments import (
    UsageError,
    add_engine_choice,
    add_region_args,
    engine_from_args,
    region_from_args,
)
from app.cli.progress import format_dict, stderr_progress


def add_to(sub) -> None:
    b = sub.add_parser("bench", help="measure speed: model runtimes, the pipeline, the viewer")
    b.add_argument(
        "what",
        choices=[
            "model",
            "pipeline",
            "accuracy",
            "adaptive",
            "memory",
            "slide",
            "remote",
            "review",
            "review-gui",
            "serve-load",
            "batch",
        ],
    )
    b.add_argument("target", nargs="?", help="bench slide: a slide (default: a generated 20000² pyramid)")
    b.add_argument(
        "more_slides", nargs="*", metavar="SLIDE", help="bench batch: the slides (repeats allowed)"
    )
    b.add_argument("--workers", type=int, default=None, help="bench batch: local workers (default: batch's)")
    add_region_args(b)
    b.add_argument(
        "--whole-slide",
        action="store_true",
        help="bench memory: delineate --whole-slide (the tissue, the coarse model first) instead of a region",
    )
    b.add_argument(
        "--likelihood",
        action="store_true",
        help="bench memory: also stream the likelihood map to a TIFF (delineate --likelihood)",
    )
    add_engine_choice(b, local_only=True)
    b.add_argument("--device", default="CPU")
    b.add_argument("--mpp", type=float, default=None)
    b.add_argument("--model", default=None)
    b.add_argument("--tile", type=int, default=512)
    b.add_argument(
        "--repeats", type=int, default=None, help="model: 20 timings; pipeline: 5 runs; adaptive: 3"
    )
    b.add_argument("--threads", type=int, default=0, help="0: all cores")
    b.add_argument("--configs", default=None, help="comma-separated subset of configurations")
    b.add_argument(
        "--data",
        default=None,
        help="bench accuracy, adaptive: EBHI-Seg folder or manifest (default: $DELINEO_DATA); "
        "bench review: EBHI-Seg tiles (default: the bundled ones)",
    )
    b.add_argument("--split", default="val", help="bench accuracy: which split's tiles")
    b.add_argument("--url", default=None, help="bench remote: the endpoint (default: start one on 127.0.0.1)")
    b.add_argument("--token", default=None, help="bench remote: bearer token")
    b.add_argument("--in-flight", type=int, default=4, help="bench remote: tiles in flight at once")
    b.add_argument("--requests", type=int, default=200, help="bench serve-load: requests per level")
    b.add_argument("--levels", default="1,4,16", help="bench serve-load: concurrent clients, comma-separated")
    b.add_argument(
        "--adaptive",
        action="store_true",
        help="bench pipeline: also run the region coarse to fine (the model's coarse model first)",
    )
    b.add_argument("--json", action="store_true")
    b.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    progress = None if args.json else stderr_progress
    if args.what == "model":
        from app.inference import benchmark

        rows = benchmark.bench_model(
            model=args.model,
            tile=args.tile,
            repeats=args.repeats or 20,
            threads=args.threads,
            configs=args.configs.split(",") if args.configs else None,
            progress=progress,
        )
        print(json.dumps(rows, indent=2) if args.json else benchmark.format_model_table(rows))
        return 0
    if args.what == "pipeline":
        from app.core.slide import Slide
        from app.inference.benchmark import bench_pipeline

        if not args.target:
            raise UsageError("bench pipeline: give a SLIDE and --region X,Y,W,H")
        with Slide.open(args.target) as slide:
            region = region_from_args(args, slide)
        engine = engine_from_args(args)
        coarse = None
        if args.adaptive:
            from app.cli.arguments import coarse_engine_for

            coarse = coarse_engine_for(args, engine)
            if coarse is None:
                name = engine.card.name
                raise UsageError(f"bench pipeline --adaptive: {name} names no usable coarse model")
        result = bench_pipeline(
            args.target, region, engine, repeats=args.repeats or 5, progress=progress, coarse_engine=coarse
        )
    elif args.what == "accuracy":
        from app.core.dataset import data_folder
        from app.inference.benchmark import bench_accuracy

        data = data_folder(args.data)
        result = bench_accuracy(data, engine_from_args(args), split=args.split, progress=progress)
    elif args.what == "adaptive":
        from app.cli.arguments import coarse_engine_for
        from app.core.dataset import data_folder
        from app.inference.whole_slide_benchmark import bench_adaptive

        data = data_folder(args.data)
        engine = engine_from_args(args)
        coarse = coarse_engine_for(args, engine)
        result = bench_adaptive(
            data, engine, split=args.split, progress=progress, coarse_engine=coarse, repeats=args.repeats or 3
        )
    elif args.what == "memory":
        from app.inference.whole_slide_benchmark import bench_memory

        result = bench_memory(progress=progress, whole_slide=args.whole_slide, likelihood=args.likelihood)
    elif args.what == "remote":
        from app.inference.benchmark import bench_remote

        token = args.token or os.environ.get("DELINEO_TOKEN")
        result = bench_remote(args.url, token, args.model, in_flight=args.in_flight, progress=progress)
    elif args.what == "review-gui":
        from app.ui.review_benchmark import bench_review_gui

        result = bench_review_gui(progress=progress)
    elif args.what == "review":
        from app.inference.review_benchmark import bench_review

        result = bench_review(engine_from_args(args), args.data, progress=progress)
        print(json.dumps(result, indent=2))
        return 0
    elif args.what == "serve-load":
        from app.serve.load_test import bench_serve_load

        try:
            levels = tuple(int(x) for x in args.levels.split(","))
        except ValueError:
            raise UsageError(f"--levels {args.levels}: give whole numbers, e.g. 1,4,16") from None
        if not levels or min(levels) < 1 or max(levels) > 64 or not 1 <= args.requests <= 5000:
            raise UsageError("bench serve-load: --levels 1..64 clients each, --requests 1..5000")
        result = bench_serve_load(args.requests, levels, progress=progress)
    elif args.what == "batch":
        from app.batch.benchmark import bench_batch

        slides = [args.target, *args.more_slides] if args.target else []
        if len(slides) < 2:
            raise UsageError("bench batch: give two or more slides (the same one several times is fine)")
        engine = ("--engine", args.engine, *(("--precision", args.precision) if args.precision else ()))
        result = bench_batch(slides, args.workers, engine, repeats=args.repeats or 1, progress=progress)
    elif args.what == "slide":
        from app.ui.viewer_benchmark import bench_slide

        result = bench_slide(args.target, progress=progress)
    else:
        raise UsageError(f"bench: unknown target '{args.what}'")
    print(json.dumps(result, indent=2) if args.json else format_dict(result))
    return 0
