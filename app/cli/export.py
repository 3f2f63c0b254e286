"""`delineo export`: saved annotations as QuPath GeoJSON, ASAP XML, a PNG, a TIFF mask or CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.cli.arguments import UsageError, add_engine_args, engine_from_args

EXPORT_FORMATS = ("geojson", "asap-xml", "png", "tiff-mask", "csv")


def add_to(sub) -> None:
    x = sub.add_parser("export", help="export annotations: QuPath GeoJSON, ASAP XML, PNG, TIFF mask, CSV")
    x.add_argument("slide")
    x.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    x.add_argument("--out", required=True)
    x.add_argument("--annotations", help="GeoJSON to export (default: the slide's saved annotations)")
    x.add_argument("--region", help="X,Y,W,H in level-0 pixels: clip to / picture this region")
    x.add_argument("--mpp", type=float, default=None, help="output µm/px for png and tiff-mask")
    x.add_argument(
        "--likelihood",
        action="store_true",
        help="with tiff-mask: also write <slide>_likelihood_map.tif (runs the model)",
    )
    add_engine_args(x)
    x.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from app.core import export
    from app.core.annotation_store import AnnotationStore
    from app.core.annotations import read_geojson
    from app.core.geometry import parse_rect
    from app.core.slide import Slide
    from app.logs import data_dir

    with Slide.open(args.slide) as slide:
        offset = tuple(slide.bounds[:2]) if slide.bounds else (0, 0)
        mpp = float(sum(slide.mpp) / 2) if slide.mpp else None
        saved_region = None
        if args.annotations:
            annotations, notes = read_geojson(args.annotations, offset)
            source = args.annotations
        else:
            store = AnnotationStore(slide.path, data_dir(), mpp, offset)
            found = store.existing()
            if found is None:
                raise UsageError(
                    f"{slide.path}: no saved annotations (looked for {store.path}); pass --annotations FILE"
                )
            state = store.load()
            annotations, notes, source = state.annotations, state.notes, found
            saved_region = state.region if not state.region.is_empty else None
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        rect = parse_rect(args.region) if args.region else None
        clipped = export.clip(annotations, rect)
        fmt = args.format
        if fmt == "geojson":
            export.export_geojson(args.out, clipped, mpp, offset)
        elif fmt == "asap-xml":
            export.export_asap_xml(args.out, clipped, offset)
        elif fmt == "csv":
            export.export_csv(args.out, clipped, mpp)
        elif fmt == "png":
            bounds = rect.bounds if rect is not None else None
            region = (bounds[0], bounds[1], bounds[2] - bounds[0], bounds[3] - bounds[1]) if bounds else None
            export.export_png(args.out, slide, annotations, region, args.mpp)
        elif fmt == "tiff-mask":
            export.export_tiff_mask(args.out, slide, clipped, args.mpp)
            if args.likelihood:
                _export_likelihood(args, slide, rect or saved_region, annotations)
        print(f"{fmt}: {len(clipped)} annotation(s) from {source} -> {args.out}", file=sys.stderr)
    return 0


def _export_likelihood(args: argparse.Namespace, slide, region, annotations) -> None:
    """Run the model over the region (or the annotations' extent) for its probability map,
    streamed to disk band by band."""
    import shapely

    from app.batch.slides import slide_stem
    from app.core.likelihood_map import RunLikelihood
    from app.inference.pipeline import DelineationRun, RunSettings

    if region is None:
        if not annotations:
            raise UsageError("--likelihood needs a region: pass --region or save a painted region")
        region = shapely.union_all([a.geometry for a in annotations]).envelope
    engine = engine_from_args(args)
    likelihood = RunLikelihood(
        slide.dimensions, engine.card.scheme, Path(args.out).parent, slide_stem(slide.path)
    )
    run = DelineationRun(slide, region, engine, RunSettings(keep_map=False), map_sink=likelihood.sink)
    try:
        likelihood.prepare(run.plan())
        result = run.execute()
        paths = likelihood.write(float(sum(slide.mpp) / 2) if slide.mpp else None)
    finally:
        likelihood.close()
    for name, path in paths.items():
        print(f"likelihood map of {name} ({result.tiles_done} tiles) -> {path}", file=sys.stderr)
