"""Ordinary permissions for files written through a temporary file.

`tempfile.mkstemp` creates files readable by their owner only (0600); renamed into place, an
autosave or an export would then be unreadable by a colleague or a lab share's other users.
Saved files get what `open()` would have given them: 0666 less the process umask.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.cache
def _umask() -> int:
    # Read once (setting and restoring the umask is not thread-safe); Linux reports it without
    # touching it.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def ordinary_mode() -> int:
    return 0o666 & ~_umask()


def make_ordinary(path: str | Path) -> None:
    """Give a temporary file the mode a plainly created file would have (no-op on Windows)."""
    if os.name == "nt":
        return
    os.chmod(path, ordinary_mode())
