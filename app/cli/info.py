"""`delineo info`: what a slide holds."""

from __future__ import annotations

import argparse
import json


def add_to(sub) -> None:
    i = sub.add_parser("info", help="describe a slide")
    i.add_argument("slide")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from app.core.slide import Slide

    with Slide.open(args.slide) as slide:
        info = slide.info()
        for note in slide.notes:
            print(f"note: {note}", file=sys.stderr)
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
