"""Cover a painted region with overlapping model tiles, and blend their outputs without seams.

Three coordinate systems meet here: level-0 pixels (the region, the annotations), the pixels of
the pyramid level that is read (`read_level`), and model pixels (the slide resampled to the
model card's mpp). `TilePlan` holds the conversions.

Blending: each tile's weight ramps linearly across the overlap, so a tile's edge (where the
model saw least context) counts least, and the result is sum(w * p) / sum(w). Normalizing by the
accumulated weight keeps the map exact next to tiles that were never run: background tiles,
unreadable ones, tiles after a Cancel, tiles outside the region.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import shapely
import shapely.prepared
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from app.core.slide import Slide
from app.errors import DelineoError

MPP_TOLERANCE = 0.10  # read a level as-is when its mpp is within 10% of the model's


class TilingError(DelineoError):
    pass


@dataclass(frozen=True)
class LevelChoice:
    level: int
    level_mpp: float  # of what is read: the level, shrunk by `reduction`
    scale: float  # model pixels per read pixel (1.0 = no resampling)
    slide_mpp: float
    mpp_assumed: bool  # the slide has no mpp: the card's default was used
    reduction: int = 1  # the level decoded at 1/reduction size (see Slide.reductions)

    @property
    def resampled(self) -> bool:
        return self.scale != 1.0

    def describe(self) -> str:
        """e.g. "level 0 at 1/2 (0.998 µm/px)"."""
        at = f" at 1/{self.reduction}" if self.reduction > 1 else ""
        return f"level {self.level}{at} ({self.level_mpp:.3g} µm/px)"


def choose_level(slide: Slide, model_mpp: float, slide_mpp: float | None = None) -> LevelChoice:
    """The level whose mpp is nearest the model's; resample when none is within 10%.

    A level the slide can decode smaller (a tiled JPEG at 1/2, 1/4, 1/8: `Slide.reductions`)
    counts as the levels it gives, so a 0.5 µm/px scan is read at 1 µm/px without resampling;
    between equals, the stored level wins (less to decode). When resampling, read the finest
    level that is not coarser than the model (downsampling keeps detail, upsampling invents
    it); upsample only when level 0 is already too coarse.
    """
    assumed = False
    if slide_mpp is None:
        if slide.mpp is None:
            slide_mpp, assumed = model_mpp, True
        else:
            slide_mpp = float(np.mean(slide.mpp))
    # (mpp, reduction, level) for every stored level and every size it decodes at.
    reads = [
        (slide_mpp * d * r, r, level)
        for level, d in enumerate(slide.level_downsamples)
        for r in slide.reductions(level)
    ]
    mpp, reduction, level = min(reads, key=lambda c: (abs(math.log(c[0] / model_mpp)), c[1]))
    if abs(mpp / model_mpp - 1) <= MPP_TOLERANCE:
        return LevelChoice(level, mpp, 1.0, slide_mpp, assumed, reduction)
    finer = [c for c in reads if c[0] <= model_mpp]
    mpp, reduction, level = (
        max(finer, key=lambda c: (c[0], -c[1])) if finer else min(reads, key=lambda c: (c[0], c[1]))
    )
    return LevelChoice(level, mpp, mpp / model_mpp, slide_mpp, assumed, reduction)


@dataclass(frozen=True)
class Tile:
    index: int
    col: int
    row: int
    mx: int  # origin in model pixels
    my: int

    def level0_rect(self, plan: TilePlan) -> tuple[float, float, float, float]:
        s = plan.level0_per_model
        return self.mx * s, self.my * s, plan.tile * s, plan.tile * s


@dataclass
class TilePlan:
    """Tiles of `tile` model pixels, stride `tile - overlap`, covering a region."""

    choice: LevelChoice
    downsample: float  # level-0 pixels per read pixel (the level's, times the reduction)
    tile: int
    overlap: int
    origin: tuple[int, int]  # model-pixel origin of the output canvas
    size: tuple[int, int]  # canvas (width, height) in model pixels
    tiles: list[Tile] = field(default_factory=list)

    @property
    def level0_per_model(self) -> float:
        return self.downsample / self.choice.scale

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    def read_rect(self, t: Tile) -> tuple[int, int, int, int]:
        """(x0, y0) in level-0 pixels and (w, h) in read pixels to read for a tile."""
        x, y, _, _ = t.level0_rect(self)
        side = math.ceil(self.tile / self.choice.scale)
        return round(x), round(y), side, side

    def canvas_slice(self, t: Tile) -> tuple[slice, slice]:
        ox, oy = self.origin
        return slice(t.my - oy, t.my - oy + self.tile), slice(t.mx - ox, t.mx - ox + self.tile)

    def model_to_level0(self, mx: float, my: float) -> tuple[float, float]:
        s = self.level0_per_model
        return (mx + self.origin[0]) * s, (my + self.origin[1]) * s


def plan_tiles(
    slide: Slide,
    region: BaseGeometry,
    model_mpp: float,
    tile: int,
    overlap: int,
    multiple: int = 16,
    slide_mpp: float | None = None,
) -> TilePlan:
    """Tiles whose full-weight core touches the region, in row-major order."""
    if region.is_empty:
        raise TilingError("the region is empty: paint or draw a region first")
    if tile % multiple or tile <= 2 * overlap:
        raise TilingError(f"tile {tile} must be a multiple of {multiple} and larger than twice the overlap")
    w0, h0 = slide.dimensions
    region = region.intersection(box(0, 0, w0, h0))
    if region.is_empty:
        raise TilingError("the region lies outside the slide")
    choice = choose_level(slide, model_mpp, slide_mpp)
    downsample = slide.level_downsamples[choice.level] * choice.reduction
    m = choice.scale / downsample  # model pixels per level-0 pixel
    minx, miny, maxx, maxy = region.bounds
    stride = tile - overlap
    # The grid starts one overlap before the region, so every region pixel gets full weight.
    gx0, gy0 = math.floor(minx * m) - overlap, math.floor(miny * m) - overlap
    # Enough tiles that the last one's full-weight part reaches past the region's far edge.
    cols = max(1, math.ceil((math.ceil(maxx * m) - gx0) / stride))
    rows = max(1, math.ceil((math.ceil(maxy * m) - gy0) / stride))
    plan = TilePlan(
        choice, downsample, tile, overlap, (gx0, gy0), (cols * stride + overlap, rows * stride + overlap)
    )
    prepared = shapely.prepared.prep(region)
    for r in range(rows):
        for c in range(cols):
            mx, my = gx0 + c * stride, gy0 + r * stride
            core = box(
                (mx + overlap / 2) / m,
                (my + overlap / 2) / m,
                (mx + tile - overlap / 2) / m,
                (my + tile - overlap / 2) / m,
            )
            if prepared.intersects(core):
                plan.tiles.append(Tile(len(plan.tiles), c, r, mx, my))
    return plan


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """2-D weights, linear ramps over the overlap (shifted copies at the stride sum to 1)."""
    ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
    w = np.ones(tile, np.float32)
    w[:overlap] = ramp
    w[tile - overlap :] = ramp[::-1]
    return np.outer(w, w)


class Blender:
    """Weighted tile outputs per class channel and their weights at model resolution, in 16-bit
    fixed point: 2 bytes a pixel per channel plus 2 for the shared weight (one channel: a 1 cm²
    region at 1 µm/px needs 400 MB), integer SIMD adds instead of NumPy's slow float16, and 4x
    float16's precision. A pixel is covered by at most four tiles (overlap < half a tile), so
    sums stay below 4 * ONE < 2**16."""

    ONE = 16383

    def __init__(self, plan: TilePlan, channels: int = 1):
        if plan.overlap * 2 > plan.tile:
            raise TilingError("overlap must be at most half the tile for blending")
        self.plan = plan
        w, h = plan.size
        self.acc = np.zeros((channels, h, w), np.uint16)
        self.weight = np.zeros((h, w), np.uint16)
        self.window = blend_window(plan.tile, plan.overlap) * self.ONE
        self._window16 = np.rint(self.window).astype(np.uint16)

    @property
    def channels(self) -> int:
        return self.acc.shape[0]

    def skip(self, t: Tile) -> None:
        """A tile that will not be added (unreadable): the map keeps no count of it."""

    def close(self) -> None:
        """Nothing to finish: the whole map is kept."""

    def add(self, t: Tile, prob: np.ndarray) -> None:
        """One tile's class probabilities (C, tile, tile)."""
        ys, xs = self.plan.canvas_slice(t)
        contribution = np.multiply(
            prob.reshape(self.channels, *prob.shape[-2:]), self.window, dtype=np.float32
        )
        contribution += 0.5
        self.acc[:, ys, xs] += contribution.astype(np.uint16)
        self.weight[ys, xs] += self._window16

    def _bands(self, rows: int = 256) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """(rows, acc (C, n, w), weight (n, w)) in float32, band by band, in two buffers reused
        throughout: the temporary memory stays small and cache-resident. Weight is at least 1:
        where no tile ran, acc is 0, so the probability there is 0."""
        c, h, width = self.acc.shape
        acc = np.empty((c, rows, width), np.float32)
        weight = np.empty((rows, width), np.float32)
        for y in range(0, h, rows):
            n = min(rows, h - y)
            a, w = acc[:, :n], weight[:n]
            np.copyto(a, self.acc[:, y : y + n])
            np.copyto(w, self.weight[y : y + n])
            np.maximum(w, 1, out=w)
            yield slice(y, y + n), a, w

    def probability_u8(self) -> np.ndarray:
        """The blended map (C, H, W) as uint8 (255 = 1.0, rounded; 0 where no tile ran): what a
        run keeps to re-trace, and what its outline is traced from."""
        out = np.empty(self.acc.shape, np.uint8)
        for band, a, w in self._bands():
            np.multiply(a, 255.0, out=a)
            np.divide(a, w, out=a)
            a += 0.5
            np.minimum(a, 255.0, out=a)
            out[:, band] = a
        return out

    def probability(self) -> np.ndarray:
        """The blended map (C, H, W) float16; 0 where no tile ran."""
        out = np.empty(self.acc.shape, np.float16)
        for band, a, w in self._bands():
            np.divide(a, w, out=a)
            out[:, band] = a
        return out


