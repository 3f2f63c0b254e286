"""Exports checked against their readers' rules and by independent readers; imports of what
QuPath writes; bad input."""

from __future__ import annotations

import csv
import json
import uuid
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from conftest import SAMPLE_SVS, run_delineo
from PIL import Image
from shapely.geometry import MultiPolygon, Polygon, box, shape

from app.core import export
from app.core.annotations import Annotation, AnnotationError, Provenance, read_geojson, write_geojson
from app.core.slide import Slide

MPP = 0.499


@pytest.fixture
def annotations() -> list[Annotation]:
    with_hole = Polygon(
        [(600, 900), (1500, 950), (1400, 1800), (700, 1700)],
        [[(900, 1200), (1100, 1200), (1100, 1400), (900, 1400)]],
    )
    two = MultiPolygon([box(200, 2200, 500, 2500), box(600, 2300, 800, 2600)])
    return [
        Annotation(
            with_hole, provenance=Provenance("model", "ebhi-tumour-resunet", "1.0.0", "openvino-int8")
        ),
        Annotation(two, cls="Stroma", color=(0, 150, 0)),
    ]


def check_qupath_feature_collection(fc: dict) -> None:
    """The rules QuPath's GeoJSON reader applies to annotations."""
    assert fc["type"] == "FeatureCollection"
    for f in fc["features"]:
        assert f["type"] == "Feature"
        uuid.UUID(f["id"])
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")
        props = f["properties"]
        assert props["objectType"] == "annotation"
        cls = props["classification"]
        assert isinstance(cls["name"], str)
        assert len(cls["color"]) == 3 and all(0 <= v <= 255 for v in cls["color"])
        assert all(isinstance(v, int | float) for v in props["measurements"].values())
        rings = f["geometry"]["coordinates"]
        for poly in rings if f["geometry"]["type"] == "MultiPolygon" else [rings]:
            for ring in poly:
                assert ring[0] == ring[-1] and len(ring) >= 4


def test_geojson_follows_qupath_and_keeps_holes(tmp_path, annotations):
    out = export.export_geojson(tmp_path / "a.geojson", annotations, MPP)
    fc = json.loads(out.read_text(encoding="utf-8"))
    check_qupath_feature_collection(fc)
    f0 = fc["features"][0]
    assert len(f0["geometry"]["coordinates"]) == 2  # exterior + hole
    assert f0["properties"]["measurements"]["Area µm^2"] == pytest.approx(
        annotations[0].geometry.area * MPP**2, rel=1e-4
    )
    assert fc["features"][1]["geometry"]["type"] == "MultiPolygon"


def test_geojson_bounds_offset_is_applied_both_ways(tmp_path, annotations):
    out = export.export_geojson(tmp_path / "a.geojson", annotations, MPP, offset=(1000, 2000))
    fc = json.loads(out.read_text(encoding="utf-8"))
    assert shape(fc["features"][0]["geometry"]).bounds[0] == pytest.approx(600 - 1000)
    back, _ = read_geojson(out, offset=(1000, 2000))
    assert back[0].geometry.symmetric_difference(annotations[0].geometry).area < 1


def test_roundtrip_export_import_export_is_identical(tmp_path, annotations):
    a = export.export_geojson(tmp_path / "a.geojson", annotations, MPP)
    imported, notes = read_geojson(a)
    assert notes == []
    assert [x.id for x in imported] == [x.id for x in annotations]
    assert [x.cls for x in imported] == [x.cls for x in annotations]
    assert [x.color for x in imported] == [x.color for x in annotations]
    b = export.export_geojson(tmp_path / "b.geojson", imported, MPP)
    assert json.loads(a.read_text(encoding="utf-8")) == json.loads(b.read_text(encoding="utf-8"))


def test_imports_qupath_variants(tmp_path):
    """object_type / type instead of objectType, colorRGB packed ints, a bare feature list."""
    feats = [
        {
            "type": "Feature",
            "geometry": box(0, 0, 100, 100).__geo_interface__,
            "properties": {
                "object_type": "annotation",
                "classification": {"name": "Tumor", "colorRGB": -3670016},
            },
        },
        {
            "type": "Feature",
            "geometry": box(200, 0, 300, 100).__geo_interface__,
            "properties": {"type": "annotation", "classification": {"name": "Stroma", "color": [0, 150, 0]}},
        },
        {
            "type": "Feature",
            "geometry": box(400, 0, 500, 100).__geo_interface__,
            "properties": {"objectType": "detection"},
        },
    ]
    p = tmp_path / "qupath.geojson"
    p.write_text(json.dumps(feats))
    anns, notes = read_geojson(p)
    assert [a.cls for a in anns] == ["Tumor", "Stroma"]
    assert anns[0].color == (200, 0, 0)  # -3670016 is QuPath's packed ARGB for (200, 0, 0)
    assert any("detection" in n for n in notes)


