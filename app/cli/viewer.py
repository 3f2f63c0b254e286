"""`delineo [SLIDE]` and `delineo gui`: the window."""

from __future__ import annotations

import argparse


def add_to(sub) -> None:
    g = sub.add_parser("gui", help="open the viewer (the default)")
    g.add_argument("slide", nargs="?", help="slide to open (default: the bundled sample)")
    g.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from app.ui.application import run_gui

    return run_gui(args.slide)
