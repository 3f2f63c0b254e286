"""Re-tracing a run's stored probability map: the same polygons as the run at its own settings,
more area at a lower threshold, specks dropped by the minimum area, and never the engine. Also
the map on disk, and the CLI's threshold, minimum area and `delineo annotations`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from conftest import run_delineo, tile_mosaic
from shapely.geometry import box

from app.core.annotation_edits import class_totals
from app.core.annotation_store import AnnotationStore
from app.core.probability_map import ProbabilityMap, ProbabilityMapError
from app.core.pyramid_tiff import array_source, level_sizes, write_pyramidal_tiff
from app.core.slide import Slide
from app.inference.engines import create_engine
from app.inference.pipeline import DelineationRun, RunSettings


class CountingEngine:
    """The real shipped model, counting the tiles it is asked for."""

    def __init__(self, engine):
        self.engine, self.card, self.name, self.calls = engine, engine.card, engine.name, 0

    def predict(self, batch):
        self.calls += len(batch)
        return self.engine.predict(batch)


@pytest.fixture(scope="module")
def mosaic_slide(tmp_path_factory):
    """4 x 4 bundled EBHI-Seg tiles (896² px) as a pyramidal TIFF at the model's 1 µm/px."""
    img = tile_mosaic(4)
    path = tmp_path_factory.mktemp("mosaic") / "ebhi-mosaic.tif"
    sizes = level_sizes(img.shape[1], img.shape[0], 2, 256)
    write_pyramidal_tiff(path, array_source(img, sizes), sizes, mpp=1.0)
    return path


@pytest.fixture(scope="module")
def run(mosaic_slide):
    engine = CountingEngine(create_engine("openvino", precision="int8"))
    with Slide.open(mosaic_slide) as s:
        # Not the default tracing settings: a re-trace must reuse the run's own.
        settings = RunSettings(min_area_um2=200.0, simplify_um=2.0, min_hole_um2=400.0)
        result = DelineationRun(s, box(0, 0, 896, 896), engine, settings).execute()
    return result, engine


def canonical(outlines: dict) -> list[tuple[str, bytes]]:
    return sorted((name, shapely.to_wkb(shapely.normalize(p))) for name, ps in outlines.items() for p in ps)


def test_retrace_at_the_runs_settings_gives_exactly_its_polygons(run):
    result, _ = run
    pmap = result.probability_map
    assert result.polygons, "the shipped model finds tumour in the EBHI tiles"
    assert pmap.prob.dtype == np.uint8 and pmap.default_threshold == 0.5
    assert canonical(pmap.trace(result.threshold, result.min_area_um2)) == canonical(result.outlines)


def test_retrace_tunes_sensitivity_and_minimum_area_without_the_engine(run):
    result, engine = run
    calls = engine.calls
    pmap = result.probability_map
    area = {t: sum(p.area for p in pmap.trace(t, 200.0)["Tumor"]) for t in (0.2, 0.5, 0.8)}
    assert area[0.2] > area[0.5] > area[0.8]
    few = pmap.trace(0.5, 20_000.0)["Tumor"]
    many = pmap.trace(0.5, 0.0)["Tumor"]
    assert len(many) > len(few) and all(p.area >= 20_000 for p in few)
    anns = pmap.annotations(0.3, 500.0)
    prov = anns[0].provenance
    assert (prov.origin, prov.threshold, prov.min_area_um2, prov.run_id) == ("model", 0.3, 500.0, pmap.run_id)
    assert all(a.review == "proposed" and a.is_proposal for a in anns)
    assert engine.calls == calls, "a re-trace must not run the model"


