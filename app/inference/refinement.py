"""An adaptive run's coarse answer and its refine rule: which fine tiles run at full resolution,
and what the others keep instead (the coarse map, resampled to the fine grid).

Adaptive mesh refinement in two levels: the coarse pass's map is kept at its own resolution
(1/16 of the fine map's pixels at 4x the pixel size), filled band by band as the coarse tiles
finish, in blocks kept only where it holds an answer, so a whole slide's coarse answer costs a
byte per coarse pixel and class of tissue, not of glass."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from app.core.class_scores import ClassScheme
from app.core.tiling import BandBlender, Tile, TilePlan
from app.inference.modelcard import ModelCard

COARSE_FACTOR = 4  # without a coarse model, the model itself at 4x its pixel size: 1/16 of the tiles


def answer_mismatch(fine: ModelCard, coarse: ModelCard) -> str | None:
    """Why `coarse`'s answer cannot stand in `fine`'s map, or None: the same classes in the same
    channels, decided the same way."""
    names = [c.name for c in fine.scheme.classes]
    theirs = [c.name for c in coarse.scheme.classes]
    if names != theirs:
        return (
            f"the coarse model {coarse.name} outputs {', '.join(theirs)}, not {fine.name}'s "
            f"{', '.join(names)}"
        )
    ours, other = fine.scheme, coarse.scheme
    if (ours.exclusive, ours.background) != (other.exclusive, other.background):
        return f"the coarse model {coarse.name} decides its classes differently from {fine.name}"
    return None


def coarse_mismatch(fine: ModelCard, coarse: ModelCard) -> str | None:
    """Why `coarse` cannot run a first pass for `fine`, or None: its answer must be able to
    stand where no fine tile runs, at a coarser pixel size."""
    problem = answer_mismatch(fine, coarse)
    if problem is None and coarse.mpp <= fine.mpp:
        problem = f"the coarse model {coarse.name} is at {coarse.mpp:g} µm/px, not coarser than {fine.mpp:g}"
    return problem


@dataclass(frozen=True)
class RefineRule:
    """A fine tile runs at full resolution where, inside its core widened by `margin_px` fine
    pixels, the coarse foreground score reaches `level` over at least `min_um2` (the coarse
    pass found something there, or is unsure of it), or where the coarse pass has no answer.
    Elsewhere the coarse answer stands. `min_um2` 0: any coarse pixel at `level` refines."""

    level: float = 0.15
    min_um2: float = 0.0
    margin_px: int | None = None  # None: the whole extent (half the overlap past the core)

    @classmethod
    def from_card(cls, adaptive: dict) -> RefineRule:
        """The rule a fine model's card sets in its (bounds-checked) `adaptive` block."""
        base = cls()
        return cls(
            level=float(adaptive.get("refine_level", base.level)),
            min_um2=float(adaptive.get("refine_min_um2", base.min_um2)),
            margin_px=(
                int(adaptive["refine_margin_px"]) if "refine_margin_px" in adaptive else base.margin_px
            ),
        )


