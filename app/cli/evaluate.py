"""`delineo evaluate`: Dice of a model on a manifest of labelled tiles."""

from __future__ import annotations

import argparse
import json

from app.cli.progress import stderr_progress


def add_to(sub) -> None:
    e = sub.add_parser("evaluate", help="Dice (per class for a multi-class model) on a manifest")
    e.add_argument("--manifest", required=True)
    from app.inference.engine_registry import DEFAULT_ENGINE, all_precisions, engine_keys

    e.add_argument("--precision", choices=[*all_precisions(), "all"], default="all")
    e.add_argument("--engine", choices=engine_keys(local_only=True), default=DEFAULT_ENGINE)
    e.add_argument("--model", default=None, help="shipped model name or folder with card.json")
    e.add_argument("--json", action="store_true")
    e.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from app.inference.engine_registry import engine_spec
    from app.inference.evaluation import evaluate_manifest

    precisions = list(engine_spec(args.engine).precisions) if args.precision == "all" else [args.precision]
    result = evaluate_manifest(
        args.manifest,
        model=args.model,
        engine=args.engine,
        precisions=precisions,
        progress=None if args.json else stderr_progress,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    elif "classes" in result:
        _print_per_class(result, precisions)
    else:
        print(f"{'precision':<10} {'tumour Dice':>12} {'FP rate (non-tumour)':>22}")
        for p in precisions:
            print(f"{p:<10} {result['dice'][p]:>12.4f} {result['fp_rate_non_tumour'][p]:>22.4f}")
        print(
            f"{result['images']} images ({result['tumour_images']} adenocarcinoma), "
            f"engine {result['engine']}, model {result['model']}"
        )
    return 0


def _print_per_class(result: dict, precisions: list[str]) -> None:
    """One row per precision: Dice per class, then the share of high-grade IN called Tumor."""
    classes = result["classes"]
    widths = [max(12, len(c) + 1) for c in classes]
    head = "".join(f"{c + ' Dice':>{w + 5}}" for c, w in zip(classes, widths, strict=True))
    print(f"{'precision':<10}{head} {'HGIN called Tumor':>18}")
    for p in precisions:
        cells = "".join(f"{result['dice'][p][c]:>{w + 5}.4f}" for c, w in zip(classes, widths, strict=True))
        print(f"{p:<10}{cells} {result['hgin_tile_pixels_called_tumour'][p]:>18.4f}")
    print(
        f"{result['images']} images ({result['tumour_images']} adenocarcinoma, "
        f"{result['hgin_images']} high-grade IN), engine {result['engine']}, model {result['model']}; "
        "HGIN called Tumor: share of the high-grade IN images' pixels"
    )
