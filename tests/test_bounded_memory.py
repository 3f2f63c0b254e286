"""Band-by-band finishing: the same outline as tracing the whole map, in memory that does not
grow with the region's height; and a region too large for memory refused before it starts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import shapely
from conftest import SAMPLE_SVS
from shapely.geometry import box
from test_pipeline import DarkEngine, make_card

from app.core.slide import Slide
from app.inference.engine_registry import create_engine
from app.inference.pipeline import DelineationRun, RunSettings, RunTooLarge

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def both(slide, region, engine, **settings):
    kept = DelineationRun(slide, region, engine, RunSettings(**settings)).execute()
    banded = DelineationRun(slide, region, engine, RunSettings(keep_map=False, **settings)).execute()
    return kept, banded


def assert_same_outline(kept, banded, exact: bool):
    assert list(kept.outlines) == list(banded.outlines)
    for name in kept.outlines:
        a, b = kept.outlines[name], banded.outlines[name]
        assert all(p.is_valid for p in b)
        assert len(a) == len(b), name
        ua, ub = shapely.union_all(a), shapely.union_all(b)
        # Exactly the pixels (bar a bridged pinch) without simplification; with it, a vertex
        # may fall differently where an outline crosses a band border.
        tolerance = 1e-4 if exact else 5e-3
        assert ua.symmetric_difference(ub).area <= tolerance * ua.area, name


def test_band_wise_finishing_gives_the_whole_maps_polygons(large_pyramid):
    """Dark tissue on a mosaic of real tiles: outlines cross every band border."""
    card = make_card(mpp=1.0, tile=256, overlap=32)
    region = box(2000, 2000, 9000, 9000)
    with Slide.open(large_pyramid) as s:
        kept, banded = both(s, region, DarkEngine(card), min_area_um2=0, min_hole_um2=0, simplify_um=0)
        assert_same_outline(kept, banded, exact=True)
        kept, banded = both(s, region, DarkEngine(card))
        assert_same_outline(kept, banded, exact=False)
    plan = kept.plan
    borders = [plan.model_to_level0(0, y)[1] for y in range(plan.stride, plan.size[1], plan.stride)]
    crossing = [p for p in banded.polygons if any(p.bounds[1] < y < p.bounds[3] for y in borders)]
    # The test means something: most of the outline crosses band borders.
    assert sum(p.area for p in crossing) > 0.5 * sum(p.area for p in banded.polygons)
    assert banded.probability_map is None and banded.annotations()  # proposals without a kept map


def test_band_wise_with_the_shipped_model_on_the_sample():
    engine = create_engine("openvino", precision="int8")
    with Slide.open(SAMPLE_SVS) as s:
        kept, banded = both(s, box(0, 0, *s.dimensions), engine)
    assert_same_outline(kept, banded, exact=False)
    assert [a.cls for a in banded.annotations()] == [a.cls for a in kept.annotations()]


PEAK = textwrap.dedent(
    """
    import json, sys
    sys.path[:0] = [{tests!r}, {repo!r}]
    from shapely.geometry import box
    from test_pipeline import ConstantEngine, make_card
    from app.core.slide import Slide
    from app.inference.pipeline import DelineationRun, RunSettings
    def peak_kib():  # VmHWM: this process's own peak (ru_maxrss inherits the parent's on Linux)
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])

    side, mode = int(sys.argv[1]), sys.argv[2]
    card = make_card(mpp=0.5, tile=256, overlap=32)
    with Slide.open(sys.argv[3]) as s:
        before = peak_kib()
        region, engine = box(500, 500, 500 + side, 500 + side), ConstantEngine(0.7, card)
        if mode == "streamed":  # band by band, the map streamed to an ASAP likelihood TIFF
            from pathlib import Path
            from app.core.likelihood_map import LikelihoodSpool
            spool = []
            run = DelineationRun(s, region, engine, RunSettings(keep_map=False),
                                 map_sink=lambda row, band: spool[0].add_band(row, band))
            plan = run.plan()
            spool.append(LikelihoodSpool(Path(sys.argv[4]), s.dimensions, plan.level0_per_model,
                                         plan.model_to_level0(0, 0), [0]))
            result = run.execute()
            spool[0].write({{0: Path(sys.argv[4]) / f"map-{{side}}.tif"}}, 0.25)
            spool[0].close()
        else:
            result = DelineationRun(s, region, engine, RunSettings(keep_map=mode == "kept")).execute()
        after = peak_kib()
    print(json.dumps({{"growth_mb": (after - before) / 1024, "tiles": result.tiles_done}}))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_memory_stays_flat_as_the_region_grows(large_pyramid, tmp_path):
    """Peak RSS growth of a whole run in a fresh process, at two region sizes (16x the area):
    band by band it stays within a few MB, also when the map is streamed to a likelihood TIFF
    of the whole slide; keeping the map, it grows with the area."""
    script = PEAK.format(tests=str(REPO / "tests"), repo=str(REPO))

    def growth(side: int, mode: str) -> float:
        out = subprocess.run(
            [sys.executable, "-c", script, str(side), mode, str(large_pyramid), str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        answer = json.loads(out.stdout.strip().splitlines()[-1])
        assert answer["tiles"] > 40, answer
        return answer["growth_mb"]

    small, large = growth(3000, "banded"), growth(12000, "banded")
    streamed_small, streamed_large = growth(3000, "streamed"), growth(12000, "streamed")
    kept_small, kept_large = growth(3000, "kept"), growth(12000, "kept")
    assert large - small < 40, (small, large)
    assert streamed_large - streamed_small < 40, (streamed_small, streamed_large)
    with Slide.open(tmp_path / "map-12000.tif") as m:  # the map the large run streamed
        assert m.dimensions == (10000, 10000) and m.level_count >= 5
        middle = m.read_region(3000, 3000, 0, 200, 200)[..., 0]
        assert abs(int(middle.mean()) - round(0.7 * 255)) <= 1
    assert kept_large - kept_small > 120, (kept_small, kept_large)  # what band-wise avoids


def test_a_region_too_large_for_memory_is_refused_before_it_starts(large_pyramid, monkeypatch):
    import psutil

    class Tight:
        available = 256 * 2**20  # 256 MiB free

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tight())
    card = make_card(mpp=0.25, tile=256, overlap=32)
    engine = DarkEngine(card)
    with Slide.open(large_pyramid) as s:
        run = DelineationRun(s, box(0, 0, 20000, 20000), engine)
        with pytest.raises(RunTooLarge, match=r"20\d\d\d x 20\d\d\d model pixels.*GiB.*band by band"):
            run.execute()
        assert run.done == 0  # nothing ran
        # Band by band the same region fits.
        DelineationRun(s, box(0, 0, 20000, 20000), engine, RunSettings(keep_map=False)).plan()
