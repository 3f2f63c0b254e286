"""What several commands share: the one-line usage error, and the region and engine options."""

from __future__ import annotations

import argparse
import os
import sys

from app.errors import DelineoError


class UsageError(Exception):
    """Bad arguments or input: reported as one line on stderr, exit status 2."""


class Parser(argparse.ArgumentParser):
    """Argument errors as one line (exit 2), like every other CLI error."""

    def error(self, message: str):
        self.exit(2, f"delineo: error: {message} (see delineo {self.prog.split()[-1]} --help)\n")


def add_region_args(p: argparse.ArgumentParser, whole_slide: bool = False) -> None:
    p.add_argument("--region", help="X,Y,W,H in level-0 pixels")
    p.add_argument("--region-geojson", help="GeoJSON file whose polygons form the region")
    if whole_slide:
        p.add_argument(
            "--whole-slide", action="store_true", help="every tissue region found on the slide's thumbnail"
        )
        p.add_argument(
            "--exhaustive",
            action="store_true",
            help="--whole-slide: run every tissue tile at full resolution (default: the model's coarse "
            "model first, full resolution only where it finds or may miss tumour)",
        )


def add_engine_choice(p: argparse.ArgumentParser, local_only: bool = False) -> None:
    """`--engine` and `--precision`, their choices read from the engine registry."""
    from app.inference.engine_registry import DEFAULT_ENGINE, all_precisions, engine_keys

    p.add_argument("--engine", choices=engine_keys(local_only), default=DEFAULT_ENGINE)
    p.add_argument(
        "--precision",
        choices=all_precisions(),
        default=None,
        help="default: INT8, else FP16, else FP32, whichever the model has",
    )


def add_engine_args(p: argparse.ArgumentParser) -> None:
    from app.inference.engine_registry import all_devices

    add_engine_choice(p)
    devices = all_devices()
    p.add_argument("--device", choices=[*devices, *(d.lower() for d in devices)], default="CPU")
    p.add_argument("--url", default=None, help="remote engine: the endpoint, e.g. http://npu-host:8080")
    p.add_argument("--token", default=None, help="remote engine: bearer token (or $DELINEO_TOKEN)")
    p.add_argument("--model", default=None, help="shipped model name or folder with card.json")
    p.add_argument("--threads", type=int, default=0, help="inference threads (0: all cores)")


def region_from_args(args: argparse.Namespace, slide):
    """The region to run on, validated and clipped to the slide (a note on stderr when clipped)."""
    from app.core.annotations import read_document
    from app.core.geometry import parse_rect, polygonal, region_within_slide

    whole_slide = getattr(args, "whole_slide", False)
    if bool(args.region) + bool(args.region_geojson) + bool(whole_slide) != 1:
        raise UsageError(
            "give exactly one of --region X,Y,W,H or --region-geojson FILE"
            + (" or --whole-slide" if hasattr(args, "whole_slide") else "")
        )
    if whole_slide:
        return whole_slide_region(args, slide)[0]
    if args.region:
        region, what = parse_rect(args.region), f"--region {args.region}"
    else:
        offset = tuple(slide.bounds[:2]) if slide.bounds else (0, 0)
        doc = read_document(args.region_geojson, offset)  # a Delineo autosave's painted region counts too
        geoms = [a.geometry for a in doc.annotations] + ([] if doc.region.is_empty else [doc.region])
        if not geoms:
            raise UsageError(f"{args.region_geojson}: no polygon to use as the region")
        import shapely

        region = polygonal(shapely.union_all(geoms))
        what = f"--region-geojson {args.region_geojson}"
    region, note = region_within_slide(region, slide.dimensions, what)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return region


def whole_slide_region(args: argparse.Namespace, slide):
    """(region, tissue mask) of a --whole-slide run: the tissue's parts on the thumbnail; the
    mask goes to the run too, so the thumbnail is read once."""
    from app.core.tissue import tissue_mask, tissue_regions

    tissue = tissue_mask(slide)
    return tissue_regions(slide, tissue, mpp=getattr(args, "mpp", None)), tissue


def coarse_engine_from_args(args: argparse.Namespace, engine):
    """The engine of the coarse model an adaptive whole-slide run starts with, or None for an
    exhaustive run: a region given by hand, or --exhaustive (see `coarse_engine_for`)."""
    if not getattr(args, "whole_slide", False) or getattr(args, "exhaustive", False):
        return None
    return coarse_engine_for(args, engine)


def coarse_engine_for(args: argparse.Namespace, engine):
    """The coarse model's engine on the same engine kind and device, or None: a remote engine,
    or a model whose card names no installed coarse model."""
    from app.inference.engine_registry import create_engine, engine_spec
    from app.inference.modelcard import ModelCard, ModelCardError
    from app.inference.refinement import coarse_mismatch

    name = engine.card.coarse_model
    if name is None or not engine_spec(args.engine).local:
        return None
    try:
        card = ModelCard.load(name)
    except ModelCardError as e:
        print(f"note: {e}; running every tissue tile at full resolution", file=sys.stderr)
        return None
    problem = coarse_mismatch(engine.card, card)
    if problem:
        print(f"note: {problem}; running every tissue tile at full resolution", file=sys.stderr)
        return None
    threads = getattr(args, "threads", 0) or 0
    try:
        return create_engine(args.engine, card, None, args.device.upper(), threads=threads)
    except DelineoError as e:  # a damaged coarse model slows the run down, it does not stop it
        print(f"note: coarse model {name}: {e}; every tissue tile runs at full resolution", file=sys.stderr)
        return None


def engine_from_args(args: argparse.Namespace):
    from app.inference.engine_registry import create_engine, engine_spec

    url = getattr(args, "url", None)
    local = engine_spec(args.engine).local
    if not local and not url:
        raise UsageError(f"--engine {args.engine} needs --url (the endpoint, e.g. http://npu-host:8080)")
    if url and local:
        raise UsageError(f"--url is for --engine remote, not {args.engine}")
    if not local:
        token = getattr(args, "token", None) or os.environ.get("DELINEO_TOKEN")
        return create_engine(args.engine, args.model, url=url, token=token)
    return create_engine(
        args.engine,
        args.model,
        args.precision.lower() if args.precision else None,
        args.device.upper(),
        threads=getattr(args, "threads", 0) or 0,
    )
