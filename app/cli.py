"""The `delineo` command. With no sub-command (or just a path) it opens the viewer.

Sub-commands import what they need lazily, so `delineo info` starts in a fraction of a second
and never loads Qt, torch or a runtime it does not use.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from app import __version__

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}
EXPORT_FORMATS = ("geojson", "asap-xml", "png", "tiff-mask", "csv")


class UsageError(Exception):
    """Bad arguments or input: reported as one line on stderr, exit status 2."""


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn

    return register


# --------------------------------------------------------------------------- gui


@command("gui")
def cmd_gui(args: argparse.Namespace) -> int:
    from app.ui.application import run_gui

    return run_gui(args.slide)


# --------------------------------------------------------------------------- info


@command("info")
def cmd_info(args: argparse.Namespace) -> int:
    from app.core.slide import Slide

    with Slide.open(args.slide) as slide:
        info = slide.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    mpp = info["mpp"]
    rows = [
        ("path", info["path"]),
        ("vendor", info["vendor"] or "unknown"),
        ("dimensions", "{} x {} px".format(*info["dimensions"])),
        ("mpp", f"{mpp[0]:.4f} x {mpp[1]:.4f} µm/px" if mpp else "not recorded (scale in pixels)"),
        ("objective", f"{info['objective_power']:g}x" if info["objective_power"] else "not recorded"),
        ("bounds", "x={} y={} w={} h={}".format(*info["bounds"]) if info["bounds"] else "none"),
        ("associated images", ", ".join(info["associated_images"]) or "none"),
        ("levels", str(info["level_count"])),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for i, ((w, h), ds) in enumerate(zip(info["level_dimensions"], info["level_downsamples"], strict=True)):
        print(f"{'':<{width}}  level {i}: {w} x {h}  (downsample {ds:g})")
    return 0


# --------------------------------------------------------------------------- train / convert


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    try:
        from app.model.train import TrainConfig, train
    except ImportError as e:
        raise UsageError(
            f"training needs the [train] extra ({e.name} is missing): pip install -e '.[train]'"
        ) from None
    cfg = TrainConfig(
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        device=args.device,
        seed=args.seed,
        batch=args.batch,
        samples_per_epoch=args.samples_per_epoch,
        max_minutes=args.max_minutes,
        lr=args.lr,
        base=args.base,
        amp=not args.no_amp,
    )
    best = train(cfg, progress=lambda s: print(s, flush=True))
    print(f"best checkpoint: {best}")
    return 0


@command("convert")
def cmd_convert(args: argparse.Namespace) -> int:
    if args.target == "ascend":
        try:
            from app.model.ascend import convert_for_ascend
        except ImportError as e:
            raise UsageError(
                f"conversion needs the [train] extra ({e.name} is missing): pip install -e '.[train]'"
            ) from None
        convert_for_ascend(
            args.checkpoint, args.out, data=args.data, soc=args.soc_version, progress=_stderr_progress
        )
        return 0
    try:
        from app.model import convert
    except ImportError as e:
        raise UsageError(
            f"conversion needs the [train] extra ({e.name} is missing): pip install -e '.[train]'"
        ) from None
    convert.convert(
        args.checkpoint,
        args.out,
        data=args.data,
        calibration_tiles=args.calibration_tiles,
        name=args.name,
        progress=_stderr_progress,
    )
    return 0


def _stderr_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- evaluate / bench


@command("evaluate")
def cmd_evaluate(args: argparse.Namespace) -> int:
    from app.inference.evaluation import evaluate_manifest

    if args.precision != "all":
        precisions = [args.precision]
    elif args.engine == "onnxruntime":
        precisions = ["fp32", "int8"]  # ONNX Runtime has no FP16 path worth running on a CPU
    else:
        precisions = ["fp32", "fp16", "int8"]
    result = evaluate_manifest(
        args.manifest,
        model=args.model,
        engine=args.engine,
        precisions=precisions,
        progress=None if args.json else _stderr_progress,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{'precision':<10} {'tumour Dice':>12} {'FP rate (non-tumour)':>22}")
        for p in precisions:
            print(f"{p:<10} {result['dice'][p]:>12.4f} {result['fp_rate_non_tumour'][p]:>22.4f}")
        print(
            f"{result['images']} images ({result['tumour_images']} adenocarcinoma), "
            f"engine {result['engine']}, model {result['model']}"
        )
    return 0


def _format_dict(d: dict) -> str:
    width = max(len(k) for k in d)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in d.items())


@command("bench")
def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "model":
        from app.inference import benchmark

        rows = benchmark.bench_model(
            model=args.model,
            tile=args.tile,
            repeats=args.repeats or 20,
            threads=args.threads,
            configs=args.configs.split(",") if args.configs else None,
            progress=None if args.json else _stderr_progress,
        )
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(benchmark.format_model_table(rows))
        return 0
    if args.what == "pipeline":
        from app.core.slide import Slide
        from app.inference.benchmark import bench_pipeline

        if not args.target:
            raise UsageError("bench pipeline: give a SLIDE and --region X,Y,W,H")
        with Slide.open(args.target) as slide:
            region = _region_from_args(args, slide)
        engine = _engine_from_args(args)
        result = bench_pipeline(
            args.target,
            region,
            engine,
            repeats=args.repeats or 5,
            progress=None if args.json else _stderr_progress,
        )
        print(json.dumps(result, indent=2) if args.json else _format_dict(result))
        return 0
    if args.what == "accuracy":
        from app.inference.benchmark import bench_accuracy

        data = args.data or "../shared/data/ebhi-seg"
        result = bench_accuracy(
            data, _engine_from_args(args), split=args.split, progress=None if args.json else _stderr_progress
        )
        print(json.dumps(result, indent=2) if args.json else _format_dict(result))
        return 0
    if args.what == "remote":
        import os

        from app.inference.benchmark import bench_remote

        token = args.token or os.environ.get("DELINEO_TOKEN")
        result = bench_remote(
            args.url,
            token,
            args.model,
            in_flight=args.in_flight,
            progress=None if args.json else _stderr_progress,
        )
        print(json.dumps(result, indent=2) if args.json else _format_dict(result))
        return 0
    if args.what == "slide":
        from app.ui.viewer_benchmark import bench_slide

        result = bench_slide(args.target, progress=None if args.json else _stderr_progress)
        print(json.dumps(result, indent=2) if args.json else _format_dict(result))
        return 0
    raise UsageError(f"bench: unknown target '{args.what}'")


# --------------------------------------------------------------------------- delineate


def _region_from_args(args: argparse.Namespace, slide):
    from app.core.annotations import read_geojson
    from app.core.geometry import parse_rect, polygonal

    if bool(args.region) == bool(args.region_geojson):
        raise UsageError("give exactly one of --region X,Y,W,H or --region-geojson FILE")
    if args.region:
        return parse_rect(args.region)
    offset = tuple(slide.bounds[:2]) if slide.bounds else (0, 0)
    annotations, _ = read_geojson(args.region_geojson, offset)
    if not annotations:
        raise UsageError(f"{args.region_geojson}: no polygon to use as the region")
    import shapely

    return polygonal(shapely.union_all([a.geometry for a in annotations]))


class _StderrProgress:
    """A progress bar on a terminal; a line every 10% when stderr is a file or pipe."""

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self.last_decile = -1

    def update(self, done: int, total: int, elapsed: float) -> None:
        frac = done / max(1, total)
        left = elapsed / frac * (1 - frac) if frac > 0 else 0
        if self.tty:
            bar = "#" * int(frac * 30)
            sys.stderr.write(f"\r[{bar:<30}] {done}/{total} tiles  {left:4.0f}s left ")
            sys.stderr.flush()
        elif int(frac * 10) > self.last_decile:
            self.last_decile = int(frac * 10)
            print(f"{done}/{total} tiles ({frac:.0%})", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


@command("delineate")
def cmd_delineate(args: argparse.Namespace) -> int:
    from app.core.annotations import Annotation, write_geojson
    from app.core.slide import Slide
    from app.inference.pipeline import Delineation, delineate

    out = Path(args.out)
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist")
    with Slide.open(args.slide) as slide:
        region = _region_from_args(args, slide)
        engine = _engine_from_args(args)
        bar = _StderrProgress()
        result = None
        for ev in delineate(slide, region, engine, slide_mpp=args.mpp):
            if isinstance(ev, Delineation):
                result = ev
            else:
                bar.update(ev.done, ev.total, ev.elapsed_s)
        bar.close()
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        mpp = args.mpp or (sum(slide.mpp) / 2 if slide.mpp else None)
        annotations = [Annotation(p, source=result.source) for p in result.polygons]
        offset = tuple(slide.bounds[:2]) if slide.bounds else (0, 0)
        write_geojson(out, annotations, mpp, offset)
    if result.engine_error:
        print(
            f"delineo: error: {result.engine_error}. {result.tiles_done} of {result.tiles_total} tiles were "
            f"finished and their outline is in {out}; {len(result.pending)} tile(s) were not run. Run again "
            "with --engine openvino to delineate the whole region on this computer.",
            file=sys.stderr,
        )
        return 1
    print(
        f"{result.tiles_done} tiles done, {result.tiles_skipped} skipped as background, "
        f"{result.tiles_failed} unreadable; {len(annotations)} tumour polygon(s) -> {out}; "
        f"{result.seconds:.1f} s, {result.mpix_per_s:.2f} MPix/s at model resolution",
        file=sys.stderr,
    )
    return 0


@command("serve")
def cmd_serve(args: argparse.Namespace) -> int:
    from app.serve.server import read_token, serve

    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: give a port between 1 and 65535")
    if args.max_batch < 1 or args.max_wait_ms < 0:
        raise UsageError("--max-batch must be at least 1 and --max-wait-ms not negative")
    token = read_token(args.token, args.token_file)
    serve(
        args.model,
        args.host,
        args.port,
        token,
        args.provider,
        args.max_batch,
        args.max_wait_ms,
        args.threads,
        raw_input=args.raw_input,
        precision=args.precision,
    )
    return 0


@command("export")
def cmd_export(args: argparse.Namespace) -> int:
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
    """Run the model over the region (or the annotations' extent) for its probability map."""
    import shapely

    from app.core import export
    from app.inference.pipeline import delineate, run_to_end

    if region is None:
        if not annotations:
            raise UsageError("--likelihood needs a region: pass --region or save a painted region")
        region = shapely.union_all([a.geometry for a in annotations]).envelope
    engine = _engine_from_args(args)
    result = run_to_end(delineate(slide, region, engine))
    plan = result.plan
    path = export.likelihood_map_path(slide.path, Path(args.out).parent)
    export.export_likelihood(
        path, slide, result.probability, plan.level0_per_model, plan.model_to_level0(0, 0)
    )
    print(f"likelihood map ({result.tiles_done} tiles) -> {path}", file=sys.stderr)


def _engine_from_args(args: argparse.Namespace):
    import os

    from app.inference.engines import create_engine

    url = getattr(args, "url", None)
    if args.engine == "remote" and not url:
        raise UsageError("--engine remote needs --url (the endpoint, e.g. http://npu-host:8080)")
    if url and args.engine != "remote":
        raise UsageError(f"--url is for --engine remote, not {args.engine}")
    if args.engine == "remote":
        token = getattr(args, "token", None) or os.environ.get("DELINEO_TOKEN")
        return create_engine("remote", args.model, url=url, token=token)
    return create_engine(
        args.engine,
        args.model,
        args.precision.lower(),
        args.device.upper(),
        threads=getattr(args, "threads", 0) or 0,
    )


# --------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (exit 2), like every other CLI error."""

    def error(self, message: str):
        self.exit(2, f"delineo: error: {message} (see delineo {self.prog.split()[-1]} --help)\n")


def _add_region_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--region", help="X,Y,W,H in level-0 pixels")
    p.add_argument("--region-geojson", help="GeoJSON file whose polygons form the region")


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=["openvino", "onnxruntime", "remote"], default="openvino")
    p.add_argument("--url", default=None, help="remote engine: the endpoint, e.g. http://npu-host:8080")
    p.add_argument("--token", default=None, help="remote engine: bearer token (or $DELINEO_TOKEN)")
    p.add_argument("--device", choices=["AUTO", "CPU", "GPU", "auto", "cpu", "gpu"], default="CPU")
    p.add_argument("--precision", choices=["int8", "fp16", "fp32"], default="int8")
    p.add_argument("--model", default=None, help="shipped model name or folder with card.json")
    p.add_argument("--threads", type=int, default=0, help="inference threads (0: all cores)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="delineo",
        description="Whole-slide viewer that delineates tumour with an on-device UNet. "
        "With no command, opens the viewer (on PATH, or on the bundled sample slide).",
    )
    p.add_argument("--version", action="version", version=f"delineo {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    g = sub.add_parser("gui", help="open the viewer (the default)")
    g.add_argument("slide", nargs="?", help="slide to open (default: the bundled sample)")

    i = sub.add_parser("info", help="describe a slide")
    i.add_argument("slide")
    i.add_argument("--json", action="store_true", help="machine-readable output")

    t = sub.add_parser("train", help="train the tumour UNet ([train] extra)")
    t.add_argument("--data", required=True, help="EBHI-Seg folder (with manifest.csv) or manifest")
    t.add_argument("--out", required=True, help="folder for checkpoints and the log")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--base", type=int, default=16, help="channels at full resolution")
    t.add_argument("--samples-per-epoch", type=int, default=0, help="0: one pass over train")
    t.add_argument(
        "--max-minutes",
        type=float,
        default=55,
        help="stop after the epoch past this many minutes, keeping the best (0: no limit)",
    )
    t.add_argument("--no-amp", action="store_true", help="train in fp32 even where bf16/fp16 is fast")

    c = sub.add_parser(
        "convert",
        help="export ONNX, OpenVINO FP16/INT8, ORT INT8 + model card; or --target ascend: FP16 ONNX for ATC",
    )
    c.add_argument("checkpoint", help="a training checkpoint; with --target ascend, a model name or folder")
    c.add_argument("--target", choices=["desktop", "ascend"], default="desktop")
    c.add_argument("--soc-version", default="Ascend910B", help="--target ascend: the NPU for the ATC command")
    c.add_argument("--out", required=True)
    c.add_argument(
        "--data",
        default="../shared/data/ebhi-seg",
        help="EBHI-Seg folder: train tiles calibrate, val tiles validate",
    )
    c.add_argument("--calibration-tiles", type=int, default=300)
    c.add_argument("--name", default=None, help="model name (default: the --out folder's name)")

    e = sub.add_parser("evaluate", help="tumour Dice of the shipped model on a manifest")
    e.add_argument("--manifest", required=True)
    e.add_argument("--precision", choices=["fp32", "fp16", "int8", "all"], default="all")
    e.add_argument("--engine", choices=["openvino", "onnxruntime"], default="openvino")
    e.add_argument("--model", default=None, help="shipped model name or folder with card.json")
    e.add_argument("--json", action="store_true")

    d = sub.add_parser("delineate", help="delineate tumour in a region; writes QuPath GeoJSON")
    d.add_argument("slide")
    _add_region_args(d)
    d.add_argument("--out", required=True, help="output .geojson")
    _add_engine_args(d)
    d.add_argument("--mpp", type=float, default=None, help="slide µm/px, for slides that record none")

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
    _add_engine_args(x)

    v = sub.add_parser("serve", help="serve the model over the Open Inference Protocol ([serve] extra)")
    v.add_argument("--model", default=None, help="shipped model name or folder with card.json")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    v.add_argument("--port", type=int, default=8080)
    v.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN'")
    v.add_argument("--token-file", default=None, help="read the token from this file")
    v.add_argument("--provider", default="auto", choices=["auto", "cann", "cuda", "openvino", "cpu"])
    v.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "int8", "fp16", "fp32"],
        help="which of the card's ONNX models (auto: FP16 on an NPU/GPU, INT8 on a CPU)",
    )
    v.add_argument("--max-batch", type=int, default=16, help="tiles merged into one model run")
    v.add_argument("--max-wait-ms", type=float, default=20.0, help="longest a request waits for others")
    v.add_argument("--threads", type=int, default=0, help="CPU threads for the model (0: all cores)")
    v.add_argument(
        "--raw-input",
        action="store_true",
        help="take the model's own input (normalized FP16/FP32 NCHW, as Triton serves it), not uint8",
    )

    b = sub.add_parser("bench", help="measure speed: model runtimes, the pipeline, the viewer")
    b.add_argument("what", choices=["model", "pipeline", "accuracy", "slide", "remote"])
    b.add_argument("target", nargs="?", help="bench slide: a slide (default: a generated 20000² pyramid)")
    _add_region_args(b)
    b.add_argument("--engine", choices=["openvino", "onnxruntime"], default="openvino")
    b.add_argument("--device", default="CPU")
    b.add_argument("--precision", choices=["int8", "fp16", "fp32"], default="int8")
    b.add_argument("--mpp", type=float, default=None)
    b.add_argument("--model", default=None)
    b.add_argument("--tile", type=int, default=512)
    b.add_argument("--repeats", type=int, default=None, help="model: 20 timings; pipeline: 5 runs")
    b.add_argument("--threads", type=int, default=0, help="0: all cores")
    b.add_argument("--configs", default=None, help="comma-separated subset of configurations")
    b.add_argument("--data", default=None, help="bench accuracy: EBHI-Seg folder or manifest")
    b.add_argument("--split", default="val", help="bench accuracy: which split's tiles")
    b.add_argument("--url", default=None, help="bench remote: the endpoint (default: start one on 127.0.0.1)")
    b.add_argument("--token", default=None, help="bench remote: bearer token")
    b.add_argument("--in-flight", type=int, default=4, help="bench remote: tiles in flight at once")
    b.add_argument("--json", action="store_true")
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    parser = build_parser()
    # `delineo` and `delineo SLIDE` open the viewer; anything else is a sub-command.
    first = next((a for a in argv if not a.startswith("-")), None)
    asks_help = any(a in ("-h", "--help", "--version") for a in argv)
    opens_viewer = first is None and not asks_help
    opens_path = first is not None and first not in COMMANDS and argv[0] == first
    if opens_viewer or opens_path:
        argv = ["gui", *argv]
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from app.logs import setup_logging

    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(console=args.command != "gui")
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("delineo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `delineo info x | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    except Exception as e:
        from app.errors import is_user_error

        if not is_user_error(e) and not isinstance(e, UsageError):
            import logging

            logging.getLogger("delineo").exception("unexpected error in %s", args.command)
            print(
                f"delineo: internal error: {type(e).__name__}: {e} (details in the log: {_log_path()})",
                file=sys.stderr,
            )
            return 1
        print(f"delineo: error: {e}", file=sys.stderr)
        return 2


def _log_path() -> str:
    from app.logs import log_file

    return str(log_file())


def gui_main() -> int:
    return main(["gui", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