def test_the_map_survives_a_restart_and_a_damaged_one_is_a_clear_error(run, tmp_path):
    pmap = run[0].probability_map
    path = pmap.save(tmp_path / "m.likelihood.tif")
    back = ProbabilityMap.load(path)
    assert np.array_equal(back.prob, pmap.prob) and back.run_id == pmap.run_id
    assert (back.simplify_um, back.min_hole_um2) == (2.0, 400.0)
    assert back.region.equals(pmap.region) and back.offset == pmap.offset
    assert canonical(back.trace(0.4, 300.0)) == canonical(pmap.trace(0.4, 300.0))
    data = bytearray(path.read_bytes())
    (tmp_path / "cut.tif").write_bytes(bytes(data[: len(data) // 3]))
    (tmp_path / "text.tif").write_text("not a map")
    for bad in ("cut.tif", "text.tif", "missing.tif"):
        with pytest.raises(ProbabilityMapError, match=bad):
            ProbabilityMap.load(tmp_path / bad)
    import tifffile

    tifffile.imwrite(tmp_path / "other.tif", pmap.prob)  # a TIFF, but not one of ours
    with pytest.raises(ProbabilityMapError, match="not a Delineo probability map"):
        ProbabilityMap.load(tmp_path / "other.tif")


def test_a_new_minimum_area_refilters_the_kept_rings_and_gives_a_fresh_maps_answer(run, tmp_path):
    """Dragging Minimum area re-filters the rings of the last sensitivity; the answer is the
    same as a map traced for the first time at those settings, and a new sensitivity traces."""
    pmap = run[0].probability_map
    fresh = lambda: ProbabilityMap.load(pmap.save(tmp_path / "fresh.likelihood.tif"))  # noqa: E731
    pmap.trace(0.45, 300.0)
    kept = dict(pmap._rings)
    assert canonical(pmap.trace(0.45, 5000.0)) == canonical(fresh().trace(0.45, 5000.0))
    assert all(pmap._rings[k][2] is kept[k][2] for k in kept)  # not traced again
    assert canonical(pmap.trace(0.6, 300.0)) == canonical(fresh().trace(0.6, 300.0))
    assert all(pmap._rings[k][2] is not kept[k][2] for k in kept)


def test_cli_threshold_and_min_area_are_recorded_and_annotations_reports_union_totals(mosaic_slide, tmp_path):
    slide = tmp_path / mosaic_slide.name
    slide.write_bytes(mosaic_slide.read_bytes())
    out = tmp_path / f"{slide.name}.annotations.geojson"  # where the store looks
    r = run_delineo(
        "delineate", str(slide), "--region", "0,0,896,896", "--out", str(out),
        "--threshold", "0.4", "--min-area", "300",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    feats = json.loads(out.read_text(encoding="utf-8"))["features"]
    prov = feats[0]["properties"]["delineo"]["provenance"]
    assert (prov["threshold"], prov["min_area_um2"], prov["origin"]) == (0.4, 300.0, "model")
    r = run_delineo("annotations", str(slide), "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    anns = AnnotationStore(slide, tmp_path / "data", 1.0).load().annotations
    want = class_totals(anns, 1.0)
    assert [(c["class"], c["count"]) for c in got["classes"]] == [(t.cls, t.count) for t in want]
    assert [c["area_um2"] for c in got["classes"]] == pytest.approx([t.area_um2 for t in want])
    assert got["review"] == {"proposed": len(anns), "accepted": 0}
    r = run_delineo("delineate", str(slide), "--region", "0,0,10,10", "--out", str(out), "--threshold", "2")
    assert r.returncode == 2 and "--threshold" in r.stderr and "Traceback" not in r.stderr
    r = run_delineo("annotations", str(tmp_path / "nothing.tif"))
    assert r.returncode == 2 and "nothing.tif" in r.stderr


def test_tracing_follows_pixel_edges_and_stays_valid_where_pixels_touch_diagonally():
    from app.core.tracing import vectorize

    m = np.zeros((60, 80), np.uint8)
    m[10:40, 5:50] = 200
    m[20:30, 15:25] = 0  # a hole
    m[45:55, 60:75] = 200
    m[2, 2] = m[3, 3] = 200  # two pixels touching at a corner would pinch a ring
    m[2, 8] = m[4, 10] = 200  # two a pixel apart do not touch
    polys = vectorize(m, 0.5, 2.0, (100.0, 50.0), box(-1e4, -1e4, 1e4, 1e4), 1.0, 0.0, 0.0, 0.0)
    assert all(p.is_valid for p in polys)
    areas = sorted(p.area / 4 for p in polys)  # in mask pixels
    assert areas == [1, 1, 3, 150, 1250]  # the touching pair bridged by one pixel: one outline
    block = max(polys, key=lambda p: p.area)
    assert block.bounds == (110.0, 70.0, 200.0, 130.0)  # on the pixels' edges, not their centres
    assert len(block.interiors) == 1
