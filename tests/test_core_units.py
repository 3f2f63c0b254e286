"""The small pure pieces the viewer stands on."""

from __future__ import annotations

import io

import numpy as np
import pytest
import shapely
from PIL import Image
from shapely.geometry import MultiPolygon, Point, Polygon, box

from app.core import resample
from app.core.geometry import rasterize
from app.core.jpeg_markers import jpeg_colour_space, jpeg_frame_size
from app.core.lru_cache import ByteLRU
from app.core.scale import magnification, nice_length, scale_bar
from app.core.tile_grid import TileGrid


def test_lru_is_bounded_by_bytes_and_evicts_least_recent():
    c = ByteLRU(100)
    c.put("a", 1, 40)
    c.put("b", 2, 40)
    assert c.get("a") == 1  # "b" is now the least recently used
    c.put("c", 3, 40)
    assert "b" not in c and "a" in c and "c" in c
    assert c.nbytes == 80
    c.put("huge", 4, 1000)  # larger than the whole cache: not kept, nothing evicted
    assert "huge" not in c and len(c) == 2
    assert c.hits == 1 and c.misses == 0


@pytest.mark.parametrize("target, expected", [(123, 100), (250, 200), (999, 500), (0.7, 0.5), (5, 5)])
def test_nice_length(target, expected):
    assert nice_length(target) == pytest.approx(expected)


def test_scale_bar_length_matches_label():
    px, label = scale_bar(0.25, zoom=0.1)  # 2.5 µm per screen pixel
    assert label == "200 µm" and px == pytest.approx(80)
    px, label = scale_bar(0.5, zoom=0.01)
    assert label == "5 mm" and px == pytest.approx(100)
    px, label = scale_bar(None, zoom=0.5)
    assert label == "200 px" and px == pytest.approx(100)
    assert magnification(40, 0.25, 0.25) == pytest.approx(10)
    assert magnification(None, 0.5, 1.0) == pytest.approx(20)
    assert magnification(None, None, 1.0) is None


def test_tile_grid_covers_rectangles_nearest_first():
    g = TileGrid(((20000, 10000), (10000, 5000), (5000, 2500)), tile=512)
    assert g.grid_size(0) == (40, 20)
    keys = g.tiles_in(1, 4000, 2000, 3000, 1000)  # level-0 rect; level 1 is 2x downsampled
    cols = {k[1] for k in keys}
    rows = {k[2] for k in keys}
    assert cols == set(range(3, 7)) and rows == set(range(1, 3))
    centre = (4000 + 1500) / 1024 - 0.5, (2000 + 500) / 1024 - 0.5
    d = [(k[1] - centre[0]) ** 2 + (k[2] - centre[1]) ** 2 for k in keys]
    assert d == sorted(d)
    assert g.tile_rect((0, 39, 19)) == (39 * 512, 19 * 512, 20000 - 39 * 512, 10000 - 19 * 512)
    assert g.tiles_in(0, 30000, 0, 100, 100) == []


def test_tile_grid_adds_reduced_jpeg_sizes_between_levels(large_pyramid):
    """Levels at 4x steps (as Aperio writes them) get the JPEG half sizes between them; a
    pyramid at 2x steps has nothing to add; reads land on the source level's own pixels."""
    from app.core.slide import Slide

    class FourXSvs:  # an Aperio 20x pyramid's geometry: levels at 1, 4, 16
        level_dimensions = ((40000, 30000), (10000, 7500), (2500, 1875))

        def reductions(self, level):
            return (1, 2, 4, 8)

    g = TileGrid.for_slide(FourXSvs())
    assert [round(g.downsample(i)) for i in range(len(g.level_dimensions))] == [1, 2, 4, 8, 16, 32]
    assert [g.describe(i) for i in range(5)] == [
        "level 0",
        "level 0 at 1/2",
        "level 1",
        "level 1 at 1/2",  # not level 0 at 1/8: a quarter of the JPEG data to decode
        "level 2",
    ]
    assert g.level_for_downsample(3.0) == 1 and g.level_for_downsample(2.0) == 1
    assert g.read_args((1, 3, 2)) == (3 * 512 * 2, 2 * 512 * 2, 0, 512, 512, 2)
    assert g.read_args((3, 1, 1)) == (512 * 8, 512 * 8, 1, 512, 512, 2)
    with Slide.open(large_pyramid) as s:
        grid = TileGrid.for_slide(s)
        assert grid.level_dimensions == tuple(s.level_dimensions) and grid.sources == ()


