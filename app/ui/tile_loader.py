"""Loads slide tiles on worker threads, in the spirit of ASAP's tile manager.

The view tells the loader which tiles it wants, nearest the centre first; that list replaces
the previous one, so tiles that scrolled out of view before a worker reached them are simply
never read. Finished tiles go into a byte-bounded LRU cache as QImages (safe to build off the
GUI thread) and the view is told by a queued signal.
"""

from __future__ import annotations

import logging
import threading
import time

from PySide6.QtCore import QObject, Signal

from app.core.lru_cache import ByteLRU
from app.core.slide import Slide, SlideError
from app.core.tile_grid import TileGrid, TileKey
from app.ui.image_convert import array_to_qimage

log = logging.getLogger(__name__)


class TileLoader(QObject):
    tileReady = Signal(object)  # TileKey
    tileFailed = Signal(object, str)  # TileKey, message

    def __init__(self, slide: Slide, grid: TileGrid, cache_bytes: int = 256 << 20, workers: int = 2):
        super().__init__()
        self.slide = slide
        self.grid = grid
        self.cache = ByteLRU(cache_bytes)
        self.failed: dict[TileKey, str] = {}
        self._pending: list[TileKey] = []
        self._inflight: set[TileKey] = set()
        self._cond = threading.Condition()
        self._stop = False
        self.fetch_times_ms: list[float] = []  # cache-miss read + decode times, for `bench slide`
        self._threads = [
            threading.Thread(target=self._work, name=f"tile-loader-{i}", daemon=True) for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def request(self, keys: list[TileKey]) -> None:
        """Replace the wanted list (already in priority order); cached tiles are skipped."""
        with self._cond:
            self._pending = [
                k for k in keys if k not in self.cache and k not in self._inflight and k not in self.failed
            ]
            if self._pending:
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._pending = []
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=2)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                key = self._pending.pop(0)
                self._inflight.add(key)
            try:
                t0 = time.perf_counter()
                rgb = self.slide.read_region(*self.grid.read_args(key))
                img = array_to_qimage(rgb)
                self.fetch_times_ms.append((time.perf_counter() - t0) * 1000)
                self.cache.put(key, img, img.sizeInBytes())
            except SlideError as e:
                self.failed[key] = str(e)
                log.warning("tile %s failed: %s", key, e)
                with self._cond:
                    self._inflight.discard(key)
                if not self._stop:
                    self.tileFailed.emit(key, str(e))
                continue
            except Exception as e:
                self.failed[key] = f"{type(e).__name__}: {e}"
                log.exception("tile %s failed", key)
                with self._cond:
                    self._inflight.discard(key)
                if not self._stop:
                    self.tileFailed.emit(key, self.failed[key])
                continue
            with self._cond:
                self._inflight.discard(key)
            if not self._stop:
                self.tileReady.emit(key)
