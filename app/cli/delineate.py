"""`delineo delineate`: the model's outline of a region, as QuPath GeoJSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.cli.arguments import (
    UsageError,
    add_engine_args,
    add_region_args,
    coarse_engine_from_args,
    engine_from_args,
    region_from_args,
    whole_slide_region,
)
from app.cli.progress import StderrProgress
from app.errors import DelineoError


def add_to(sub) -> None:
    d = sub.add_parser("delineate", help="delineate tumour in a region; writes QuPath GeoJSON")
    d.add_argument("slide")
    add_region_args(d, whole_slide=True)
    d.add_argument("--out", required=True, help="output .geojson")
    add_engine_args(d)
    d.add_argument("--mpp", type=float, default=None, help="slide µm/px, for slides that record none")
    d.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="sensitivity: probability at or above which a pixel is tumour (default: the model card's)",
    )
    d.add_argument(
        "--min-area", type=float, default=1000.0, metavar="UM2", help="drop parts smaller than this (µm²)"
    )
    d.add_argument(
        "--likelihood",
        action="store_true",
        help="also write <slide>_likelihood_map.tif beside --out (ASAP's overlay; streamed to disk)",
    )
    d.set_defaults(run=run)


def check_output(out: Path) -> None:
    """Before a run that may take minutes: the output folder exists and takes a file (tried)."""
    from app.core.annotation_store import folder_is_writable

    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; give a file name, e.g. {out / 'tumour.geojson'}")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist")
    if not folder_is_writable(out.parent):
        raise UsageError(f"--out {out}: folder {out.parent} is not writable; choose another folder")


def recovery_path(out: Path) -> Path:
    """Where a result that could not be written to --out is kept: the per-user data folder."""
    import time

    from app.logs import data_dir

    folder = data_dir() / "recovered"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{out.name}"


def run(args: argparse.Namespace) -> int:
    from app.core.slide import Slide
    from app.inference.pipeline import DelineationRun, RunSettings

    out = Path(args.out)
    if args.threshold is not None and not 0 < args.threshold <= 1:
        raise UsageError(
            f"--threshold {args.threshold:g}: give a probability above 0 and at most 1, e.g. 0.5"
        )
    if args.min_area < 0:
        raise UsageError(f"--min-area {args.min_area:g}: give an area of 0 µm² or more, e.g. 1000")
    check_output(out)
    if getattr(args, "exhaustive", False) and not args.whole_slide:
        print(
            "note: --exhaustive changes only --whole-slide runs; a region always runs every tile at "
            "full resolution",
            file=sys.stderr,
        )
    with Slide.open(args.slide) as slide:
        for note in slide.notes:
            print(f"note: {note}", file=sys.stderr)
        if args.whole_slide and not (args.region or args.region_geojson):
            region, tissue = whole_slide_region(args, slide)
        else:
            region, tissue = region_from_args(args, slide), None
        engine = engine_from_args(args)
        coarse = coarse_engine_from_args(args, engine)
        bar = StderrProgress()
        # Band by band: the outline is all the command keeps, so memory follows the region's width.
        settings = RunSettings(
            threshold=args.threshold,
            min_area_um2=args.min_area,
            slide_mpp=args.mpp,
            keep_map=False,
            adaptive=coarse is not None,
        )
        likelihood = None
        if args.likelihood:
            from app.batch.slides import slide_stem
            from app.core.likelihood_map import RunLikelihood

            likelihood = RunLikelihood(
                slide.dimensions, engine.card.scheme, out.parent, slide_stem(slide.path)
            )
        run = DelineationRun(
            slide,
            region,
            engine,
            settings,
            tissue=tissue,
            coarse_engine=coarse,
            map_sink=likelihood.sink if likelihood else None,
        )
        mpp = args.mpp or (sum(slide.mpp) / 2 if slide.mpp else None)
        try:
            if likelihood:
                likelihood.prepare(run.plan())  # a map the disk cannot take: refused before the run
            result = run.execute(on_tile=lambda ev: bar.update(ev.done, ev.total, ev.elapsed_s))
            bar.close()
            for note in result.notes:
                print(f"note: {note}", file=sys.stderr)
            write_outline(out, result, mpp, slide)
            if likelihood:  # after the outline: a map that cannot be written loses no outline
                try:
                    written = likelihood.write(mpp)
                except DelineoError as e:
                    raise UsageError(f"{e}; the outline was written to {out}") from None
                for name, path in written.items():
                    print(f"likelihood map of {name} -> {path}", file=sys.stderr)
        finally:
            if likelihood:
                likelihood.close()
    if result.engine_error:
        print(
            f"delineo: error: {result.engine_error}. {result.tiles_done} of {result.tiles_total} tiles were "
            f"finished and their outline is in {out}; {len(result.pending)} tile(s) were not run. Run again "
            "with --engine openvino to delineate the whole region on this computer.",
            file=sys.stderr,
        )
        return 1
    glass = result.tiles_skipped - result.refine_skipped
    if coarse is not None:
        done = (
            f"coarse first: {result.coarse_tiles} tile(s) of {coarse.card.name}; then {result.tiles_done} "
            f"tiles at full resolution, {result.refine_skipped} keeping the coarse answer, {glass} skipped "
            "as background"
        )
    else:
        done = f"{result.tiles_done} tiles done, {glass} skipped as background"
    rate = "" if coarse is not None else f", {result.mpix_per_s:.2f} MPix/s at model resolution"
    print(
        f"{done}, {result.tiles_failed} unreadable; {describe_outlines(result.outlines)} -> {out}; "
        f"{result.seconds:.1f} s{rate}",
        file=sys.stderr,
    )
    return 0


def write_outline(out: Path, result, mpp: float | None, slide) -> None:
    """The run's GeoJSON at --out; where it cannot be written, in the data folder, saying so."""
    from app.core.annotations import write_geojson

    annotations = result.annotations()
    offset = tuple(slide.bounds[:2]) if slide.bounds else (0, 0)
    try:
        write_geojson(out, annotations, mpp, offset)
    except OSError as e:  # the folder went away or filled up during the run: keep the result
        recovery = recovery_path(out)
        write_geojson(recovery, annotations, mpp, offset)
        raise UsageError(
            f"--out {out}: could not be written at the end of the run ({e.strerror or e}); "
            f"the result is kept in {recovery}"
        ) from None


def describe_outlines(outlines: dict) -> str:
    """ "3 Tumor polygon(s)", or per class for a multi-class model."""
    return (
        ", ".join(f"{len(polygons)} {name} polygon(s)" for name, polygons in outlines.items()) or "no classes"
    )
