"""The review loop on the bundled sample slide with the shipped model: a whole-slide run, then
a polygon region re-run over one focus replacing what the first run drew there; what is left
outside the region, and what the store writes when the slide is opened again unedited."""

from __future__ import annotations

import json

import pytest
import shapely
from conftest import SAMPLE_SVS
from shapely.geometry import Point, Polygon, box

from app.core import annotation_edits as ed
from app.core.annotation_store import AnnotationStore
from app.core.annotations import Annotation
from app.core.slide import Slide
from app.inference.engines import create_engine
from app.inference.pipeline import DelineationRun

MIN_AREA_UM2 = 1000.0  # the viewer's default minimum area
# A hand-drawn polygon over the bottom-left focus (level-0 px 568-792 x 2528-2920), its left
# edge a few pixels inside the focus's: clipping leaves a strip 2-7 px wide at x 568-575.
REGION = Polygon([(573.37, 2496.81), (815.2, 2489.6), (829.9, 2941.3), (575.1, 2947.66)])


@pytest.fixture(scope="module")
def runs():
    engine = create_engine("openvino", precision="int8")
    with Slide.open(SAMPLE_SVS) as s:
        mpp = s.mpp[0]
        whole = DelineationRun(s, box(0, 0, *s.dimensions), engine).execute().annotations()
        again = DelineationRun(s, REGION, engine).execute().annotations()
    return mpp, whole, again


def um2(geom, mpp: float) -> float:
    return geom.area * mpp * mpp


def test_a_region_rerun_leaves_no_sliver_of_the_old_outline_outside_the_region(runs):
    mpp, whole, again = runs
    focus = next(a for a in whole if a.geometry.bounds[0] < REGION.bounds[0] < a.geometry.bounds[2])
    assert um2(focus.geometry.difference(REGION), mpp) < MIN_AREA_UM2  # what used to be kept
    for min_area in (MIN_AREA_UM2, 5000.0):
        after = ed.replace_in_region(whole, again, REGION, min_area=min_area / mpp**2)
        assert focus.id not in {a.id for a in after}, "its part outside the region is a sliver"
        # The outlines the region does not touch are kept as they were, small ones included.
        assert [a for a in after if a.provenance.run_id == focus.provenance.run_id] == [
            a for a in whole if a is not focus
        ]
        assert [a.id for a in after[-len(again) :]] == [a.id for a in again]
        for a in after:
            assert a.geometry.is_valid and a.geometry.geom_type in ("Polygon", "MultiPolygon")


def test_the_outside_part_of_a_crossing_outline_is_kept_and_its_slivers_dropped(runs):
    mpp, whole, again = runs
    focus = next(a for a in whole if a.geometry.bounds[0] < REGION.bounds[0] < a.geometry.bounds[2])
    # The region moved right: most of the focus stays outside, beside a strip cut off below.
    region = shapely.affinity.translate(REGION, 120, 0).difference(box(0, 2900, 2220, 2910))
    region = shapely.union_all([region, box(560, 2900, 1000, 2910)])
    after = ed.replace_in_region(whole, again, region, min_area=MIN_AREA_UM2 / mpp**2)
    kept = next(a for a in after if a.id == focus.id)
    assert kept.geometry.is_valid and not kept.geometry.intersects(region.buffer(-1e-6))
    parts = list(getattr(kept.geometry, "geoms", [kept.geometry]))
    assert all(um2(p, mpp) >= MIN_AREA_UM2 for p in parts)
    raw = shapely.get_parts(focus.geometry.difference(region))
    assert len(raw) > len(parts)  # the clipping made pieces below the minimum: gone
    # Re-tracing the new run at a far larger minimum area replaces only inside its region: the
    # earlier outline now touching that region's border is not cut, so it is left as it is.
    retraced = ed.replace_in_region(after, [], region, min_area=50_000 / mpp**2)
    assert next(a for a in retraced if a.id == focus.id) is kept


def test_a_hand_drawn_outline_is_clipped_only_on_replace_and_keeps_what_is_not_a_sliver(runs):
    mpp, whole, again = runs
    # Painted over the focus, reaching left past the region by a few pixels and right by a lot.
    painted = Annotation(Polygon([(569, 2600), (1100, 2600), (1100, 2700), (569, 2700)]))
    edited = whole[0].edited(whole[0].geometry.union(Point(1600, 900).buffer(40)))
    existing = [*whole[1:], painted, edited]  # whole[0] as edited by hand
    min_area = MIN_AREA_UM2 / mpp**2
    keep_both = ed.replace_in_region(existing, again, REGION, min_area=min_area)
    assert painted in keep_both and edited in keep_both  # never touched without Replace
    replaced = ed.replace_in_region(existing, again, REGION, replace_protected=True, min_area=min_area)
    mine = next(a for a in replaced if a.id == painted.id)
    # The 4 px strip left of the region is below the minimum area and goes; the part right of
    # the region (near 7 000 µm²) stays, as a valid polygon.
    assert mine.geometry.geom_type == "Polygon" and mine.geometry.is_valid
    assert mine.geometry.bounds[0] > REGION.bounds[2] - 20
    assert um2(mine.geometry, mpp) > 6_500
    assert next(a for a in replaced if a.id == edited.id) is edited  # outside the region


@pytest.mark.parametrize("offset", [(0, 0), (2048.25, 1031.5)])  # the second: an MRXS bounds offset
def test_opening_the_saved_review_unedited_rewrites_nothing_and_keeps_each_area(runs, sample_copy, offset):
    mpp, whole, again = runs
    after = ed.replace_in_region(whole, again, REGION)  # clipped along the drawn region
    # A brush edit gives coordinates off the 1/100 px grid the file keeps.
    brushed = ed.add_to(after[0], Point(1610.123, 901.987).buffer(37.3))
    after = [brushed, *after[1:]]
    store = AnnotationStore(sample_copy, sample_copy.parent / "data", mpp, offset)
    store.write(store.document(after, REGION))
    first = store.path.read_bytes()
    stamp = store.path.stat().st_mtime_ns
    for _ in range(2):  # open, change nothing, the autosave runs; close; open again
        state = store.load()
        store.write(store.document(state.annotations, state.region))
    assert store.path.read_bytes() == first
    assert store.path.stat().st_mtime_ns == stamp, "an unedited slide's file is not written again"
    # Each stored area is that of the coordinates stored beside it.
    for feature in json.loads(first)["features"]:
        geom = shapely.geometry.shape(feature["geometry"])
        assert feature["properties"]["measurements"]["Area µm^2"] == round(geom.area * mpp * mpp, 2)