def test_self_intersecting_polygon_is_repaired_with_a_note(tmp_path):
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [100, 100], [100, 0], [0, 100], [0, 0]]]}
    p = tmp_path / "bowtie.geojson"
    p.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "geometry": bowtie, "properties": {"objectType": "annotation"}}
                ],
            }
        )
    )
    anns, notes = read_geojson(p)
    assert len(anns) == 1 and anns[0].geometry.is_valid
    assert anns[0].geometry.area == pytest.approx(5000)
    assert any("repaired" in n for n in notes)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"type": "FeatureCollection", "features": [', "not valid JSON"),
        ("", "not valid JSON"),
        ('{"type": "Point", "coordinates": [1, 2]}', "not GeoJSON"),
        (
            '{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": '
            '{"type": "Polygon", "coordinates": [[1, 2]]}, "properties": {}}]}',
            "malformed geometry",
        ),
    ],
    ids=["truncated", "empty", "not-a-collection", "bad-coordinates"],
)
def test_bad_geojson_names_the_file(tmp_path, content, message):
    p = tmp_path / "bad.geojson"
    p.write_text(content)
    with pytest.raises(AnnotationError) as err:
        read_geojson(p)
    assert str(p) in str(err.value) and message in str(err.value)


def test_enormous_geojson_is_refused_before_reading(tmp_path):
    p = tmp_path / "huge.geojson"
    with open(p, "wb") as f:
        f.truncate(export_limit() + 1)  # sparse: costs no disk
    with pytest.raises(AnnotationError, match="larger than"):
        read_geojson(p)


def export_limit() -> int:
    from app.core.annotations import MAX_GEOJSON_BYTES

    return MAX_GEOJSON_BYTES


def test_asap_xml_follows_asaps_loader(tmp_path, annotations):
    out = export.export_asap_xml(tmp_path / "a.xml", annotations)
    root = ET.parse(out).getroot()
    assert root.tag == "ASAP_Annotations"
    groups = {g.get("Name") for g in root.find("AnnotationGroups")}
    for g in root.find("AnnotationGroups"):
        assert g.get("PartOfGroup") == "None" and g.find("Attributes") is not None
    anns = root.find("Annotations").findall("Annotation")
    assert len(anns) == 4  # polygon + its hole + two parts of the multipolygon
    for a in anns:
        assert a.get("Type") == "Polygon"
        assert a.get("PartOfGroup") in groups  # ASAP rejects the file otherwise
        orders = [int(c.get("Order")) for c in a.find("Coordinates")]
        assert orders == list(range(len(orders))) and len(orders) >= 3
    assert {"Tumor", "Stroma", "Exclusion"} == groups
    first = [(float(c.get("X")), float(c.get("Y"))) for c in anns[0].find("Coordinates")]
    assert Polygon(first).area == pytest.approx(annotations[0].geometry.exterior.convex_hull.area, rel=0.2)


def test_csv_rows_match_the_annotations(tmp_path, annotations):
    out = export.export_csv(tmp_path / "a.csv", annotations, MPP)
    rows = [r for r in csv.DictReader(out.open()) if r["row"] == "annotation"]
    assert [r["id"] for r in rows] == [a.id for a in annotations]
    for r, a in zip(rows, annotations, strict=True):
        assert float(r["area_um2"]) == pytest.approx(a.geometry.area * MPP**2, rel=1e-4)
        assert float(r["perimeter_um"]) == pytest.approx(a.geometry.length * MPP, rel=1e-4)
        assert float(r["centroid_x_px"]) == pytest.approx(a.geometry.centroid.x, abs=0.01)


