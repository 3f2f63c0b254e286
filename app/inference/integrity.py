"""Checksums of model files, remembered between runs so that verifying a model costs a `stat`.

The sha256 of a file is cached by its resolved path, size, mtime and ctime (ctime changes on
every write and on `touch`, so a file rewritten and set back to its old mtime is hashed again).
The cache is a small JSON in the per-user cache folder; a cache that cannot be read or written
only costs time: every file is then hashed on every load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_NAME = "model-checksums.json"
_MAX_ENTRIES = 256  # a few models, a few copies: the file stays small
_lock = threading.Lock()


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cache_path() -> Path | None:
    from app.logs import cache_dir

    try:
        return cache_dir() / CACHE_NAME
    except OSError:
        return None


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _read(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path | None, data: dict) -> None:
    if path is None:
        return
    if len(data) > _MAX_ENTRIES:
        data = dict(list(data.items())[-_MAX_ENTRIES:])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        log.info("model checksum cache %s not writable (%s); files will be hashed each time", path, e)
        tmp.unlink(missing_ok=True)


def cached_sha256(path: str | Path) -> str:
    """The file's sha256, from the cache when the file is unchanged since it was last hashed."""
    p = Path(path).resolve()
    stamp = _stamp(p.stat())
    cache_file = _cache_path()
    with _lock:
        entry = _read(cache_file).get(str(p))
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = sha256(p)
    if _stamp(p.stat()) != stamp:  # changed while it was read: do not remember a torn hash
        return digest
    with _lock:
        data = _read(cache_file)
        data.pop(str(p), None)
        data[str(p)] = {"stamp": stamp, "sha256": digest}
        _write(cache_file, data)
    return digest
