"""One rotating log file per user, so support can ask for it."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

import platformdirs

APP_NAME = "Delineo"


def data_dir() -> Path:
    """Per-user data directory (created on demand)."""
    d = Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    d.mkdir(parents=True, exist_ok=True)
    return d


def cache_dir() -> Path:
    """Per-user cache directory (created on demand): what can be recomputed, e.g. checksums."""
    d = Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))
    d.mkdir(parents=True, exist_ok=True)
    return d


def log_file() -> Path:
    d = Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))
    d.mkdir(parents=True, exist_ok=True)
    return d / "delineo.log"


def setup_logging(console: bool = False, level: int = logging.INFO) -> Path | None:
    """Log to the per-user file; also to stderr (warnings only) for CLI use."""
    root = logging.getLogger()
    if getattr(root, "_delineo_configured", False):
        return None
    root.setLevel(level)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = None
    try:
        path = log_file()
        fh = logging.handlers.RotatingFileHandler(path, maxBytes=2_000_000, backupCount=3, encoding="utf-8")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    except OSError as e:  # a read-only home must not stop the app
        print(f"delineo: cannot write the log file ({e}); logging to stderr only", file=sys.stderr)
    if console:
        sh = logging.StreamHandler(sys.stderr)
        sh.setLevel(logging.WARNING)
        sh.setFormatter(logging.Formatter("delineo: %(levelname)s: %(message)s"))
        # Tracebacks go to the file only; the CLI prints its own one-line message.
        sh.addFilter(lambda record: not record.exc_info)
        root.addHandler(sh)
    root._delineo_configured = True  # type: ignore[attr-defined]
    return path
