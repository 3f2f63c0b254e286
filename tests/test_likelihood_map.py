"""The likelihood map streamed to disk as a run goes: the run's own map on the slide's grid,
a pyramid ASAP reads, refused before the run when the disk cannot take it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
from conftest import SAMPLE_SVS, run_delineo
from shapely.geometry import box, shape
from test_pipeline import DarkEngine, make_card

from app.core.likelihood_map import LikelihoodMapError, LikelihoodSpool
from app.core.slide import Slide
from app.inference.pipeline import DelineationRun, RunSettings


def streamed(slide, region, engine, folder: Path) -> tuple:
    spool: list[LikelihoodSpool] = []
    run = DelineationRun(
        slide, region, engine, RunSettings(keep_map=False), map_sink=lambda r, b: spool[0].add_band(r, b)
    )
    plan = run.plan()
    spool.append(
        LikelihoodSpool(folder, slide.dimensions, plan.level0_per_model, plan.model_to_level0(0, 0), [0])
    )
    result = run.execute()
    path = folder / "map.tif"
    spool[0].write({0: path}, 0.5)
    spool[0].close()
    return result, path


def test_the_streamed_map_is_the_runs_map_on_the_slides_grid(tmp_path):
    """Band by band to disk, the same pixels as the map a run keeps, placed where the slide's
    pixels are (the canvas starts an overlap before the region); zero where no tile ran; each
    lower level the mean of the one above; and no spool file left behind."""
    engine = DarkEngine(make_card(mpp=1.0, tile=256, overlap=32))
    region = box(0, 400, 1900, 2600)
    with Slide.open(SAMPLE_SVS) as s:
        kept = DelineationRun(s, region, engine).execute()
        result, path = streamed(s, region, engine, tmp_path)
    assert result.tiles_done == kept.tiles_done > 10
    with tifffile.TiffFile(path) as tif:
        levels = [p.asarray() for p in tif.pages]
    pmap = kept.probability_map
    scale = pmap.level0_per_model
    ox, oy = round(pmap.offset[0] / scale), round(pmap.offset[1] / scale)
    h, w = pmap.prob.shape[1:]
    level0 = levels[0]
    assert level0.shape == (np.ceil(2967 / scale), np.ceil(2220 / scale))
    # The canvas reaches past the slide's left and right edges: cut there.
    assert ox < 0 and oy > 0 and w + ox > level0.shape[1]
    on_slide = pmap.prob[0, : level0.shape[0] - oy, -ox : -ox + level0.shape[1]]
    assert np.array_equal(level0[oy : oy + h], on_slide)
    assert on_slide.max() > 200 and not level0[: oy - 2].any()  # above the region: nothing ran
    halved = level0[: level0.shape[0] // 2 * 2, : level0.shape[1] // 2 * 2].astype(float)
    means = (halved[0::2, 0::2] + halved[1::2, 0::2] + halved[0::2, 1::2] + halved[1::2, 1::2]) / 4
    assert np.abs(levels[1][: means.shape[0], : means.shape[1]] - means).max() <= 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif"]


def test_delineate_whole_slide_writes_the_likelihood_map_asap_overlays(tmp_path):
    """`delineate --whole-slide --likelihood` on the sample with the shipped model: beside the
    GeoJSON, `<slide>_likelihood_map.tif` at the model's pixel size over the whole slide, high
    inside the outlines and low outside them."""
    slide = tmp_path / "case 7.svs"
    shutil.copy(SAMPLE_SVS, slide)
    out = tmp_path / "out" / "tumour.geojson"
    out.parent.mkdir()
    r = run_delineo("delineate", str(slide), "--whole-slide", "--out", str(out), "--likelihood")
    assert r.returncode == 0, r.stderr
    lik = out.parent / "case 7_likelihood_map.tif"
    assert "likelihood map of Tumor" in r.stderr and str(lik) in r.stderr
    polygons = [shape(f["geometry"]) for f in json.loads(out.read_text(encoding="utf-8"))["features"]]
    assert polygons
    with Slide.open(lik) as m:
        scale = 2220 / m.dimensions[0]
        assert m.mpp[0] == pytest.approx(0.499 * scale, rel=1e-2) and m.level_count >= 2
        level0 = m.read_region(0, 0, 0, *m.dimensions)[..., 0]
    from app.core.geometry import rasterize

    inside = rasterize(shapely.union_all(polygons), level0.shape, scale, (0.0, 0.0))
    assert level0[inside].mean() > 150 and level0[~inside].mean() < 40
    assert sorted(p.name for p in out.parent.iterdir()) == ["case 7_likelihood_map.tif", "tumour.geojson"]


def test_a_map_the_disk_cannot_take_is_refused_before_the_run(tmp_path, monkeypatch):
    """A 40 mm slide's map at 1 µm/px needs GBs: with too little free space the spool says how
    much it needs and where, and leaves nothing behind."""
    full = shutil.disk_usage(tmp_path)._replace(free=50_000_000)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: full)
    with pytest.raises(LikelihoodMapError, match=r"needs about 4\.3 GB free in .*which has 0\.1 GB"):
        LikelihoodSpool(tmp_path, (80000, 80000), 2.0, (0.0, 0.0), [0])
    assert not list(tmp_path.iterdir())


def test_a_spool_a_killed_run_left_is_removed_and_a_live_one_kept(tmp_path):
    """A run killed mid-way leaves its spool (hundreds of MB on a whole slide): the next run in
    that folder removes it, but never the spool of a run still going."""
    stale = tmp_path / ".delineo-likelihood-dead"
    stale.mkdir()
    (stale / "class0-level0.raw").write_bytes(b"\0" * 1000)
    os.utime(stale, (0, 0))
    with LikelihoodSpool(tmp_path, (4000, 3000), 2.0, (0.0, 0.0), [0]) as live:
        os.utime(live.folder, (0, 0))
        with LikelihoodSpool(tmp_path, (4000, 3000), 2.0, (0.0, 0.0), [0]) as other:
            assert live.folder.is_dir() and other.folder.is_dir() and not stale.exists()
    assert not list(tmp_path.iterdir())


def test_a_map_that_fails_mid_run_loses_no_outline(tmp_path):
    """The disk refusing the spool during the run (here, its file turned read-only): the run
    still finishes with its whole outline, and writing the map then says what went wrong."""
    from app.core.likelihood_map import RunLikelihood

    engine = DarkEngine(make_card(mpp=1.0, tile=256, overlap=32))
    with Slide.open(SAMPLE_SVS) as s:
        region = box(0, 400, 1900, 2600)
        expected = DelineationRun(s, region, engine, RunSettings(keep_map=False)).execute()
        likelihood = RunLikelihood(s.dimensions, engine.card.scheme, tmp_path, "slide")
        run = DelineationRun(s, region, engine, RunSettings(keep_map=False), map_sink=likelihood.sink)
        likelihood.prepare(run.plan())
        raw = likelihood.spool._files[0]
        likelihood.spool._files[0] = open(raw.name, "rb")  # noqa: SIM115 - closed by the spool
        raw.close()
        result = run.execute()
    assert result.tiles_done == expected.tiles_done and result.polygons
    assert shapely.union_all(result.polygons).equals(shapely.union_all(expected.polygons))
    with pytest.raises(LikelihoodMapError, match="writing the likelihood map failed during the run"):
        likelihood.write(0.5)
    likelihood.close()
    assert not list(tmp_path.iterdir())
