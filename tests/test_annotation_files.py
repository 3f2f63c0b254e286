"""What is saved and restored: provenance, review, lock and class in GeoJSON (and the files of
the earlier format), the store's maps and pixel size, file permissions, DICOM series."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
from conftest import DICOM_DIR, SAMPLE_SVS
from shapely.geometry import box

from app.core import export
from app.core.annotation_store import AnnotationStore
from app.core.annotations import Annotation, Provenance, read_geojson, write_geojson
from app.core.slide import Slide

MODEL = Provenance("model", "ebhi-tumour-resunet", "1.0.0", "openvino-int8", 0.35, 2500.0, "abc123")


def test_geojson_round_trip_keeps_provenance_review_lock_and_class(tmp_path):
    anns = [
        Annotation(box(0, 0, 100, 100), provenance=MODEL, review="proposed"),
        Annotation(box(200, 0, 300, 100), cls="Necrosis", color=(50, 50, 50), locked=True),
        Annotation(box(400, 0, 500, 100), provenance=MODEL).edited(box(400, 0, 520, 100)),
    ]
    path = write_geojson(tmp_path / "a.geojson", anns, 0.5)
    props = json.loads(path.read_text(encoding="utf-8"))["features"][1]["properties"]
    assert props["isLocked"] is True and props["classification"] == {
        "name": "Necrosis",
        "color": [50, 50, 50],
    }
    back, notes = read_geojson(path)
    assert notes == []
    for a, b in zip(anns, back, strict=True):
        assert (b.id, b.cls, b.color, b.provenance, b.review, b.locked) == (
            a.id,
            a.cls,
            a.color,
            a.provenance,
            a.review,
            a.locked,
        )
        assert b.geometry.equals(a.geometry)
    assert back[0].is_proposal and not back[2].is_proposal
    assert back[0].source == (
        "model ebhi-tumour-resunet 1.0.0 (openvino-int8), threshold 0.35, min area 2500 µm²"
    )
    assert back[2].source.endswith(", edited")


def test_files_of_the_earlier_format_still_load(tmp_path):
    def feature(source: str | None, x: int) -> dict:
        props = {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}
        if source is not None:
            props["source"] = source
        ring = [[x, 0], [x + 10, 0], [x + 10, 10], [x, 10], [x, 0]]
        return {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": props,
        }

    old = {
        "type": "FeatureCollection",
        "features": [
            feature("ebhi-tumour-resunet 1.0.0 openvino-int8", 0),
            feature("painted", 20),
            feature("QuPath wand", 40),
            feature(None, 60),
            feature("delineo:region", 80),  # the earlier painted region: not an annotation
        ],
    }
    path = tmp_path / "old.geojson"
    path.write_text(json.dumps(old))
    anns, _ = read_geojson(path)
    assert [a.provenance.origin for a in anns] == ["model", "painted", "imported", "imported"]
    m = anns[0].provenance
    assert (m.model, m.version, m.engine) == ("ebhi-tumour-resunet", "1.0.0", "openvino-int8")
    assert anns[0].review == "proposed" and anns[1].review == "accepted"
    store_slide = tmp_path / "s.svs"
    shutil.copy(path, tmp_path / "s.svs.annotations.geojson")
    state = AnnotationStore(store_slide, tmp_path / "data").load()
    assert state.region.equals(box(80, 0, 90, 10)) and len(state.annotations) == 4


def test_store_keeps_the_user_pixel_size_and_the_region(tmp_path):
    slide = tmp_path / "slide.png"
    store = AnnotationStore(slide, tmp_path / "data")  # the slide records no mpp
    anns = [Annotation(box(0, 0, 100, 100))]
    doc = store.document(anns, box(0, 0, 500, 500), mpp=0.5)
    saved = doc.to_dict()
    assert saved["features"][0]["properties"]["measurements"]["Area µm^2"] == 2500.0  # measured with it
    store.write(doc)
    state = AnnotationStore(slide, tmp_path / "data").load()
    assert state.mpp == 0.5 and state.region.equals(box(0, 0, 500, 500))
    assert [a.id for a in state.annotations] == [anns[0].id]


def test_maps_beside_the_annotations_and_pruned_when_no_annotation_uses_them(tmp_path):
    slide = tmp_path / "slide.svs"
    store = AnnotationStore(slide, tmp_path / "data")
    keep, stale = store.map_path("run-a"), store.map_path("run-b")
    assert keep.parent == store.path.parent and keep.name == "slide.svs.run-run-a.likelihood.tif"
    keep.write_bytes(b"x")
    stale.write_bytes(b"x")
    used = Annotation(box(0, 0, 10, 10), provenance=Provenance("model", run_id="run-a"))
    doc = store.document([used], None)
    store.write(doc)
    assert keep.exists() and not stale.exists()
    assert store.load().maps == {"run-a": keep}
    late = store.map_path("run-c")  # a map saved after the document was built is spared
    late.write_bytes(b"x")
    os.utime(late, (doc.built + 1,) * 2)
    store.write(doc)
    assert late.exists()
    assert set(store.prune_maps([])) == {keep, late}
    assert not keep.exists() and not late.exists()


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    from app.core import file_modes

    file_modes._umask.cache_clear()
    yield 0o640
    os.umask(old)
    file_modes._umask.cache_clear()


def test_autosaved_and_exported_files_get_the_umask_not_0600(tmp_path, umask_027):
    store = AnnotationStore(tmp_path / "slide.svs", tmp_path / "data")
    saved = store.write(store.document([Annotation(box(0, 0, 10, 10))], None))
    csv = export.export_csv(tmp_path / "a.csv", [Annotation(box(0, 0, 10, 10))], 0.5)
    geo = export.export_geojson(tmp_path / "a.geojson", [Annotation(box(0, 0, 10, 10))], 0.5)
    for p in (saved, csv, geo):
        assert stat.S_IMODE(p.stat().st_mode) == umask_027, p


def test_a_dicom_series_has_one_autosave_whichever_file_was_opened(tmp_path):
    series = tmp_path / "series"
    shutil.copytree(DICOM_DIR, series)
    paths = set()
    for opened in (series / "level-0-frames-0-30.dcm", series / "level-3-frames-0-1.dcm", series):
        with Slide.open(opened) as s:
            paths.add(AnnotationStore(s.path, tmp_path / "data").path)
    assert paths == {tmp_path / "series.annotations.geojson"}


def test_the_sample_slide_keeps_its_own_name(tmp_path):
    assert AnnotationStore(SAMPLE_SVS, tmp_path).fallback.name.startswith(SAMPLE_SVS.name)


def test_csv_rows_carry_review_state_and_totals_are_union_areas(tmp_path):
    import csv

    anns = [
        Annotation(box(0, 0, 100, 100), provenance=MODEL, review="proposed"),
        Annotation(box(50, 0, 150, 100), locked=True),  # overlaps the first by half
    ]
    rows = list(csv.DictReader(export.export_csv(tmp_path / "a.csv", anns, 0.5).open(encoding="utf-8")))
    per = [r for r in rows if r["row"] == "annotation"]
    assert [(r["origin"], r["review"], r["locked"]) for r in per] == [
        ("model", "proposed", "no"),
        ("painted", "accepted", "yes"),
    ]
    assert per[0]["source"].startswith("model ebhi-tumour-resunet 1.0.0")
    (total,) = [r for r in rows if r["row"] == "class total"]
    assert (total["class"], total["count"]) == ("Tumor", "2")
    assert float(total["area_um2"]) == pytest.approx(15_000 * 0.25)  # the union, not 20,000 px²
