"""Tiles read at model resolution ahead of inference, in the order a run wants them.

`TileReader` keeps a few reads in flight on a small pool (OpenSlide and libjpeg release the
GIL), so the engine finds the next tile waiting; `Focus` makes the order follow where the
pathologist is looking during a whole-slide run.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from app.core import resample
from app.core.slide import Slide
from app.core.tiling import Tile, TilePlan


class TileReader:
    """Reads tiles at model resolution on a small thread pool, a few tiles ahead."""

    def __init__(self, slide: Slide, plan: TilePlan, workers: int, lookahead: int):
        self.slide = slide
        self.plan = plan
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tile-reader")
        self.lookahead = lookahead
        self.queue: deque[tuple[Tile, Future]] = deque()

    def read(self, t: Tile) -> np.ndarray:
        x, y, w, h = self.plan.read_rect(t)
        choice, tile = self.plan.choice, self.plan.tile
        rgb = self.slide.read_region(x, y, choice.level, w, h, choice.reduction)
        if (w, h) != (tile, tile):
            rgb = (resample.area_downscale if choice.scale < 1 else resample.bilinear)(rgb, (tile, tile))
        return rgb

    def iterate(self, tiles: list[Tile], focus: Focus | None = None) -> Iterator[tuple[Tile, Future]]:
        """Tiles with their reads in flight. Until the first tile is on screen only the next two
        are read (behind it on the reader thread): the cores belong mostly to the first tile's
        inference, and both of the model's streams find a tile waiting when it is done. With a
        `focus`, the next tile read is the one nearest where the pathologist looks now."""
        it = iter(tiles) if focus is None else focus.order(tiles, self.plan)
        for t in itertools.islice(it, min(3, self.lookahead)):
            self.queue.append((t, self.pool.submit(self.read, t)))
        while self.queue:
            t, fut = self.queue.popleft()
            yield t, fut
            while len(self.queue) < self.lookahead and (nxt := next(it, None)) is not None:
                self.queue.append((nxt, self.pool.submit(self.read, nxt)))

    def close(self) -> None:
        for _, fut in self.queue:
            fut.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)


class Focus:
    """Where the pathologist is looking (level-0 x, y), moved from the GUI thread while a run
    goes on: a run's tiles are taken nearest it first, so what is on screen is done first and
    panning moves the priority."""

    def __init__(self, point: tuple[float, float] | None = None):
        self._point = point
        self._lock = threading.Lock()

    @property
    def point(self) -> tuple[float, float] | None:
        with self._lock:
            return self._point

    @point.setter
    def point(self, value: tuple[float, float] | None) -> None:
        with self._lock:
            self._point = value

    def order(self, tiles: list[Tile], plan: TilePlan) -> Iterator[Tile]:
        """`tiles`, each next one the nearest to the focus as it is at that moment."""
        left = list(tiles)
        if not left:
            return
        s = plan.level0_per_model
        centres = np.array([((t.mx + plan.tile / 2) * s, (t.my + plan.tile / 2) * s) for t in left])
        alive = np.ones(len(left), bool)
        for _ in range(len(left)):
            p = self.point
            if p is None:
                i = int(np.argmax(alive))  # the first left, in plan order
            else:
                d = np.hypot(centres[:, 0] - p[0], centres[:, 1] - p[1])
                d[~alive] = np.inf
                i = int(np.argmin(d))
            alive[i] = False
            yield left[i]
