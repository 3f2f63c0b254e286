"""The editing operations of the review loop, headless: re-runs, brush, vertices, merge and
split, class and lock, union totals."""

from __future__ import annotations

import dataclasses

import pytest
import shapely
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box

from app.core import annotation_edits as ed
from app.core.annotation_classes import DEFAULT_CLASSES, AnnotationClass, classes_from_json, classes_to_json
from app.core.annotations import Annotation, Provenance

MODEL = Provenance("model", "ebhi-tumour-resunet", "1.0.0", "openvino-int8", 0.5, 1000.0, "run1")


def proposal(geom) -> Annotation:
    return Annotation(geom, provenance=MODEL, review="proposed")


def model_area(anns) -> float:
    return sum(a.geometry.area for a in anns if a.provenance.origin == "model")


def test_a_rerun_replaces_the_models_outlines_so_sum_equals_union():
    region = box(0, 0, 1000, 1000)
    first = [proposal(box(100, 100, 400, 400)), proposal(box(500, 500, 900, 900))]
    second = [proposal(box(150, 150, 450, 450)), proposal(box(480, 480, 880, 880))]
    after = ed.replace_in_region(ed.replace_in_region([], first, region), second, region)
    union = shapely.union_all([a.geometry for a in after]).area
    assert len(after) == 2 and model_area(after) == pytest.approx(union)
    # Stacking (what happened before) would have doubled the total:
    stacked = first + second
    assert sum(a.geometry.area for a in stacked) > shapely.union_all([a.geometry for a in stacked]).area


def test_clipping_at_the_region_border_keeps_the_outside_part_and_its_id():
    crossing = proposal(box(800, 100, 1400, 300))
    outside = proposal(box(2000, 2000, 2100, 2100))
    after = ed.replace_in_region([crossing, outside], [], box(0, 0, 1000, 1000))
    assert [a.id for a in after] == [crossing.id, outside.id]
    assert after[0].geometry.equals(box(1000, 100, 1400, 300))
    assert after[1] is outside  # nothing outside the region changes
    assert crossing.geometry.equals(box(800, 100, 1400, 300))  # inputs untouched


def test_locked_and_edited_and_painted_survive_a_rerun_unless_replaced_on_purpose():
    region = box(0, 0, 1000, 1000)
    painted = Annotation(box(100, 100, 300, 300))
    edited = proposal(box(400, 400, 600, 600)).edited(box(400, 400, 650, 600))
    locked = dataclasses.replace(proposal(box(700, 700, 900, 900)), locked=True)
    plain = proposal(box(50, 700, 200, 900))
    existing = [painted, edited, locked, plain]
    assert {a.id for a in ed.protected_overlapping(existing, region)} == {painted.id, edited.id, locked.id}
    kept = ed.replace_in_region(existing, [], region)
    assert [a.id for a in kept] == [painted.id, edited.id, locked.id]
    replaced = ed.replace_in_region(existing, [], region, replace_protected=True)
    assert [a.id for a in replaced] == [locked.id]  # a lock is never overridden
    assert replaced[0].geometry.equals(locked.geometry)


def test_brush_adds_and_subtracts_and_marks_the_outline_edited():
    a = proposal(box(0, 0, 100, 100))
    grown = ed.add_to(a, Point(100, 50).buffer(20))
    assert grown.id == a.id and grown.provenance.edited and not grown.is_proposal
    assert grown.geometry.area > a.geometry.area and grown.geometry.is_valid
    assert not a.provenance.edited  # the undo stack's copy is unchanged
    far = ed.add_to(a, Point(500, 500).buffer(10))  # a separate dab joins as a second part
    assert isinstance(far.geometry, MultiPolygon) and far.geometry.area == pytest.approx(
        a.geometry.area + Point(500, 500).buffer(10).area
    )
    bitten = ed.subtract_from(a, box(50, 0, 150, 100))
    assert bitten.geometry.equals(box(0, 0, 50, 100))
    assert ed.subtract_from(a, box(-10, -10, 200, 200)) is None
    locked = dataclasses.replace(a, locked=True)
    assert ed.add_to(locked, box(90, 0, 200, 100)) is locked
    assert ed.subtract_from(locked, box(0, 0, 50, 50)) is locked