class CoarseMap:
    """The coarse pass's blended class map, uint8 per class over its tile plan's canvas, and
    which of its tiles answered (the rest: glass it skipped, or tiles it could not read)."""

    BLOCK = 256  # canvas pixels a side: a block is kept once a band writes a non-zero score into it

    def __init__(self, plan: TilePlan, channels: int, mpp: float):
        self.plan, self.mpp, self.channels = plan, mpp, channels
        self.size = plan.size  # (width, height) of the coarse canvas
        # Blocks of the map by (block row, block column); a block never written is all zero
        # (no score): glass around the tissue, the most of a sparse slide, costs nothing.
        self.blocks: dict[tuple[int, int], np.ndarray] = {}
        # Per coarse tile, whether it ran: a canvas pixel has an answer when the tile whose core
        # holds it ran (cores tile the canvas). A byte per tile, not per pixel.
        cols = max((t.col for t in plan.tiles), default=-1) + 1
        rows = max((t.row for t in plan.tiles), default=-1) + 1
        self.ran = np.zeros((rows, cols), bool)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.blocks.values())

    def add_band(self, first_row: int, band: np.ndarray) -> None:
        """A finished band of the coarse BandBlender (C, rows, width)."""
        b, (n, width) = self.BLOCK, band.shape[1:]
        y, end = first_row, first_row + n
        while y < end:
            by = y // b
            y1 = min(end, (by + 1) * b)
            for bx in range(math.ceil(width / b)):
                part = band[:, y - first_row : y1 - first_row, bx * b : (bx + 1) * b]
                if not part.any():
                    continue
                block = self.blocks.get((by, bx))
                if block is None:
                    block = self.blocks[by, bx] = np.zeros((self.channels, b, b), np.uint8)
                block[:, y - by * b : y1 - by * b, : part.shape[2]] = part
            y = y1

    def window(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """(C, y1 - y0, x1 - x0) uint8: the map over canvas pixels [x0, x1) x [y0, y1), zero
        (no score) where no block is kept or past the canvas."""
        out = np.zeros((self.channels, max(0, y1 - y0), max(0, x1 - x0)), np.uint8)
        w, h = self.size
        sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if sx1 <= sx0 or sy1 <= sy0:
            return out
        b = self.BLOCK
        for by in range(sy0 // b, (sy1 - 1) // b + 1):
            for bx in range(sx0 // b, (sx1 - 1) // b + 1):
                block = self.blocks.get((by, bx))
                if block is None:
                    continue
                ya, yb = max(sy0, by * b), min(sy1, (by + 1) * b)
                xa, xb = max(sx0, bx * b), min(sx1, (bx + 1) * b)
                out[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = block[
                    :, ya - by * b : yb - by * b, xa - bx * b : xb - bx * b
                ]
        return out

    def answered(self, t: Tile) -> None:
        """A coarse tile that ran: its core has an answer."""
        self.ran[t.row, t.col] = True

    def _known(self, x0: int, y0: int, x1: int, y1: int) -> bool:
        """Whether every coarse tile whose core meets canvas pixels [x0, x1) x [y0, y1) ran."""
        stride, half = self.plan.stride, self.plan.overlap // 2
        rows, cols = self.ran.shape
        c0, c1 = max(0, (x0 - half) // stride), min(cols - 1, (x1 - 1 - half) // stride)
        r0, r1 = max(0, (y0 - half) // stride), min(rows - 1, (y1 - 1 - half) // stride)
        return bool(self.ran[r0 : r1 + 1, c0 : c1 + 1].all())

    def _box(self, x: float, y: float, side_x: float, side_y: float) -> tuple[float, float, float, float]:
        """A level-0 rectangle in coarse canvas pixels (pixel i spans [i, i + 1))."""
        step = self.plan.level0_per_model
        cx, cy = self.plan.model_to_level0(0, 0)
        return (x - cx) / step, (y - cy) / step, (x + side_x - cx) / step, (y + side_y - cy) / step

    def refine(self, fine: TilePlan, tiles: list[Tile], scheme: ClassScheme, rule: RefineRule) -> list[Tile]:
        """Of `tiles` (fine tissue tiles), those to run at full resolution under `rule`."""
        level = math.ceil(rule.level * 255 - 1e-6)
        min_px = rule.min_um2 / (self.mpp * self.mpp)
        w, h = self.size
        margin = fine.overlap / 2 if rule.margin_px is None else rule.margin_px
        m = (fine.overlap / 2 - margin) * fine.level0_per_model
        keep = []
        for t in tiles:
            x, y, side, _ = t.level0_rect(fine)
            bx0, by0, bx1, by1 = self._box(x + m, y + m, side - 2 * m, side - 2 * m)
            x0, y0 = max(0, int(bx0)), max(0, int(by0))
            x1, y1 = min(w, math.ceil(bx1)), min(h, math.ceil(by1))
            if x1 <= x0 or y1 <= y0 or not self._known(x0, y0, x1, y1):
                keep.append(t)
                continue
            found = np.count_nonzero(scheme.foreground_score(self.window(x0, y0, x1, y1)) >= level)
            if found and found >= min_px:
                keep.append(t)
        return keep

    def tile_answer(self, fine: TilePlan, t: Tile) -> np.ndarray:
        """(C, tile, tile) float32: the coarse answer over a fine tile's extent, bilinear on the
        fine grid, to blend in place of the model's where the tile does not run."""
        x, y, side, _ = t.level0_rect(fine)
        bx0, by0, bx1, by1 = self._box(x, y, side, side)
        # A window one pixel wider than the box, zero (no answer) past the coarse canvas: PIL
        # takes no box that leaves the image.
        ix0, iy0 = math.floor(bx0) - 1, math.floor(by0) - 1
        ix1, iy1 = math.ceil(bx1) + 1, math.ceil(by1) + 1
        window = self.window(ix0, iy0, ix1, iy1)
        box = (bx0 - ix0, by0 - iy0, bx1 - ix0, by1 - iy0)
        out = np.empty((self.channels, fine.tile, fine.tile), np.float32)
        for k in range(self.channels):
            img = Image.fromarray(window[k]).resize((fine.tile, fine.tile), Image.BILINEAR, box=box)
            out[k] = np.asarray(img, np.float32)
        out *= 1.0 / 255.0
        return out


class CoarseBlender:
    """The coarse pass's blender: band by band into a `CoarseMap`, noting the tiles that ran."""

    def __init__(self, cmap: CoarseMap, tiles: list[Tile]):
        self.cmap = cmap
        self.bands = BandBlender(cmap.plan, cmap.channels, tiles, cmap.add_band)

    def add(self, t: Tile, prob: np.ndarray) -> None:
        self.cmap.answered(t)
        self.bands.add(t, prob)

    def skip(self, t: Tile) -> None:
        self.bands.skip(t)

    def close(self) -> None:
        self.bands.close()
