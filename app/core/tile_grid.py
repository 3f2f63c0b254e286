"""The viewer's tile grid: which tiles of which pyramid level cover a rectangle of the slide.

Coordinates are level-0 pixels (floats). A tile key is (level, column, row) in that level's
grid of `tile`-pixel squares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TileKey = tuple[int, int, int]


@dataclass(frozen=True)
class TileGrid:
    level_dimensions: tuple[tuple[int, int], ...]
    tile: int = 512

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