def test_vertex_move_insert_delete():
    a = Annotation(box(0, 0, 100, 100))
    ref = ed.vertex_at(a, 99, 1, tolerance=5)
    assert ref is not None and (ref.x, ref.y) == (100.0, 0.0)
    assert ed.vertex_at(a, 50, 50, tolerance=5) is None
    moved = ed.move_vertex(a, ref, 150, -20)
    assert moved.geometry.is_valid and moved.geometry.area > a.geometry.area and moved.id == a.id
    # Dragging a vertex across the polygon would make it cross itself: refused.
    assert ed.move_vertex(a, ed.vertex_at(a, 100, 100, 1), -50, 50).geometry.equals(a.geometry)
    hit = ed.edge_at(a, 50, 2, tolerance=5)
    assert hit is not None
    eref, x, y = hit
    assert (x, y) == (50.0, 0.0)
    inserted = ed.insert_vertex(a, eref, 50, -30)
    assert shapely.get_num_coordinates(inserted.geometry) == shapely.get_num_coordinates(a.geometry) + 1
    assert inserted.geometry.area == pytest.approx(100 * 100 + 100 * 30 / 2)
    back = ed.delete_vertex(inserted, ed.vertex_at(inserted, 50, -30, 1))
    assert back.geometry.area == pytest.approx(a.geometry.area)
    triangle = Annotation(Polygon([(0, 0), (10, 0), (0, 10)]))
    assert ed.delete_vertex(triangle, ed.vertex_at(triangle, 0, 0, 1)) is triangle  # never below 3


def test_merge_and_split():
    big = Annotation(box(0, 0, 100, 100), cls="Stroma", color=(150, 200, 150))
    small = proposal(box(90, 0, 150, 50))
    merged = ed.merge([big, small])
    assert merged.id == big.id and merged.cls == "Stroma"
    assert merged.geometry.area == pytest.approx(shapely.union(big.geometry, small.geometry).area)
    with pytest.raises(ed.EditError):
        ed.merge([big, dataclasses.replace(small, locked=True)])
    two = proposal(MultiPolygon([box(0, 0, 10, 10), box(20, 0, 50, 30)]))
    parts = ed.split_parts(two)
    assert len(parts) == 2 and parts[0].id == two.id and parts[1].id != two.id
    assert parts[0].geometry.area == 900 and parts[1].geometry.area == 100
    halves = ed.split_along(Annotation(box(0, 0, 100, 100)), LineString([(30, -10), (30, 110)]))
    assert sorted(h.geometry.area for h in halves) == [3000, 7000]
    assert ed.split_along(big, LineString([(200, 0), (300, 0)])) == [big]


def test_class_lock_and_accept():
    anns = [proposal(box(0, 0, 10, 10)), proposal(box(100, 100, 110, 110))]
    stroma = AnnotationClass("Stroma", (150, 200, 150))
    changed = ed.set_class(anns, stroma)
    assert [(a.cls, a.color) for a in changed] == [("Stroma", (150, 200, 150))] * 2
    assert all(a.provenance.edited for a in changed)  # a re-run will not silently undo it
    locked = ed.set_locked(anns[:1], True)
    assert ed.set_class(locked, stroma)[0].cls == "Tumor"
    accepted = ed.accept_in_region(anns, box(-5, -5, 50, 50))
    assert [a.review for a in accepted] == ["accepted", "proposed"]


def test_class_totals_are_union_areas_not_sums():
    anns = [
        Annotation(box(0, 0, 100, 100)),
        Annotation(box(50, 0, 150, 100)),  # overlaps the first by half
        Annotation(box(0, 500, 10, 510), cls="Stroma", color=(150, 200, 150)),
    ]
    tumour, stroma = ed.class_totals(anns, mpp=0.5)
    assert (tumour.cls, tumour.count, tumour.area_px) == ("Tumor", 2, 15_000)
    assert tumour.area_um2 == pytest.approx(15_000 * 0.25)
    assert (stroma.cls, stroma.count, stroma.area_px) == ("Stroma", 1, 100)
    assert ed.class_totals(anns, None)[0].area_um2 is None


def test_class_list_round_trips_and_bad_lists_name_the_setting():
    mine = [*DEFAULT_CLASSES, AnnotationClass("Mucin", (0, 120, 255))]
    assert classes_from_json(classes_to_json(mine)) == mine
    assert [c.name for c in DEFAULT_CLASSES] == ["Tumor", "Stroma", "Necrosis", "Immune cells", "Other"]
    with pytest.raises(Exception, match="annotation classes"):
        classes_from_json('[{"name": "x", "color": [1, 2]}]', where="annotation classes")
