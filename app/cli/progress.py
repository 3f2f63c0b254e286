"""Progress on stderr, so stdout stays for results."""

from __future__ import annotations

import sys


def stderr_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def format_dict(d: dict) -> str:
    width = max(len(k) for k in d)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in d.items())


class StderrProgress:
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
