"""`delineo data ebhi-seg DOWNLOADED_DIR --out DIR`: the training data, from its public release.

The repository ships only a handful of test tiles; train, convert and bench accuracy read the
folder this writes (pass --data DIR, or set DELINEO_DATA=DIR once).
"""

from __future__ import annotations

import argparse

from app.cli.arguments import Parser


def add_to(sub) -> None:
    d = sub.add_parser("data", help="prepare training data from its public release")
    kinds = d.add_subparsers(dest="dataset", metavar="DATASET", required=True, parser_class=Parser)
    e = kinds.add_parser(
        "ebhi-seg",
        help="EBHI-Seg (class folders with image/ and label/) -> manifest layout, split by case",
        description="Convert the unpacked EBHI-Seg release (doi:10.3389/fmed.2023.1114673, CC BY 4.0) "
        "into images/, masks/ and manifest.csv with a train/val/test split by case.",
    )
    e.add_argument("release", metavar="DOWNLOADED_DIR", help="the unpacked release (EBHI-SEG/ or its parent)")
    e.add_argument("--out", required=True, help="new or empty folder for the converted data")
    e.add_argument("--val", type=float, default=0.12, help="share of cases for validation")
    e.add_argument("--test", type=float, default=0.15, help="share of cases held out as test")
    e.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from app.core.ebhi_seg import convert_release

    result = convert_release(
        args.release,
        args.out,
        val_fraction=args.val,
        test_fraction=args.test,
        progress=lambda s: print(s, file=sys.stderr, flush=True),
    )
    for p in result.unpaired:
        print(f"delineo: warning: {p}: no image/label partner of the same name; left out", file=sys.stderr)
    splits = ", ".join(
        f"{split} {sum(n for (_, s), n in result.pairs.items() if s == split)} pairs / "
        f"{result.cases[split]} cases"
        for split in ("train", "val", "test")
    )
    print(f"wrote {result.total} pairs to {result.out} ({splits}); use --data {result.out} or DELINEO_DATA")
    return 0
