"""Write tiled pyramidal TIFFs that OpenSlide, QuPath and ASAP open.

Each level is a top-level TIFF page (OpenSlide ignores SubIFD pyramids). An Aperio-style
ImageDescription carries the pixel size so OpenSlide reports `mpp` (QuPath and ASAP read the
resolution tags as well). Tiles are streamed one at a time, so a pyramid larger than memory can
be written from a callable source.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile

from app.core import resample

# source(level, x, y, w, h) -> array (h, w[, c]) in that level's pixel grid.
RegionSource = Callable[[int, int, int, int, int], np.ndarray]


def level_sizes(width: int, height: int, factor: int = 2, min_side: int = 256) -> list[tuple[int, int]]:
    """Level sizes from full size down until the longer side is at most `min_side`."""
    sizes = [(width, height)]
    while max(sizes[-1]) > min_side:
        w, h = sizes[-1]
        sizes.append((max(1, -(-w // factor)), max(1, -(-h // factor))))
    return sizes


def _tiles(
    source: RegionSource, level: int, w: int, h: int, tile: int, channels: int, dtype
) -> Iterator[np.ndarray]:
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            tw, th = min(tile, w - x), min(tile, h - y)
            data = np.asarray(source(level, x, y, tw, th), dtype=dtype)
            if data.ndim == 2:
                data = data[..., None]
            if data.shape[:2] != (th, tw):
                raise ValueError(f"source returned {data.shape[:2]} for a {th}x{tw} tile")
            if (tw, th) != (tile, tile):  # edge tiles are padded to the full tile size
                pad = np.zeros((tile, tile, channels), dtype)
                pad[:th, :tw] = data
                data = pad
            yield data if channels > 1 else data[..., 0]


def write_pyramidal_tiff(
    path: str | Path,
    source: RegionSource,
    sizes: list[tuple[int, int]],
    *,
    channels: int = 3,
    dtype=np.uint8,
    mpp: float | None = None,
    tile: int = 512,
    compression: str = "jpeg",
    quality: int = 90,
    atomic: bool = True,
) -> Path:
    """Write the pyramid atomically: a partial file never takes `path`'s name. `atomic=False`
    writes `path` itself, for a caller whose `path` is already its own temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial") if atomic else path
    photometric = "rgb" if channels == 3 else "minisblack"
    w0, h0 = sizes[0]
    desc = f"Aperio Image Library Delineo\n{w0}x{h0} [0,0 {w0}x{h0}] ({tile}x{tile})"
    if mpp:
        desc += f"|MPP = {mpp:.6f}"
    comp_args = {"level": quality} if compression == "jpeg" else None
    try:
        with tifffile.TiffWriter(tmp, bigtiff=w0 * h0 * channels > 2**31) as tif:
            for level, (w, h) in enumerate(sizes):
                ds = w0 / w
                res = None
                if mpp:
                    px_per_cm = 1e4 / (mpp * ds)
                    res = (px_per_cm, px_per_cm)
                tif.write(
                    _tiles(source, level, w, h, tile, channels, dtype),
                    shape=(h, w, channels) if channels > 1 else (h, w),
                    dtype=dtype,
                    tile=(tile, tile),
                    photometric=photometric,
                    compression=compression,
                    compressionargs=comp_args,
                    description=desc if level == 0 else f"Aperio Image Library Delineo\n{w0}x{h0} -> {w}x{h}",
                    subfiletype=0 if level == 0 else 1,
                    resolution=res,
                    resolutionunit="CENTIMETER" if res else None,
                    metadata=None,
                )
            tif._fh.flush()
            os.fsync(tif._fh._fh.fileno())
        if tmp != path:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def array_source(level0: np.ndarray, sizes: list[tuple[int, int]], binary: bool = False) -> RegionSource:
    """A source over an in-memory level-0 array; lower levels are area-averaged (or, for
    label masks, nearest) and computed once each."""
    cache: dict[int, np.ndarray] = {0: level0}

    def level_array(level: int) -> np.ndarray:
        if level not in cache:
            prev = level_array(level - 1)
            w, h = sizes[level]
            cache[level] = (resample.nearest if binary else resample.area_downscale)(prev, (w, h))
        return cache[level]

    def source(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return level_array(level)[y : y + h, x : x + w]

    return source


def periodic_source(period_image: np.ndarray, sizes: list[tuple[int, int]]) -> RegionSource:
    """A source that repeats `period_image` over the whole level 0; every level is a true
    downsample of it. Builds benchmark-scale pyramids (20k-100k px) from a few real tiles."""
    w0 = sizes[0][0]
    scaled: dict[int, np.ndarray] = {}

    def source(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        if level not in scaled:
            ds = w0 / sizes[level][0]
            side_x = max(1, round(period_image.shape[1] / ds))
            side_y = max(1, round(period_image.shape[0] / ds))
            scaled[level] = resample.area_downscale(period_image, (side_x, side_y))
        m = scaled[level]
        ys = np.arange(y, y + h) % m.shape[0]
        xs = np.arange(x, x + w) % m.shape[1]
        return m[ys[:, None], xs[None, :]]

    return source
