"""`delineo evaluate`: Dice of a model on a manifest of labelled tiles."""

from __future__ import annotations

import argparse
import json

from app.cli.progress import stderr_progress


def add_to(sub) -> None:
    e = sub.add_parser("evaluate", help="tumour Dice of the shipped model on a manifest")
    e.add_argument("--manifest", required=True)
    e.add_argument("--precision", choices=["fp32", "fp16", "int8", "all"], default="all")
    e.add_argument("--engine", choices=["openvino", "onnxruntime"], default="openvino")
    e.add_argument("--model", default=None, help="shipped model name or folder with card.json")
    e.add_argument("--json", action="store_true")
    e.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
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
        progress=None if args.json else stderr_progress,
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