def test_png_has_the_overlay_scale_bar_and_legend(tmp_path, annotations):
    with Slide.open(SAMPLE_SVS) as s:
        out = export.export_png(tmp_path / "a.png", s, annotations, region=(500, 800, 1100, 1100), mpp=2.0)
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (round(1100 * MPP / 2), round(1100 * MPP / 2))
    a = np.asarray(img.convert("RGB")).astype(int)
    # The tumour outline is drawn in its colour near the polygon's left edge...
    edge_x = round((650 - 500) * MPP / 2)
    red = (a[..., 0] > 150) & (a[..., 1] < 80) & (a[..., 2] < 80)
    assert red[:, max(0, edge_x - 6) : edge_x + 6].any()
    # ...the hole is left clear (no red fill in its middle)...
    hx, hy = round((1000 - 500) * MPP / 2), round((1300 - 800) * MPP / 2)
    assert not red[hy - 3 : hy + 3, hx - 3 : hx + 3].any()
    # ...and a white legend box sits top right, where the slide here is tissue.
    corner = a[4:30, -60:-4]
    assert ((corner > 215).all(axis=2)).mean() > 0.5


def test_tiff_mask_opens_in_openslide_with_size_and_levels(tmp_path, annotations):
    with Slide.open(SAMPLE_SVS) as s:
        out = export.export_tiff_mask(tmp_path / "mask.tif", s, annotations, mpp=2.0)
    with Slide.open(out) as m:
        w, h = m.dimensions
        assert abs(w - 2220 * MPP / 2) <= 1 and abs(h - 2967 * MPP / 2) <= 1
        assert m.level_count >= 2
        assert m.mpp[0] == pytest.approx(2.0, rel=1e-3)
        px = m.read_region(0, 0, 0, w, h)[..., 0]
    ds = 2.0 / MPP
    inside = (round(1000 / ds), round(800 / ds))  # (row, col) of level-0 (800, 1000): tumour
    hole = (round(1300 / ds), round(1000 / ds))  # (1000, 1300): in its hole
    stroma = (round(2350 / ds), round(350 / ds))  # (350, 2350): the stroma box
    assert px[inside] == 1 and px[hole] == 0 and px[stroma] == 2
    assert (px == 0).mean() > 0.5


def test_unwritable_export_says_so_and_leaves_nothing(tmp_path, annotations):
    with pytest.raises(export.ExportError, match="does not exist"):
        export.export_asap_xml(tmp_path / "missing" / "a.xml", annotations)
    target = tmp_path / "taken.png"
    target.mkdir()  # a folder where the file should go: the final rename fails
    with Slide.open(SAMPLE_SVS) as s, pytest.raises(export.ExportError, match="nothing was written"):
        export.export_png(target, s, annotations, mpp=4.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["missing", "taken.png"] or sorted(
        p.name for p in tmp_path.iterdir()
    ) == ["taken.png"]


def test_cli_export_formats_from_saved_annotations(tmp_path, sample_copy, annotations):
    from app.core.annotation_store import beside_slide

    write_geojson(beside_slide(sample_copy), annotations, MPP)
    for fmt, name in (
        ("geojson", "o.geojson"),
        ("asap-xml", "o.xml"),
        ("csv", "o.csv"),
        ("png", "o.png"),
        ("tiff-mask", "o.tif"),
    ):
        r = run_delineo(
            "export",
            str(sample_copy),
            "--format",
            fmt,
            "--out",
            str(tmp_path / name),
            "--mpp",
            "4",
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert (tmp_path / name).stat().st_size > 0
    r = run_delineo(
        "export",
        str(SAMPLE_SVS),
        "--format",
        "csv",
        "--out",
        str(tmp_path / "x.csv"),
        "--annotations",
        str(tmp_path / "nope.geojson"),
        timeout=60,
    )
    assert r.returncode == 2 and "nope.geojson" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_likelihood_map_is_named_for_asap(tmp_path, sample_copy, annotations):
    from app.core.annotation_store import beside_slide

    write_geojson(beside_slide(sample_copy), annotations, MPP)
    r = run_delineo(
        "export",
        str(sample_copy),
        "--format",
        "tiff-mask",
        "--out",
        str(sample_copy.parent / "mask.tif"),
        "--likelihood",
        "--region",
        "600,900,900,900",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    lik = sample_copy.parent / "CMU-1-Small-Region_likelihood_map.tif"
    with Slide.open(lik) as m:
        assert m.level_count >= 2
        # At the resolution the model ran at (the sample decoded at half size: 0.998 µm/px),
        # covering the whole slide: it overlays it exactly.
        assert m.mpp == pytest.approx((2 * MPP, 2 * MPP), rel=1e-3)
        assert m.dimensions[0] * m.mpp[0] == pytest.approx(2220 * MPP, abs=2)
