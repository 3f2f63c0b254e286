"""The `delineo` command. With no sub-command (or just a path) it opens the viewer.

Each sub-command lives in its own module with `add_to(subparsers)`; adding one is a module and
a line in `_COMMAND_MODULES`. Sub-commands import what they need lazily, so `delineo info`
starts in a fraction of a second and never loads Qt, torch or a runtime it does not use.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from app import __version__
from app.cli.arguments import Parser, UsageError

__all__ = ["UsageError", "build_parser", "gui_main", "main", "parse_args"]

_COMMAND_MODULES = (
    "viewer",
    "info",
    "training",
    "evaluate",
    "delineate",
    "annotations",
    "export",
    "serve",
    "bench",
    "batch",
    "self_test",
    "data",
    "model",
)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="delineo",
        description="Whole-slide viewer that delineates tumour with an on-device UNet. "
        "With no command, opens the viewer (on PATH, or on the bundled sample slide).",
    )
    p.add_argument("--version", action="version", version=f"delineo {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in _COMMAND_MODULES:
        importlib.import_module(f"app.cli.{name}").add_to(sub)
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    # `delineo` and `delineo SLIDE` open the viewer; anything else is a sub-command.
    first = next((a for a in argv if not a.startswith("-")), None)
    asks_help = any(a in ("-h", "--help", "--version") for a in argv)
    opens_viewer = first is None and not asks_help
    opens_path = first is not None and first not in commands and argv[0] == first
    if opens_viewer or opens_path:
        argv = ["gui", *argv]
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from app.logs import setup_logging

    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(console=args.command != "gui")
    if args.command != "gui":
        _exit_cleanly_on_sigterm()
    try:
        return args.run(args)
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

            from app.logs import log_file

            logging.getLogger("delineo").exception("unexpected error in %s", args.command)
            print(
                f"delineo: internal error: {type(e).__name__}: {e} (details in the log: {log_file()})",
                file=sys.stderr,
            )
            return 1
        print(f"delineo: error: {e}", file=sys.stderr)
        return 2


def _exit_cleanly_on_sigterm() -> None:
    """SIGTERM (a scheduler, `kill`, a closing terminal) unwinds like Ctrl+C, so partial output
    files are removed by the writers' own cleanup instead of being left behind."""
    import signal

    def terminate(signum, _frame):
        print("delineo: terminated", file=sys.stderr)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def gui_main() -> int:
    return main(["gui", *sys.argv[1:]])