class BandBlender:
    """A Blender that keeps only the bands of canvas rows some tile still to run overlaps: each
    band is handed to `on_band(first_row, probability_u8 (C, rows, width))` and freed as soon as
    its last tile is in, so memory follows the width of the region, not its area. Band borders
    fall on multiples of `multiple` rows (the tracing grid's block size)."""

    def __init__(self, plan: TilePlan, channels: int, to_run: list[Tile], on_band, multiple: int = 1):
        if plan.overlap * 2 > plan.tile:
            raise TilingError("overlap must be at most half the tile for blending")
        self.plan, self.channels, self.on_band = plan, channels, on_band
        width, height = plan.size
        stride, oy = plan.stride, plan.origin[1]
        n = max(1, math.ceil(height / stride))
        # Cut where a tile row starts and where its overlap with the row above ends: rows of
        # one tile row's reach are then open at a time (a tile's height), not two strides.
        starts = [k * stride + d for k in range(n) for d in (0, plan.overlap)]
        cuts = sorted({min(height, y // multiple * multiple) for y in starts} | {0, height})
        self.bands = list(itertools.pairwise(cuts))  # (first row, end row)
        self.window = blend_window(plan.tile, plan.overlap) * Blender.ONE
        self._window16 = np.rint(self.window).astype(np.uint16)
        self.width = width
        self._touching = {}  # tile -> band indices it writes into
        self.remaining = [0] * len(self.bands)
        for t in to_run:
            y0 = t.my - oy
            ks = [k for k, (a, b) in enumerate(self.bands) if a < y0 + plan.tile and b > y0]
            self._touching[t] = ks
            for k in ks:
                self.remaining[k] += 1
        self.open: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.done_bands: set[int] = set()
        for k, left in enumerate(self.remaining):
            if left == 0:
                self.done_bands.add(k)  # nothing will run there: nothing to outline

    def _band(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k not in self.open:
            a, b = self.bands[k]
            self.open[k] = (
                np.zeros((self.channels, b - a, self.width), np.uint16),
                np.zeros((b - a, self.width), np.uint16),
            )
        return self.open[k]

    def add(self, t: Tile, prob: np.ndarray) -> None:
        """One tile's class probabilities (C, tile, tile); a band it completes is finished."""
        ys, xs = self.plan.canvas_slice(t)
        contribution = np.multiply(
            prob.reshape(self.channels, *prob.shape[-2:]), self.window, dtype=np.float32
        )
        contribution += 0.5
        contribution = contribution.astype(np.uint16)
        for k in self._touching.get(t, ()):
            a, b = self.bands[k]
            lo, hi = max(a, ys.start), min(b, ys.stop)
            acc, weight = self._band(k)
            acc[:, lo - a : hi - a, xs] += contribution[:, lo - ys.start : hi - ys.start]
            weight[lo - a : hi - a, xs] += self._window16[lo - ys.start : hi - ys.start]
        self.skip(t)

    def skip(self, t: Tile) -> None:
        """A tile that will not be added (unreadable): its bands need it no longer."""
        for k in self._touching.pop(t, ()):
            self.remaining[k] -= 1
            if self.remaining[k] == 0:
                self._finish(k)

    def close(self) -> None:
        """Finish every band still open (a cancelled or failed run), in order."""
        for k in sorted(self.open):
            self._finish(k)
        self._touching.clear()

    def _finish(self, k: int) -> None:
        if k in self.done_bands:
            return
        self.done_bands.add(k)
        acc, weight = self.open.pop(k, (None, None))
        if acc is None:
            return
        out = np.empty(acc.shape, np.uint8)
        for y in range(0, acc.shape[1], 64):  # 64 rows at a time: small float temporaries
            w = np.maximum(weight[y : y + 64], 1).astype(np.float32)
            for c in range(self.channels):
                a = acc[c, y : y + 64].astype(np.float32)
                a *= 255.0
                a /= w
                a += 0.5
                np.minimum(a, 255.0, out=a)
                out[c, y : y + 64] = a
        del acc, weight
        self.on_band(self.bands[k][0], out)
