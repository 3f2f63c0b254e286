"""The delineation pipeline on real slides: tiling, level choice, blending, background, polygons."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import shapely
from conftest import EBHI, LARGE_MPP, SAMPLE_SVS, TCGA_SVS, run_delineo
from gaussian import gaussian_blur
from shapely.geometry import Polygon, box, shape

from app.core import resample
from app.core.geometry import parse_rect, rasterize
from app.core.slide import Slide
from app.core.tiling import blend_window, choose_level, plan_tiles
from app.core.tracing import vectorize
from app.inference.modelcard import ModelCard
from app.inference.pipeline import DelineationRun, RunSettings


def make_card(mpp: float = 1.0, tile: int = 256, overlap: int = 32) -> ModelCard:
    return ModelCard(
        path=Path("."),
        name="test",
        version="0",
        classes=[{"name": "Tumor", "color": [200, 0, 0]}],
        input={"tile": tile, "overlap": overlap, "multiple": 16},
        normalization={"scale": 1 / 255, "mean": [0.5] * 3, "std": [0.25] * 3},
        mpp=mpp,
        files={},
    )


class ConstantEngine:
    """Predicts the same probability everywhere: any seam or gap in blending would show."""

    name = "constant"

    def __init__(self, value: float, card: ModelCard):
        self.value, self.card = value, card

    def predict(self, batch):
        return np.full((batch.shape[0], 1, *batch.shape[1:3]), self.value, np.float32)


def dark_map(rgb: np.ndarray, level: float = 170) -> np.ndarray:
    """Smoothed darkness: 1 where the tissue is darker than `level`, a map as smooth as a real
    model's (tile reads are aligned to whole pixels, so single nuclei are not comparable)."""
    grey = gaussian_blur(rgb.astype(np.float32).mean(axis=2), 3)
    return (grey < level).astype(np.float32)


class DarkEngine:
    """'Tumour' = dark tissue: a transparent stand-in for a model, so the polygons can be
    checked against the same rule applied to the whole region at once."""

    name = "dark"

    def __init__(self, card: ModelCard):
        self.card = card

    def predict(self, batch):
        return np.stack([dark_map(b) for b in batch])[:, None]


def test_blend_window_is_a_partition_of_unity():
    w = blend_window(256, 32)
    total = np.zeros((256 + 224 * 2, 256 + 224 * 2), np.float32)
    for r in range(3):
        for c in range(3):
            total[r * 224 : r * 224 + 256, c * 224 : c * 224 + 256] += w
    inner = total[32:-32, 32:-32]
    assert np.allclose(inner, 1.0, atol=1e-6)


def test_level_choice_by_mpp(large_pyramid):
    with Slide.open(SAMPLE_SVS) as s:  # one 0.499 µm/px level, JPEG tiles: decoded at 1/2 ...
        half = choose_level(s, 1.0)
        assert (half.level, half.reduction, half.scale) == (0, 2, 1.0)
        assert half.level_mpp == pytest.approx(0.998)
        quarter = choose_level(s, 2.0)  # ... or 1/4
        assert (quarter.level, quarter.reduction, quarter.scale) == (0, 4, 1.0)
        between = choose_level(s, 1.5)  # none within 10%: the finest not coarser, resampled
        assert (between.reduction, between.scale) == (2, pytest.approx(0.998 / 1.5))
    with Slide.open(large_pyramid) as s:  # 0.25 µm/px, levels at 1, 2, 4, 8, ...
        assert all(choose_level(s, m).reduction == 1 for m in (0.25, 0.5, 1.0, 2.0))  # stored wins
        exact = choose_level(s, 1.0)
        assert (exact.level, exact.scale) == (2, 1.0)
        near = choose_level(s, 0.52)  # level 1 (0.5) is within 10%: read as is
        assert (near.level, near.scale) == (1, 1.0)
        off = choose_level(s, 0.6)  # no level within 10%: finest not-coarser level, resampled
        assert off.level == 1 and off.scale == pytest.approx(0.5 / 0.6)
        fine = choose_level(s, 0.1)  # finer than level 0: upsample level 0
        assert fine.level == 0 and fine.scale == pytest.approx(2.5)
    with Slide.open(TCGA_SVS) as s:
        c = choose_level(s, 1.0)
        assert c.mpp_assumed and c.level == 0 and c.scale == 1.0


