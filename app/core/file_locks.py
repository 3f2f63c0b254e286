"""Which temporary files a live save holds, so the ones left by a killed save can be removed.

A save holds an exclusive advisory lock on its temporary file until it renames it; the kernel
drops the lock when the process dies, however it dies. Where there are no advisory locks
(Windows), an open file cannot be deleted, which protects a live save just as well.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

# Older than this, a temporary file is never a live save's (a save takes milliseconds); younger,
# only its lock says. A file a moment old may not be locked yet: mkstemp, then flock.
STALE_AFTER_S = 60.0
JUST_CREATED_S = 1.0


def hold_while_writing(fd: int) -> None:
    """Lock an open temporary file for as long as it stays open."""
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


@contextlib.contextmanager
def _taken(path: Path) -> Iterator[bool | None]:
    """Take `path`'s lock for the block if no live writer holds it: True when taken, False when
    held, None when the file cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def is_held(path: Path) -> bool:
    """Whether a live writer holds `path`'s lock (without advisory locks: never)."""
    if fcntl is None:
        return False
    with _taken(path) as taken:
        return taken is False


def remove_if_stale(path: Path, now: float | None = None) -> bool:
    """Delete a temporary file of ours unless a live save holds it; True when deleted."""
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except OSError:
        return False
    if age < JUST_CREATED_S:
        return False
    if age < STALE_AFTER_S and fcntl is not None:
        with _taken(path) as taken:  # deleted while locked: no save can start on it meanwhile
            if not taken:
                return False  # held: a save in progress in some process (or gone)
            try:
                path.unlink()
            except OSError:
                return False
            return True
    try:
        path.unlink()
    except OSError:  # on Windows: open in a live save
        return False
    return True
