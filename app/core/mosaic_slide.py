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

import numpy as np

from app.core import resample
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
        _paste(img, truth, p, *divmod(k, cols), side)
    return _write(img, truth, pairs, cols, side, out_dir, f"mosaic-{split}", tile_mpp, upscale, pyramid)


def _paste(img: np.ndarray, truth: np.ndarray, pair, row: int, col: int, side: int) -> None:
    """One labelled tile and its truth into cell (row, col), resized to the cell if need be."""
    tile, target = load_image(pair), load_target(pair)
    if tile.shape[:2] != (side, side):
        tile = resample.area_downscale(tile, (side, side))
        target = resample.nearest(target, (side, side))
    img[row * side : (row + 1) * side, col * side : (col + 1) * side] = tile
    truth[row * side : (row + 1) * side, col * side : (col + 1) * side] = target.astype(bool)


def _write(img, truth, pairs, cols, side, out_dir, stem, tile_mpp, upscale, pyramid) -> MosaicSlide:
    big = resample.bicubic(img, (img.shape[1] * upscale, img.shape[0] * upscale))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slide_path = out / f"{stem}.tif"
    sizes = level_sizes(big.shape[1], big.shape[0], 2, 256)
    if not pyramid:
        sizes = sizes[:1]
    slide_mpp = tile_mpp / upscale
    write_pyramidal_tiff(slide_path, array_source(big, sizes), sizes, mpp=slide_mpp, quality=92)
    (out / f"{stem}.json").write_text(
        json.dumps(
            {
                "tiles": [str(p.image) for p in pairs],
                "cols": cols,
                "tile_px": side,
                "tile_mpp": tile_mpp,
                "slide_mpp": slide_mpp,
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    tumour = sum(p.is_tumour_class for p in pairs if p is not None)
    return MosaicSlide(slide_path, truth, tile_mpp, slide_mpp, sum(p is not None for p in pairs), tumour)


def build_section_slide(
    manifest: str | Path,
    out_dir: str | Path,
    split: str | None = "val",
    tile_mpp: float = 1.0,
    upscale: int = 2,
    tumour_share: float = 0.15,
    side_cells: int = 18,
    seed: int = 0,
) -> MosaicSlide:
    """A mock section, as a slide to time whole-slide runs on: a disc of tissue cells in glass,
    `tumour_share` of them adenocarcinoma in one contiguous focus (tumour grows as a mass, not
    as scattered tiles), the rest benign and pre-invasive mucosa of every other class, in a
    shuffled order. Cells are the split's labelled tiles, each used once."""
    pairs = read_manifest(manifest, split)
    rng = np.random.default_rng(seed)
    tumour = [pairs[i] for i in rng.permutation(len(pairs)) if pairs[i].is_tumour_class]
    benign = [pairs[i] for i in rng.permutation(len(pairs)) if not pairs[i].is_tumour_class]
    c = (side_cells - 1) / 2
    disc = [
        (r, q)
        for r in range(side_cells)
        for q in range(side_cells)
        if (r - c) ** 2 + (q - c) ** 2 <= (c - 1) ** 2
    ]
    n_tumour = min(len(tumour), round(tumour_share * len(disc)))
    # The focus: the cells nearest a point off centre, so it borders benign mucosa on all sides.
    fy, fx = c - c / 3, c + c / 3
    by_distance = sorted(disc, key=lambda rq: (rq[0] - fy) ** 2 + (rq[1] - fx) ** 2)
    focus = set(by_distance[:n_tumour])
    others = [rq for rq in disc if rq not in focus][: len(benign)]
    side = load_image(tumour[0]).shape[0]
    img = np.full((side_cells * side, side_cells * side, 3), GLASS, np.uint8)
    truth = np.zeros(img.shape[:2], bool)
    placed = list(zip(sorted(focus), tumour, strict=False)) + list(zip(others, benign, strict=False))
    for (r, q), p in placed:
        _paste(img, truth, p, r, q, side)
    stem = f"section-{split}"
    return _write(
        img, truth, [p for _, p in placed], side_cells, side, out_dir, stem, tile_mpp, upscale, True
    )
