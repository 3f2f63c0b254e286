"""A whole slide assembled from labelled tiles, with its ground truth, to measure delineation
end to end (tiling, resampling, blending, vectorizing) where a real slide has no labels.

Tiles of every class are laid out in a shuffled grid, so tumour borders benign mucosa as on a
real section; empty cells stay glass. The slide is written as a pyramidal TIFF at a known mpp,
upscaled from the tiles' own resolution so the pipeline must pick and resample levels as it
would on a 20x/40x scan.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from app.core.dataset import load_image, load_target, read_manifest
from app.core.pyramid_tiff import array_source, level_sizes, write_pyramidal_tiff

GLASS = 242


@dataclass
class MosaicSlide:
    slide: Path
    truth: np.ndarray  # bool, at the tiles' own resolution (tile_mpp)
    tile_mpp: float
    slide_mpp: float
    tiles: int
    tumour_tiles: int


def build_mosaic_slide(
    manifest: str | Path,
    out_dir: str | Path,
    split: str | None = "val",
    tile_mpp: float = 1.0,
    upscale: int = 4,
    seed: int = 0,
    limit: int | None = None,
    pyramid: bool = True,
) -> MosaicSlide:
    """The mosaic slide of `split`'s tiles at `tile_mpp / upscale`; `pyramid=False` writes only
    the full-resolution level, as single-level scans are, so the pipeline must resample."""
    pairs = read_manifest(manifest, split)
    rng = np.random.default_rng(seed)
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    if limit:
        pairs = pairs[:limit]
    side = load_image(pairs[0]).shape[0]
    cols = math.ceil(math.sqrt(len(pairs)))
    rows = math.ceil(len(pairs) / cols)
    img = np.full((rows * side, cols * side, 3), GLASS, np.uint8)
    truth = np.zeros((rows * side, cols * side), bool)
    for k, p in enumerate(pairs):
        r, c = divmod(k, cols)
        tile, target = load_image(p), load_target(p)
        if tile.shape[:2] != (side, side):
            tile = cv2.resize(tile, (side, side), interpolation=cv2.INTER_AREA)
            target = cv2.resize(target, (side, side), interpolation=cv2.INTER_NEAREST)
        img[r * side : (r + 1) * side, c * side : (c + 1) * side] = tile
        truth[r * side : (r + 1) * side, c * side : (c + 1) * side] = target.astype(bool)
    big = cv2.resize(img, (img.shape[1] * upscale, img.shape[0] * upscale), interpolation=cv2.INTER_CUBIC)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slide_path = out / f"mosaic-{split}.tif"
    sizes = level_sizes(big.shape[1], big.shape[0], 2, 256)
    if not pyramid:
        sizes = sizes[:1]
    slide_mpp = tile_mpp / upscale
    write_pyramidal_tiff(slide_path, array_source(big, sizes), sizes, mpp=slide_mpp, quality=92)
    (out / f"mosaic-{split}.json").write_text(
        json.dumps(
            {
                "tiles": [str(p.image) for p in pairs],
                "cols": cols,
                "tile_px": side,
                "tile_mpp": tile_mpp,
                "slide_mpp": slide_mpp,
            },
            indent=1,
        )
    )
    return MosaicSlide(
        slide_path, truth, tile_mpp, slide_mpp, len(pairs), sum(p.is_tumour_class for p in pairs)
    )