def test_tiles_cover_the_region(large_pyramid):
    region = Polygon([(3000, 2500), (9000, 3100), (8000, 9000), (4000, 7000)])
    with Slide.open(large_pyramid) as s:
        plan = plan_tiles(s, region, model_mpp=1.0, tile=256, overlap=32)
    assert plan.choice.level == 2
    s0 = plan.level0_per_model  # 4 level-0 px per model px
    cores = shapely.union_all(
        [
            box(x + 16 * s0, y + 16 * s0, x + w - 16 * s0, y + w - 16 * s0)
            for x, y, w, _ in (t.level0_rect(plan) for t in plan.tiles)
        ]
    )
    assert region.difference(cores).area < 1e-6 * region.area
    # No tile is planned that the region does not reach.
    for t in plan.tiles:
        x, y, w, _ = t.level0_rect(plan)
        assert region.intersects(box(x, y, x + w, y + w))


def test_constant_engine_gives_a_constant_map_without_seams(large_pyramid):
    card = make_card(mpp=1.0, tile=256, overlap=32)
    region = box(2000, 2000, 9000, 7000)
    with Slide.open(large_pyramid) as s:
        result = DelineationRun(s, region, ConstantEngine(0.7, card)).execute()
    plan = result.plan
    inside = rasterize(
        region, result.probability.shape[1:], plan.level0_per_model, plan.model_to_level0(0, 0)
    )
    values = result.probability[0][inside].astype(np.float32)
    assert result.tiles_done > 4
    assert np.abs(values - 0.7).max() < 2e-3
    # And the outline is the region itself.
    union = shapely.union_all(result.polygons)
    assert union.symmetric_difference(region).area < 0.002 * region.area


def test_background_tiles_are_skipped_and_tissue_is_not():
    card = make_card(mpp=1.0, tile=256, overlap=32)
    with Slide.open(SAMPLE_SVS) as s:
        glass = DelineationRun(s, box(0, 0, 500, 400), ConstantEngine(0.9, card)).execute()
        tissue = DelineationRun(s, box(900, 1300, 1400, 1700), ConstantEngine(0.9, card)).execute()
    assert glass.tiles_done == 0 and glass.tiles_skipped == glass.tiles_total > 0
    assert glass.polygons == []
    assert tissue.tiles_skipped == 0 and tissue.tiles_done == tissue.tiles_total


def test_polygons_are_valid_inside_the_region_and_follow_the_pixels():
    card = make_card(mpp=1.0, tile=256, overlap=32)
    region = Polygon([(700, 1000), (1700, 1100), (1600, 2100), (800, 1900)])
    with Slide.open(SAMPLE_SVS) as s:
        exact = RunSettings(min_area_um2=0, min_hole_um2=0, simplify_um=0)
        result = DelineationRun(s, region, DarkEngine(card), exact).execute()
        # The same rule applied to the slide directly, at the model's resolution.
        plan = result.plan
        x0, y0 = plan.model_to_level0(0, 0)
        w, h = plan.size
        c = plan.choice  # level 0 at half size here: 0.998 µm/px
        rgb = s.read_region(
            round(x0), round(y0), c.level, round(w / c.scale), round(h / c.scale), c.reduction
        )
    rgb = resample.area_downscale(rgb, (w, h))
    truth = dark_map(rgb).astype(bool) & rasterize(region, (h, w), plan.level0_per_model, (x0, y0))
    assert result.polygons
    union = shapely.union_all(result.polygons)
    assert all(p.is_valid for p in result.polygons)
    assert region.buffer(1e-6).contains(union)
    drawn = rasterize(union, (h, w), plan.level0_per_model, (x0, y0))
    dice = 2 * (drawn & truth).sum() / (drawn.sum() + truth.sum())
    assert dice > 0.97
    assert any(len(p.interiors) > 0 for p in result.polygons)  # holes are kept


