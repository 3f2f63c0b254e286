"""The whole slide as the region: `tissue_regions` on the bundled slides and on drawn images,
and `delineo delineate --whole-slide`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from conftest import DICOM_DIR, SAMPLE_SVS, TCGA_SVS, run_delineo
from PIL import Image
from shapely.geometry import Point, shape

from app.core.slide import Slide
from app.core.tissue import (
    ASSUMED_MPP,
    WHOLE_SLIDE_MIN_SPECK_UM2,
    NoTissueError,
    tissue_mask,
    tissue_regions,
)

PINK = (200, 80, 160)  # saturated like eosin-stained tissue; glass is near white


def in_large_parts(mask: np.ndarray, min_px: float) -> np.ndarray:
    """The pixels of 8-connected parts of at least `min_px` pixels. Parts from shapely: each
    row's runs as boxes grown by 0.01 px, so diagonal neighbours join."""
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    ys, x0 = np.nonzero(edges == 1)
    _, x1 = np.nonzero(edges == -1)  # row-major, so each run's end pairs with its start
    runs = shapely.box(x0 - 0.01, ys - 0.01, x1 + 0.01, ys + 1.01)
    parts = shapely.get_parts(shapely.union_all(runs))
    large = shapely.union_all(parts[shapely.area(parts) >= min_px])
    yy, xx = np.nonzero(mask)
    out = np.zeros_like(mask, bool)
    out[yy, xx] = shapely.contains_xy(large, xx + 0.5, yy + 0.5)
    return out


def drawn_slide(tmp_path, blobs: list[tuple[int, int, int]], side: int = 2000):
    """A white image with pink discs (x, y, r) as a plain-image slide."""
    img = np.full((side, side, 3), 245, np.uint8)
    yy, xx = np.ogrid[:side, :side]
    for x, y, r in blobs:
        img[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = PINK
    path = tmp_path / "drawn.png"
    Image.fromarray(img).save(path)
    return path


@pytest.mark.parametrize("path", [SAMPLE_SVS, TCGA_SVS, DICOM_DIR], ids=["svs", "tcga", "dicom"])
def test_the_whole_slide_region_covers_all_tissue_and_leaves_out_glass(path):
    with Slide.open(path) as slide:
        tissue = tissue_mask(slide)
        region = tissue_regions(slide, tissue)
        w, h = slide.dimensions
    assert region.geom_type in ("Polygon", "MultiPolygon") and region.is_valid
    assert shapely.box(0, 0, w, h).buffer(1e-6).contains(region)
    # Every pixel of tissue larger than a speck (its centre, in level-0 px) lies inside the region.
    mask_px_um = (sum(slide.mpp) / 2 if slide.mpp else ASSUMED_MPP) / tissue.scale
    ys, xs = np.nonzero(in_large_parts(tissue.mask, WHOLE_SLIDE_MIN_SPECK_UM2 / mask_px_um**2))
    assert len(xs) > 0.95 * tissue.mask.sum()  # nearly all tissue is in such parts
    pick = np.random.default_rng(0).choice(len(xs), size=min(2000, len(xs)), replace=False)
    pts = shapely.points((xs[pick] + 0.5) / tissue.scale, (ys[pick] + 0.5) / tissue.scale)
    assert shapely.contains(region.buffer(1), pts).all()
    # Glass is left out: these slides have white around the tissue.
    assert region.area < 0.9 * w * h
    assert shapely.get_num_coordinates(region) <= 4000


def test_specks_are_dropped_and_a_margin_is_kept(tmp_path):
    # One tissue disc and dust: three 2-px dots far from it. Plain image: no mpp, 0.5 µm/px assumed.
    path = drawn_slide(tmp_path, [(1000, 1000, 400), (150, 150, 2), (1850, 150, 2), (150, 1850, 2)])
    with Slide.open(path) as slide:
        region = tissue_regions(slide)
    assert region.geom_type == "Polygon"  # the dust is gone
    assert not region.contains(Point(150, 150))
    # The margin (64 µm = 128 px here) keeps a tile's context past the tissue's edge.
    assert region.contains(Point(1000 + 400 + 100, 1000))
    assert not region.contains(Point(1000 + 400 + 250, 1000))


def test_too_many_parts_are_merged_never_dropped(tmp_path):
    blobs = [(200 + 500 * i, 200 + 500 * j, 100) for i in range(4) for j in range(4)]  # 16 islands
    path = drawn_slide(tmp_path, blobs)
    with Slide.open(path) as slide:
        assert len(tissue_regions(slide).geoms) == 16  # apart, with the usual margin
        region = tissue_regions(slide, max_parts=4)
    parts = list(getattr(region, "geoms", [region]))
    assert len(parts) <= 4
    assert all(region.contains(Point(x, y)) for x, y, _ in blobs)


def test_a_slide_with_no_tissue_says_so_and_what_to_do(tmp_path):
    path = drawn_slide(tmp_path, [])
    with (
        Slide.open(path) as slide,
        pytest.raises(NoTissueError, match=r"drawn\.png: no tissue found.*--region"),
    ):
        tissue_regions(slide)
    r = run_delineo("delineate", str(path), "--whole-slide", "--out", str(tmp_path / "x.geojson"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "no tissue found" in r.stderr and "drawn.png" in r.stderr
    assert not (tmp_path / "x.geojson").exists()


def test_delineate_whole_slide_outlines_the_tumour_of_the_sample(tmp_path):
    out = tmp_path / "whole.geojson"
    r = run_delineo("delineate", str(SAMPLE_SVS), "--whole-slide", "--out", str(out))
    assert r.returncode == 0, r.stderr
    features = json.loads(out.read_text(encoding="utf-8"))["features"]
    assert features and all(f["properties"]["classification"]["name"] == "Tumor" for f in features)
    with Slide.open(SAMPLE_SVS) as slide:
        region = tissue_regions(slide)
    tumour = shapely.union_all([shape(f["geometry"]) for f in features])
    assert tumour.area > 0 and region.buffer(2).contains(tumour)
    assert "skipped as background" in r.stderr


def test_whole_slide_and_a_region_are_one_or_the_other(tmp_path):
    r = run_delineo(
        "delineate",
        str(SAMPLE_SVS),
        "--whole-slide",
        "--region",
        "0,0,512,512",
        "--out",
        str(tmp_path / "x.geojson"),
    )
    assert r.returncode == 2 and "--whole-slide" in r.stderr and "exactly one" in r.stderr
    r = run_delineo("delineate", str(SAMPLE_SVS), "--out", str(tmp_path / "x.geojson"))
    assert r.returncode == 2 and "--whole-slide" in r.stderr


def test_exhaustive_with_a_region_says_it_changes_nothing(tmp_path):
    """--exhaustive is for whole slides: with --region the run is the same, and the command
    says so rather than taking it silently."""
    out = tmp_path / "r.geojson"
    r = run_delineo(
        "delineate", str(SAMPLE_SVS), "--region", "300,600,900,900", "--exhaustive", "--out", str(out)
    )
    assert r.returncode == 0, r.stderr
    assert "note: --exhaustive changes only --whole-slide runs" in r.stderr and out.is_file()
