"""The NumPy tracer: its outlines are exactly the union of the foreground pixels."""

import numpy as np
import pytest
import shapely
from shapely.geometry import box

from app.core.pixel_rings import trace_rings
from app.core.tracing import trace_masked


def _pixels(grid: np.ndarray):
    ys, xs = np.nonzero(grid)
    return shapely.union_all([box(x, y, x + 1, y + 1) for x, y in zip(xs, ys, strict=True)])


def _blobs(seed: int, shape=(48, 64)) -> np.ndarray:
    """Blobby masks with holes and islands; saddles (pixels meeting at a corner) removed by
    growing every 2x2 window that has one, so the union of pixels is a valid polygon set."""
    rng = np.random.default_rng(seed)
    g = rng.random(shape) < 0.45
    for _ in range(2):  # a majority filter: blobs, not noise
        s = sum(np.roll(np.roll(g, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        g = s >= 5
    g[0], g[-1], g[:, 0], g[:, -1] = False, False, False, False
    while True:
        a, b, c, d = g[:-1, :-1], g[:-1, 1:], g[1:, :-1], g[1:, 1:]
        pinch = (a == d) & (b == c) & (a != b)
        if not pinch.any():
            return g
        ys, xs = np.nonzero(pinch)
        g[ys, xs] = g[ys, xs + 1] = g[ys + 1, xs] = g[ys + 1, xs + 1] = True


@pytest.mark.parametrize("seed", range(6))
def test_outlines_are_the_union_of_the_pixels_with_their_holes(seed):
    g = _blobs(seed)
    rings = trace_rings(g)
    assert rings.area.sum() == g.sum()  # outlines less holes: every pixel once
    assert (rings.area < 0).any() or seed > 2 or (rings.area > 0).sum() > 1
    polys = trace_masked(g.astype(np.uint8) * 255, 128, 1.0, (0.0, 0.0))
    assert all(p.is_valid for p in polys)
    got = shapely.union_all(polys)
    assert got.symmetric_difference(_pixels(g)).area == 0
    assert sum(p.area for p in polys) == g.sum()  # no overlaps between parts


def test_holes_go_to_their_own_outline_when_outlines_nest():
    g = np.zeros((20, 20), bool)
    g[1:19, 1:19] = True  # outline
    g[3:17, 3:17] = False  # its hole
    g[6:14, 6:14] = True  # an island in the hole
    g[9:11, 9:11] = False  # the island's hole
    polys = sorted(trace_masked(g.astype(np.uint8) * 255, 128, 1.0, (0.0, 0.0)), key=lambda p: -p.area)
    assert [len(p.interiors) for p in polys] == [1, 1]
    assert [p.area for p in polys] == [18 * 18 - 14 * 14, 8 * 8 - 4]


def test_pixels_touching_at_a_corner_are_bridged_into_one_valid_outline():
    g = np.zeros((6, 6), bool)
    g[1, 1] = g[2, 2] = True  # a figure of eight if traced as is
    g[1, 5] = g[2, 4] = True  # the other diagonal
    rings = trace_rings(g, bridge=False)
    assert rings.pinched
    rings = trace_rings(g, bridge=True)
    assert not rings.pinched and len(rings) == 2 and list(rings.area) == [3.0, 3.0]


def test_scale_offset_and_simplification_stay_on_the_map_grid():
    g = np.zeros((30, 30), np.uint8)
    yy, xx = np.mgrid[:30, :30]
    g[(yy - 15) ** 2 + (xx - 15) ** 2 < 100] = 255  # a staircase circle
    exact = trace_masked(g, 128, 2.0, (10.0, 20.0))
    thin = trace_masked(g, 128, 2.0, (10.0, 20.0), simplify=5.0)
    assert len(exact) == len(thin) == 1 and thin[0].is_valid
    assert exact[0].bounds == (10.0 + 2 * 6, 20.0 + 2 * 6, 10.0 + 2 * 25, 20.0 + 2 * 25)
    assert len(thin[0].exterior.coords) < len(exact[0].exterior.coords)
    assert exact[0].hausdorff_distance(thin[0]) < 2.0 * 0.5  # under half a map pixel
