"""The viewer's tile grid: which tiles of which pyramid level cover a rectangle of the slide.

Coordinates are level-0 pixels (floats). A tile key is (level, column, row) in that level's
grid of `tile`-pixel squares. The grid's levels are the slide's, and between them the smaller
sizes its JPEG levels decode at nearly for free (`Slide.reductions`): a 20x scan whose levels
step by 4x gets one at 2x, so a view at half zoom decodes a quarter of what level 0 would cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.core.slide import Slide

TileKey = tuple[int, int, int]
MIN_REDUCED_SIDE = 1024  # smaller than this, the view's 2048 px thumbnail already does as well


@dataclass(frozen=True)
class TileGrid:
    level_dimensions: tuple[tuple[int, int], ...]
    tile: int = 512
    sources: tuple[tuple[int, int], ...] = ()  # per level: (slide level, reduction); () = the slide's

    @classmethod
    def for_slide(cls, slide: Slide, tile: int = 512) -> TileGrid:
        """The slide's own levels, plus each reduced size at least 1.5x away from every level
        already there; of equal ones, the one decoded from the coarser level (less data)."""
        stored = [(level, 1, tuple(d)) for level, d in enumerate(slide.level_dimensions)]
        reduced = sorted(
            (
                (level, r, (-(-w // r), -(-h // r)))
                for level, (w, h) in enumerate(slide.level_dimensions)
                for r in slide.reductions(level)
                if r > 1
            ),
            key=lambda c: (-c[0], c[1]),
        )
        w0 = slide.level_dimensions[0][0]
        kept = list(stored)
        for level, r, dims in reduced:
            ds = w0 / dims[0]
            if max(dims) >= MIN_REDUCED_SIDE and all(
                max(ds, w0 / k[2][0]) / min(ds, w0 / k[2][0]) >= 1.5 for k in kept
            ):
                kept.append((level, r, dims))
        kept.sort(key=lambda k: w0 / k[2][0])
        if all(r == 1 for _, r, _ in kept):
            return cls(tuple(d for _, _, d in kept), tile)
        return cls(tuple(d for _, _, d in kept), tile, tuple((level, r) for level, r, _ in kept))

    def source(self, level: int) -> tuple[int, int]:
        """(slide level, reduction) that grid level `level` is read from."""
        return self.sources[level] if self.sources else (level, 1)

    def describe(self, level: int) -> str:
        """The slide level it shows, e.g. "level 0" or "level 0 at 1/2"."""
        source, r = self.source(level)
        return f"level {source}" + (f" at 1/{r}" if r > 1 else "")

    def downsample(self, level: int) -> float:
        return self.scale(level)[0]

    def level_for_downsample(self, downsample: float) -> int:
        """The finest level no finer than needed: largest downsample ≤ the one asked for."""
        best = 0
        for level in range(len(self.level_dimensions)):
            if self.downsample(level) <= downsample * 1.001:
                best = level
        return best

    def read_args(self, key: TileKey) -> tuple[int, int, int, int, int, int]:
        """`Slide.read_region` arguments (x, y, slide level, w, h, reduction) for a tile, the
        level-0 origin taken from the source level's own scale so reads land on its pixels."""
        level, r = self.source(key[0])
        x, y, w, h = self.tile_rect_level(key)
        sx, sy = self.scale(self.sources.index((level, 1)) if self.sources else key[0])
        return round(x * r * sx), round(y * r * sy), level, w, h, r

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    def scale(self, level: int) -> tuple[float, float]:
        """Level-0 pixels per level pixel on each axis (exact, unlike the averaged downsample)."""
        w0, h0 = self.level_dimensions[0]
        w, h = self.level_dimensions[level]
        return w0 / w, h0 / h

    def grid_size(self, level: int) -> tuple[int, int]:
        w, h = self.level_dimensions[level]
        return math.ceil(w / self.tile), math.ceil(h / self.tile)

    def tile_rect_level(self, key: TileKey) -> tuple[int, int, int, int]:
        """(x, y, w, h) of the tile in its level's pixels, clipped at the slide edge."""
        level, c, r = key
        w, h = self.level_dimensions[level]
        x, y = c * self.tile, r * self.tile
        return x, y, min(self.tile, w - x), min(self.tile, h - y)

    def tile_rect(self, key: TileKey) -> tuple[float, float, float, float]:
        """(x, y, w, h) of the tile in level-0 pixels."""
        sx, sy = self.scale(key[0])
        x, y, w, h = self.tile_rect_level(key)
        return x * sx, y * sy, w * sx, h * sy

    def tiles_in(self, level: int, x: float, y: float, w: float, h: float) -> list[TileKey]:
        """Keys of tiles of `level` that intersect the level-0 rectangle, nearest the centre first
        (the order the loader fetches them in)."""
        sx, sy = self.scale(level)
        cols, rows = self.grid_size(level)
        step_x, step_y = self.tile * sx, self.tile * sy
        c0 = max(0, math.floor(x / step_x))
        r0 = max(0, math.floor(y / step_y))
        c1 = min(cols - 1, math.floor((x + w) / step_x))
        r1 = min(rows - 1, math.floor((y + h) / step_y))
        if c1 < c0 or r1 < r0:
            return []
        cx, cy = (x + w / 2) / step_x - 0.5, (y + h / 2) / step_y - 0.5
        keys = [(level, c, r) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]
        keys.sort(key=lambda k: (k[1] - cx) ** 2 + (k[2] - cy) ** 2)
        return keys