def test_tracing_a_mask_and_rasterizing_it_back_agree_on_blocks():
    m = np.zeros((60, 80), bool)
    m[10:40, 5:50] = True
    m[20:30, 15:25] = False  # a hole
    m[45:55, 60:75] = True
    polys = vectorize(m.astype(np.uint8) * 255, 0.5, 2.0, (100.0, 50.0), box(0, 0, 1000, 1000), 1.0, 0.0, 0.0)
    areas = sorted(p.area / 4 for p in polys)  # in mask pixels
    assert areas[0] == pytest.approx(150) and areas[1] == pytest.approx(1250, abs=3)  # pinches bridged
    assert [len(p.interiors) for p in sorted(polys, key=lambda p: p.area)] == [0, 1]
    back = rasterize(shapely.union_all(polys), m.shape, 2.0, (100.0, 50.0))
    assert (back != m).sum() <= 2


def test_cancel_stops_between_tiles_and_keeps_what_is_done(large_pyramid):
    card = make_card(mpp=1.0, tile=256, overlap=32)
    cancel = threading.Event()
    events = []

    def on_tile(ev):
        events.append(ev)
        if sum(e.prob is not None for e in events) == 3:
            cancel.set()

    with Slide.open(large_pyramid) as s:
        result = DelineationRun(s, box(1000, 1000, 12000, 12000), ConstantEngine(0.8, card)).execute(
            cancel, on_tile
        )
    assert result.cancelled
    assert [e.done for e in events] == list(range(1, len(events) + 1))  # progress counts every tile
    assert result.tiles_done == 3 < result.tiles_total
    assert result.polygons  # the done part is outlined
    assert shapely.union_all(result.polygons).area < 0.2 * 12000 * 12000


