"""`delineo model add|list|remove`: models trained elsewhere, installed for this user."""

from __future__ import annotations

import argparse
import json
import sys

from app.cli.arguments import Parser, UsageError


def add_to(sub) -> None:
    m = sub.add_parser("model", help="add, list or remove models (your own ONNX or OpenVINO models)")
    commands = m.add_subparsers(dest="model_command", metavar="ACTION", parser_class=Parser, required=True)

    a = commands.add_parser(
        "add",
        help="check a model, run it on a tile, and install it for this user",
        description="Install an ONNX model or OpenVINO IR trained elsewhere. It is checked (3-channel "
        "NCHW input, one output channel per class), run on a tile of the sample slide, and only then "
        "installed; any problem is one line and nothing is installed. See docs/MODEL-CARD.md.",
    )
    a.add_argument("model", help="MODEL.onnx, or MODEL.xml with MODEL.bin beside it")
    a.add_argument("--name", required=True, help="the model's name (letters, digits, . _ -)")
    a.add_argument("--mpp", type=float, required=True, help="µm per pixel the model was trained at")
    a.add_argument(
        "--classes",
        required=True,
        help="one class per output channel, in channel order: 'Name[:#rrggbb],...'",
    )
    a.add_argument("--background-class", default=None, metavar="NAME", help="a class never outlined")
    a.add_argument(
        "--activation",
        choices=["sigmoid", "softmax", "none"],
        default=None,
        help="what to apply to the output (none: it is probabilities already; default: sigmoid for "
        "one channel, softmax for more)",
    )
    a.add_argument(
        "--input-range", type=int, choices=[1, 255], default=1, help="the model's input: 0..1 or 0..255"
    )
    a.add_argument("--mean", default=None, metavar="R,G,B", help="subtracted per channel (input-range units)")
    a.add_argument("--std", default=None, metavar="R,G,B", help="divided by per channel (input-range units)")
    a.add_argument("--channel-order", choices=["RGB", "BGR", "rgb", "bgr"], default="RGB")
    a.add_argument(
        "--tile", type=int, default=None, help="tile side (default: the model's fixed size, or 512)"
    )
    a.add_argument("--overlap", type=int, default=None, help="tile overlap (default: 64, or a quarter tile)")
    a.add_argument("--threshold", type=float, default=0.5, help="default probability threshold")
    a.add_argument("--version", dest="model_version", default="1.0.0", help="the model's version")
    a.add_argument("--force", action="store_true", help="replace an installed model of the same name")
    a.set_defaults(run=run_add)

    ls = commands.add_parser("list", help="models Delineo can run by name, installed and shipped")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(run=run_list)

    r = commands.add_parser("remove", help="remove a model you added (shipped ones stay)")
    r.add_argument("name")
    r.set_defaults(run=run_remove)


def _numbers(option: str, text: str | None) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise UsageError(
            f"{option} {text}: give three numbers separated by commas, e.g. {option} 0.5,0.5,0.5"
        )
    return values  # type: ignore[return-value]


def run_add(args: argparse.Namespace) -> int:
    from pathlib import Path

    from app.inference.model_install import InstallRequest, install

    request = InstallRequest(
        source=Path(args.model),
        name=args.name,
        mpp=args.mpp,
        classes=args.classes,
        background=args.background_class,
        activation=args.activation,
        input_range=args.input_range,
        mean=_numbers("--mean", args.mean),
        std=_numbers("--std", args.std),
        channel_order=args.channel_order.upper(),
        tile=args.tile,
        overlap=args.overlap,
        threshold=args.threshold,
        force=args.force,
        version=args.model_version,
    )
    done = install(request)
    card = done.card
    raw = card.raw
    classes = ", ".join(
        c["name"] + (" (background)" if c["name"] == raw.get("background") else "") for c in raw["classes"]
    )
    print(
        f"installed {card.name} {card.version} in {card.path}: {classes}; {card.mpp:g} µm/px, tile "
        f"{card.tile}, {raw['output']['activation']}; ran on a sample tile with {', '.join(done.engines)}",
        file=sys.stderr,
    )
    for note in done.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"use it with --model {card.name}, or choose it in Settings", file=sys.stderr)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from app.inference.model_install import list_models

    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no models", file=sys.stderr)
        return 0
    table = [("name", "version", "classes", "mpp", "from", "folder")]
    for r in rows:
        if "error" in r:
            table.append((r["name"], "-", f"unusable: {r['error']}", "-", r["source"], r["folder"]))
            continue
        classes = ", ".join(n + (" (background)" if n == r.get("background") else "") for n in r["classes"])
        table.append((r["name"], r["version"], classes, f"{r['mpp']:g}", r["source"], r["folder"]))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from app.inference.model_install import remove

    folder = remove(args.name)
    print(f"removed {args.name} ({folder})", file=sys.stderr)
    return 0