def test_jpeg_colour_space_from_markers():
    rgb = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG")  # JFIF, YCbCr
    assert jpeg_colour_space(b"DICM-header" + buf.getvalue()) == "ycbcr"
    buf = io.BytesIO()
    Image.fromarray(rgb[..., 0]).save(buf, "JPEG")
    assert jpeg_colour_space(buf.getvalue()) is None  # grey: one component
    assert jpeg_colour_space(b"no jpeg here") is None


def test_jpeg_frame_size_is_read_from_the_start_of_frame():
    buf = io.BytesIO()
    Image.new("RGB", (37, 21), (10, 200, 30)).save(buf, "JPEG")
    assert jpeg_frame_size(buf.getvalue()) == (37, 21)
    assert jpeg_frame_size(b"\xff\xd8\xff\xda\x00\x02") is None  # scan before any frame


def test_rasterize_sets_exactly_the_pixels_whose_centres_are_inside():
    """Discs with holes cut out, at fractional scales and offsets, against shapely's own
    point-in-polygon test at every pixel centre (OpenCV's fillPoly missed 2.6% of them)."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        parts = [Point(rng.uniform(0, 400), rng.uniform(0, 300)).buffer(rng.uniform(5, 60)) for _ in range(5)]
        holes = [Point(rng.uniform(0, 400), rng.uniform(0, 300)).buffer(rng.uniform(3, 20)) for _ in range(3)]
        geom = shapely.union_all(parts).difference(shapely.union_all(holes))
        scale, offset = float(rng.choice([1.0, 2.0, 3.7])), (rng.uniform(-50, 50), rng.uniform(-50, 50))
        shape = (int(300 / scale) + 5, int(400 / scale) + 5)
        ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
        truth = shapely.contains_xy(geom, xs * scale + offset[0], ys * scale + offset[1])
        assert np.array_equal(rasterize(geom, shape, scale, offset), truth)


def test_rasterize_fills_overlapping_parts_and_clears_holes_on_pixel_edges():
    ring = box(10, 10, 50, 40).difference(box(20, 20, 30, 30))
    overlapping = MultiPolygon([ring, box(45, 5, 70, 15)])  # invalid: the parts overlap
    m = rasterize(overlapping, (60, 80), 1.0, (0.0, 0.0))
    want = np.zeros((60, 80), bool)
    want[10:40, 10:50] = True
    want[20:30, 20:30] = False
    want[5:15, 45:70] = True
    assert np.array_equal(m, want)
    assert not rasterize(Polygon(), (5, 5), 1.0, (0.0, 0.0)).any()
    assert rasterize(box(-100, -100, 100, 100), (5, 7), 1.0, (0.0, 0.0)).all()  # past every side
    assert not rasterize(box(-100, 0, -1, 5), (5, 7), 1.0, (0.0, 0.0)).any()  # left of the mask


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, bool])
@pytest.mark.parametrize("channels", [None, 2, 3])
def test_resampling_keeps_dtype_and_channels(dtype, channels):
    rng = np.random.default_rng(0)
    shape = (60, 90) if channels is None else (60, 90, channels)
    img = (rng.random(shape) * 255).astype(dtype) if dtype is not bool else rng.random(shape) < 0.5
    for resize, size in [
        (resample.area_downscale, (30, 20)),
        (resample.area_downscale, (41, 27)),
        (resample.bilinear, (180, 120)),
        (resample.bicubic, (180, 120)),
        (resample.nearest, (45, 30)),
    ]:
        out = resize(img, size)
        assert out.dtype == img.dtype and out.shape == (size[1], size[0], *shape[2:])


def test_area_downscale_by_a_whole_factor_is_the_block_mean():
    img = np.random.default_rng(0).random((40, 60, 3)).astype(np.float32)
    blocks = img.reshape(10, 4, 15, 4, 3).mean(axis=(1, 3))
    assert np.allclose(resample.area_downscale(img, (15, 10)), blocks, atol=1e-5)
    grey = (img[..., 0] * 255).astype(np.uint8)
    means = grey.reshape(10, 4, 15, 4).mean(axis=(1, 3))
    assert np.abs(resample.area_downscale(grey, (15, 10)) - means).max() <= 1  # rounded after each pass


def test_nearest_takes_the_pixel_under_each_centre():
    labels = np.arange(12, dtype=np.int32).reshape(3, 4)
    assert resample.nearest(labels, (2, 3)).tolist() == [[1, 3], [5, 7], [9, 11]]
    assert np.array_equal(resample.nearest(labels, (8, 6)), labels.repeat(2, axis=0).repeat(2, axis=1))