def test_cli_delineate_writes_qupath_geojson(tmp_path):
    out = tmp_path / "tumour.geojson"
    r = run_delineo(
        "delineate",
        str(SAMPLE_SVS),
        "--region",
        "600,900,1200,1400",
        "--out",
        str(out),
        "--precision",
        "int8",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "tiles done" in last and "skipped as background" in last and "MPix/s" in last
    fc = json.loads(out.read_text(encoding="utf-8"))
    assert fc["type"] == "FeatureCollection"
    region = parse_rect("600,900,1200,1400")
    for f in fc["features"]:
        props = f["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"]["name"] == "Tumor" and len(props["classification"]["color"]) == 3
        geom = shape(f["geometry"])
        assert geom.is_valid and region.buffer(1).contains(geom)
        assert props["measurements"]["Area µm^2"] == pytest.approx(geom.area * 0.499**2, rel=1e-3)
        import uuid

        uuid.UUID(f["id"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "x.geojson"], "exactly one of --region"),
        (["--region", "1,2,3", "--out", "x.geojson"], "X,Y,W,H"),
        (["--region", "0,0,10,10", "--out", "/nonexistent-dir/x.geojson"], "does not exist"),
        (["--region", "0,0,10,10", "--out", "x.geojson", "--model", "no-such-model"], "no model card"),
    ],
)
def test_cli_delineate_bad_arguments_exit_2(tmp_path, args, message):
    r = run_delineo("delineate", str(SAMPLE_SVS), *args, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_large_pyramid_mpp_is_what_the_fixture_says(large_pyramid):
    with Slide.open(large_pyramid) as s:
        assert s.mpp[0] == pytest.approx(LARGE_MPP, rel=1e-3)


def test_openvino_stream_matches_predict_in_order_and_can_be_abandoned():
    """Several tiles in flight (AsyncInferQueue) give the same probabilities, in the order the
    tiles went in; a read error keeps its place; closing mid-run (Cancel) leaves the engine usable."""
    from app.inference.engines import create_engine, predict_stream

    engine = create_engine("openvino", precision="int8")
    with Slide.open(SAMPLE_SVS) as slide:
        tiles = [slide.read_region(x, 400, 0, 512, 512) for x in (0, 300, 600, 900, 1200)]
    items: list = [(i, t) for i, t in enumerate(tiles)]
    items.insert(2, ("unreadable", OSError("tile 2 unreadable")))
    out = list(predict_stream(engine, items))
    assert [k for k, _ in out] == [0, 1, "unreadable", 2, 3, 4]
    assert isinstance(out[2][1], OSError)
    for (_, prob), rgb in zip([o for o in out if o[0] != "unreadable"], tiles, strict=True):
        np.testing.assert_allclose(prob, engine.predict(rgb[None])[0], atol=1e-5)

    stream = predict_stream(engine, ((i, t) for i, t in enumerate(tiles * 4)))
    assert next(stream)[0] == 0
    stream.close()  # abandons what is in flight
    again = list(predict_stream(engine, enumerate(tiles[:2])))
    assert [k for k, _ in again] == [0, 1]


def test_half_size_decoding_keeps_the_outline_as_accurate(tmp_path):
    """A single-level 0.5 µm/px slide (like the CMU-1 sample) is read at the model's 1 µm/px by
    decoding its JPEG tiles at half size, instead of through OpenSlide at full size and shrunk.
    On a slide of the bundled labelled tiles, the shipped model's outline must match the ground
    truth as well either way, and no worse."""
    from app.core.mosaic_slide import build_mosaic_slide
    from app.inference.engines import create_engine

    mosaic = build_mosaic_slide(EBHI, tmp_path, split=None, upscale=2, pyramid=False)
    engine = create_engine("openvino", precision="int8")
    dice = {}
    for direct in (True, False):
        with Slide.open(mosaic.slide) as slide:
            assert slide.level_count == 1 and slide.mpp == pytest.approx((0.5, 0.5))
            if not direct:
                slide._direct = None  # every read through OpenSlide, shrunk with INTER_AREA
            w, h = slide.dimensions
            result = DelineationRun(slide, box(0, 0, w, h), engine).execute()
            choice = result.plan.choice
            if direct:  # level 0 at half size: the model's 1 µm/px without resampling
                assert (choice.level, choice.reduction, choice.resampled) == (0, 2, False)
            else:  # level 0 read in full and shrunk x0.5
                assert (choice.level, choice.reduction, choice.scale) == (0, 1, 0.5)
        th, tw = mosaic.truth.shape
        drawn = rasterize(shapely.union_all(result.polygons), (th, tw), w / tw, (0.0, 0.0))
        dice[direct] = 2 * (drawn & mosaic.truth).sum() / (drawn.sum() + mosaic.truth.sum())
    assert dice[False] > 0.7
    assert abs(dice[True] - dice[False]) < 0.01, dice


def test_bench_pipeline_reports_engine_and_pipeline_on_the_same_tiles():
    r = run_delineo(
        "bench", "pipeline", str(SAMPLE_SVS), "--region", "600,900,1200,1400", "--repeats", "2", "--json"
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tiles"] > 0 and out["repeats"] == 2 and len(out["pipeline_vs_engine_runs"]) == 2
    assert out["engine_mpix_per_s"] > 0 and out["pipeline_mpix_per_s"] > 0 and 0 < out["first_tile_s"] < 60
    assert out["pipeline_vs_engine"] == pytest.approx(out["engine_s"] / out["pipeline_s"], rel=0.05)
    # CMU-1 stores only 0.5 µm/px: read at half size, the model's 1 µm/px without resampling.
    assert (out["read_level"], out["read_reduction"], out["resampled"]) == (0, 2, False)


def test_bench_pipeline_adaptive_reports_the_share_run_at_full_resolution_and_each_pass():
    r = run_delineo(
        "bench",
        "pipeline",
        str(SAMPLE_SVS),
        "--region",
        "0,0,2220,2967",
        "--repeats",
        "1",
        "--adaptive",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)["adaptive"]
    assert out["coarse_model"].startswith("ebhi-tumour-coarse-resunet")
    assert out["coarse_tiles"] > 0 and out["tiles_full_resolution"] > 0
    assert 0 < out["full_resolution_share"] < 1, "the coarse pass leaves some tissue tiles to itself"
    assert out["coarse_pass_s"] > 0 and out["fine_pass_s"] > 0
    assert out["dice_vs_exhaustive"] > 0.9
