"""Adaptive coarse-to-fine: a coarse pass first, full resolution where the card's refine rule
finds something or the coarse pass has no answer, the coarse answer elsewhere; the coarse tiles
reach the overlay first."""

from __future__ import annotations

import re

import numpy as np
import pytest
import shapely
from conftest import SAMPLE_SVS, TCGA_SVS
from shapely.geometry import box
from test_class_contract import card
from test_pipeline import dark_map

from app.core.geometry import rasterize
from app.core.slide import Slide
from app.core.tiling import BandBlender, Blender, plan_tiles
from app.inference.engine import Engine
from app.inference.modelcard import ModelCardError
from app.inference.pipeline import DelineationRun, RunSettings
from app.inference.refinement import CoarseMap

TUMOUR = [{"name": "Tumor", "color": [200, 0, 0]}]


class VeryDark(Engine):
    """'Tumour' = the darkest tissue (level 120 after smoothing): a few foci on the sample, the
    same answer at any resolution, so the coarse pass finds them."""

    name = "very-dark"

    def __init__(self):
        self.card = card(TUMOUR, output={"activation": "none"})
        self.calls = 0

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls += len(batch)
        return np.stack([dark_map(b, level=120) for b in batch])[:, None]


def test_adaptive_runs_fewer_full_resolution_tiles_for_the_same_outline():
    engine = VeryDark()
    with Slide.open(SAMPLE_SVS) as s:
        region = box(0, 0, *s.dimensions)
        exhaustive = DelineationRun(s, region, engine).execute()
        events = []
        adaptive = DelineationRun(s, region, engine, RunSettings(adaptive=True)).execute(
            on_tile=events.append
        )
    assert exhaustive.polygons, "the rule finds foci on the sample"
    assert adaptive.coarse_tiles > 0 and adaptive.refine_skipped > 0
    assert adaptive.tiles_done < exhaustive.tiles_done
    assert adaptive.full_resolution_share < 0.8
    w, h = 2220, 2967
    a = rasterize(shapely.union_all(adaptive.polygons), (h // 4, w // 4), 4.0, (0.0, 0.0))
    b = rasterize(shapely.union_all(exhaustive.polygons), (h // 4, w // 4), 4.0, (0.0, 0.0))
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.97
    # The coarse tiles come first (the overlay shows the coarse answer, then sharpens it), and
    # progress counts every tile of both passes once.
    coarse_side = events[0].core_rect[2]
    assert coarse_side > 3 * events[-1].core_rect[2]
    assert [e.done for e in events] == list(range(1, len(events) + 1)) and events[-1].total == len(events)


def test_a_coarse_model_runs_the_first_pass_at_its_own_pixel_size():
    """A model's card names its coarse model: the first pass runs that one (at its 2 µm/px, not
    4x the fine model's 0.5), and the fine model runs only the tiles it leaves."""
    fine, coarse = VeryDark(), VeryDark()
    coarse.card = card(TUMOUR, output={"activation": "none"}, mpp=2.0)
    with Slide.open(SAMPLE_SVS) as s:
        region = box(0, 0, *s.dimensions)
        exhaustive = DelineationRun(s, region, VeryDark()).execute()
        run = DelineationRun(s, region, fine, RunSettings(adaptive=True), coarse_engine=coarse)
        adaptive = run.execute()
    assert run.coarse_plan.level0_per_model == 4.0  # 2 µm/px on a 0.5 µm/px slide
    assert coarse.calls == adaptive.coarse_tiles > 0
    assert fine.calls == adaptive.tiles_done < exhaustive.tiles_done
    w, h = 2220, 2967
    a = rasterize(shapely.union_all(adaptive.polygons), (h // 4, w // 4), 4.0, (0.0, 0.0))
    b = rasterize(shapely.union_all(exhaustive.polygons), (h // 4, w // 4), 4.0, (0.0, 0.0))
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.97


def test_the_model_card_names_its_coarse_model_by_name_only():
    named = card(TUMOUR, adaptive={"coarse_model": "ebhi-tumour-coarse-resunet"})
    assert named.coarse_model == "ebhi-tumour-coarse-resunet"
    assert card(TUMOUR).coarse_model is None


@pytest.mark.parametrize(
    "adaptive, said",
    [
        ({"coarse_model": "../../etc"}, "adaptive.coarse_model '../../etc' is not a model name"),
        ({"refine_level": 0}, "adaptive.refine_level 0 is not in 0.001..1"),
        ({"refine_min_um2": -5}, "adaptive.refine_min_um2 -5 is not an area"),
        ({"refine_margin_px": 2.5}, "adaptive.refine_margin_px 2.5 is not a whole number"),
        ("yes", "adaptive must be an object"),
    ],
)
def test_a_card_whose_adaptive_block_cannot_be_used_is_refused_saying_which_key(adaptive, said):
    with pytest.raises(ModelCardError, match=re.escape(said)):
        card(TUMOUR, adaptive=adaptive)


def _dice(a_polys, b_polys) -> float:
    w, h = 2220, 2967
    a = rasterize(shapely.union_all(a_polys), (h // 4, w // 4), 4.0, (0.0, 0.0))
    b = rasterize(shapely.union_all(b_polys), (h // 4, w // 4), 4.0, (0.0, 0.0))
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


@pytest.mark.parametrize("keep_map", [True, False])
def test_where_no_fine_tile_runs_the_coarse_answer_stands(keep_map):
    """A rule that refines only where the coarse pass finds a large area: the small foci's
    tiles do not run, yet their foci are in the outline, at the coarse pass's resolution
    (in the kept map and band by band alike)."""
    fine = VeryDark()
    fine.card = card(TUMOUR, output={"activation": "none"}, adaptive={"refine_min_um2": 1e7})
    with Slide.open(SAMPLE_SVS) as s:
        region = box(0, 0, *s.dimensions)
        exhaustive = DelineationRun(s, region, VeryDark()).execute()
        settings = RunSettings(adaptive=True, keep_map=keep_map)
        adaptive = DelineationRun(s, region, fine, settings).execute()
    # Only tiles the coarse pass has no answer for (at its glass tiles) run at full resolution.
    assert fine.calls == adaptive.coarse_tiles + adaptive.tiles_done
    assert adaptive.tiles_done < 0.2 * exhaustive.tiles_done
    assert exhaustive.polygons and adaptive.polygons
    assert _dice(adaptive.polygons, exhaustive.polygons) > 0.8


def test_the_coarse_map_keeps_blocks_only_where_the_coarse_pass_answered():
    """The coarse answer is kept in blocks where it holds a score: the same map as blending the
    whole canvas at once, read at any window, while glass (tiles that never ran) costs nothing,
    so a sparse whole slide's coarse map follows its tissue, not its area."""
    with Slide.open(SAMPLE_SVS) as s:
        plan = plan_tiles(s, box(0, 0, *s.dimensions), 0.5, 256, 32)
    rng = np.random.default_rng(0)
    left = [t for t in plan.tiles if t.col < 3]  # the rest: glass, skipped
    dense, cmap = Blender(plan, 2), CoarseMap(plan, 2, 0.5)
    bands = BandBlender(plan, 2, left, cmap.add_band)
    for t in left:
        prob = rng.random((2, 256, 256), dtype=np.float32)
        dense.add(t, prob)
        bands.add(t, prob)
    expected = dense.probability_u8()
    w, h = plan.size
    assert np.array_equal(cmap.window(0, 0, w, h), expected)
    assert np.array_equal(cmap.window(300, 500, 900, 700), expected[:, 500:700, 300:900])
    # Past the canvas there is no score; the kept blocks are the three block columns the left
    # tiles reach (3 x 224 + 32 px), not the canvas's ten.
    assert not cmap.window(-10, -10, 5, 5)[:, :10].any()
    b = CoarseMap.BLOCK
    assert 0 < cmap.nbytes <= 2 * b * b * 3 * -(-h // b) < expected.nbytes / 3


def test_a_rule_with_a_minimum_area_runs_fewer_tiles_and_keeps_the_outline():
    """Tiles whose coarse finding is a speck keep the coarse answer; the rest run: fewer fine
    tiles than refining on any coarse pixel, and the outline stays within Dice 0.97."""
    anywhere, sized = VeryDark(), VeryDark()
    sized.card = card(TUMOUR, output={"activation": "none"}, adaptive={"refine_min_um2": 2000})
    with Slide.open(SAMPLE_SVS) as s:
        region = box(0, 0, *s.dimensions)
        exhaustive = DelineationRun(s, region, VeryDark()).execute()
        a = DelineationRun(s, region, anywhere, RunSettings(adaptive=True, keep_map=False)).execute()
        b = DelineationRun(s, region, sized, RunSettings(adaptive=True, keep_map=False)).execute()
    assert b.tiles_done < a.tiles_done
    assert _dice(b.polygons, exhaustive.polygons) > 0.97


def test_on_a_slide_without_a_pixel_size_the_coarse_pass_reads_it_at_the_coarse_scale():
    """The TCGA slide records no mpp: both passes take the slide at the fine model's size, so
    the coarse pass still reads 4x coarser (and 1/16 the tiles), not the fine grid again."""
    fine, coarse = VeryDark(), VeryDark()
    coarse.card = card(TUMOUR, output={"activation": "none"}, mpp=2.0)
    with Slide.open(TCGA_SVS) as s:
        assert s.mpp is None
        region = box(0, 0, *s.dimensions)
        run = DelineationRun(s, region, fine, RunSettings(adaptive=True), coarse_engine=coarse)
        run.execute()
    assert run.coarse_plan.level0_per_model == pytest.approx(4 * run.plan().level0_per_model)
    assert len(run.coarse_plan.tiles) < len(run.plan().tiles) / 8


def test_a_coarse_model_that_cannot_be_built_leaves_the_run_exhaustive(tmp_path, monkeypatch):
    """A damaged coarse model file: `delineate --whole-slide` says so in a note and runs every
    tissue tile, instead of failing the slide."""
    import shutil

    from conftest import run_delineo

    from app.paths import MODELS_DIR

    # A user-installed model of the same name comes first (XDG_DATA_HOME/Delineo/models).
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    coarse = tmp_path / "data" / "Delineo" / "models" / "ebhi-tumour-coarse-resunet"
    shutil.copytree(MODELS_DIR / "ebhi-tumour-coarse-resunet", coarse)
    (coarse / "model-int8.bin").write_bytes(b"damaged")
    r = run_delineo("delineate", str(SAMPLE_SVS), "--whole-slide", "--out", str(tmp_path / "out.geojson"))
    assert r.returncode == 0, r.stderr
    assert "coarse model ebhi-tumour-coarse-resunet" in r.stderr and "full resolution" in r.stderr
    assert "tiles done" in r.stderr and (tmp_path / "out.geojson").exists()


def test_a_coarse_engine_failing_mid_pass_runs_every_tile_at_full_resolution():
    from app.inference.engine import EngineError

    class Failing(VeryDark):
        def predict(self, batch):
            raise EngineError("the coarse device went away")

    fine, coarse = VeryDark(), Failing()
    coarse.card = card(TUMOUR, output={"activation": "none"}, mpp=2.0)
    with Slide.open(SAMPLE_SVS) as s:
        region = box(0, 0, *s.dimensions)
        exhaustive = DelineationRun(s, region, VeryDark()).execute()
        adaptive = DelineationRun(s, region, fine, RunSettings(adaptive=True), coarse_engine=coarse).execute()
    assert adaptive.engine_error is None and not adaptive.pending
    assert adaptive.tiles_done == exhaustive.tiles_done
    assert any("coarse pass stopped" in n and "went away" in n for n in adaptive.notes)
    assert _dice(adaptive.polygons, exhaustive.polygons) > 0.99
