"""Input nobody should trust: regions and GeoJSON are checked once, on entry, and bounded before
the work they would cost (issue 13, findings 6 and 7)."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import shapely
from conftest import SAMPLE_SVS, run_delineo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry import box, shape

from app.core import geojson_input
from app.core.annotations import AnnotationError, read_geojson
from app.core.geometry import GeometryError, parse_rect, region_within_slide
from app.errors import DelineoError

SQUARE = [[[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]]


def collection(geometry, properties=None) -> dict:
    props = {"objectType": "annotation"} if properties is None else properties
    return {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "geometry": geometry, "properties": props}],
    }


def write(tmp_path: Path, name: str, content) -> Path:
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content if isinstance(content, str) else json.dumps(content))
    return p


# ----------------------------------------------------------------------------- regions


@pytest.mark.parametrize(
    "text, message",
    [
        ("nan,nan,100,100", "finite"),
        ("0,0,inf,10", "finite"),
        ("1e400,0,10,10", "finite"),
        ("0,0,-5,10", "positive"),
        ("0,0,10,0", "positive"),
        ("1,2,3", "X,Y,W,H"),
        ("a,b,c,d", "X,Y,W,H"),
        ("2e7,0,10,10", "within"),
    ],
)
def test_bad_region_text_is_a_clear_error(text, message):
    with pytest.raises(GeometryError, match=message):
        parse_rect(text)


def test_region_is_clipped_to_the_slide_with_a_note_or_refused_when_nothing_is_left():
    inside, note = region_within_slide(box(10, 10, 50, 50), (100, 80))
    assert inside.equals(box(10, 10, 50, 50)) and note is None
    clipped, note = region_within_slide(parse_rect("0,0,1e9,1e9"), (100, 80))
    assert clipped.equals(box(0, 0, 100, 80)) and "clipped" in note and "100 x 80" in note
    with pytest.raises(GeometryError, match="outside the slide"):
        region_within_slide(box(200, 200, 300, 300), (100, 80))
    with pytest.raises(GeometryError, match="not finite"):
        region_within_slide(shapely.Polygon([(0, 0), (float("nan"), 0), (1, 1)]), (100, 80))


@pytest.mark.parametrize("region", ["nan,nan,100,100", "0,0,-1,100", "5000,5000,10,10"])
def test_cli_bad_region_exits_2_with_one_line(tmp_path, region):
    r = run_delineo("delineate", str(SAMPLE_SVS), f"--region={region}", "--out", str(tmp_path / "x.geojson"))
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "internal error" not in r.stderr
    assert not (tmp_path / "x.geojson").exists()


def test_cli_region_larger_than_the_slide_gives_the_whole_slide_polygons(tmp_path):
    outs = {}
    # The slide's lower right quarter (2220 x 2967 px), reached by a region a billion pixels wide.
    for region in ("1100,1500,1e9,1e9", "1100,1500,1120,1467"):
        out = tmp_path / f"{region}.geojson"
        r = run_delineo("delineate", str(SAMPLE_SVS), "--region", region, "--out", str(out))
        assert r.returncode == 0, r.stderr
        outs[region] = (
            r.stderr,
            [shape(f["geometry"]) for f in json.loads(out.read_text(encoding="utf-8"))["features"]],
        )
    huge, whole = outs["1100,1500,1e9,1e9"], outs["1100,1500,1120,1467"]
    assert "clipped" in huge[0] and "clipped" not in whole[0]
    assert whole[1], "the sample has tumour polygons"
    assert shapely.union_all(huge[1]).symmetric_difference(shapely.union_all(whole[1])).area < 1.0


def test_cli_region_geojson_is_validated_and_clipped(tmp_path):
    far = write(tmp_path, "far.geojson", collection(box(1e5, 1e5, 2e5, 2e5).__geo_interface__))
    r = run_delineo(
        "delineate", str(SAMPLE_SVS), "--region-geojson", str(far), "--out", str(tmp_path / "o.geojson")
    )
    assert r.returncode == 2 and "outside the slide" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    nan = write(
        tmp_path,
        "nan.geojson",
        '{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", '
        '"coordinates": [[[0, 0], [NaN, 0], [1, 1], [0, 0]]]}}',
    )
    r = run_delineo(
        "delineate", str(SAMPLE_SVS), "--region-geojson", str(nan), "--out", str(tmp_path / "o.geojson")
    )
    assert r.returncode == 2 and "nan.geojson" in r.stderr and "finite" in r.stderr


# ----------------------------------------------------------------------------- GeoJSON


@pytest.mark.parametrize(
    "content, message",
    [
        (
            '{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", '
            '"coordinates": [[[0, 0], [NaN, 0], [1, 1], [0, 0]]]}}',
            "not finite",
        ),
        (
            '{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", '
            '"coordinates": [[[0, 0], [Infinity, 0], [1, 1], [0, 0]]]}}',
            "not finite",
        ),
        ("[" * 100_000 + "]" * 100_000, "levels deep"),
        (collection({"type": "Banana", "coordinates": SQUARE}), "'Banana' is not a GeoJSON geometry"),
        (collection({"type": "Polygon", "coordinates": [[[0, 0], [1e12, 0], [1, 1], [0, 0]]]}), "beyond"),
        (collection({"type": "Polygon", "coordinates": [[[0, 0], ["a", 0], [1, 1], [0, 0]]]}), "numbers"),
        (collection({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}), "at least 3"),
        (collection({"type": "Polygon", "coordinates": 5}), "list of rings"),
        (
            '{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1'
            + "0" * 5000
            + ", 0]]]}}",
            "not usable JSON",
        ),
    ],
    ids=[
        "nan",
        "infinity",
        "deep",
        "banana",
        "huge-coordinate",
        "string-coordinate",
        "short-ring",
        "not-rings",
        "long-integer",
    ],
)
def test_hostile_geojson_is_refused_naming_the_file_and_the_reason(tmp_path, content, message):
    p = write(tmp_path, "hostile.geojson", content)
    with pytest.raises(AnnotationError) as err:
        read_geojson(p)
    assert str(p) in str(err.value) and message in str(err.value)


def test_wrongly_typed_properties_are_ignored_with_a_note(tmp_path):
    cases = [
        ([1, 2], "'properties' is not an object", (160, 160, 160)),
        ({"classification": {"name": "Tumor", "color": "red"}}, "is not [r, g, b]", (200, 0, 0)),
        ({"classification": {"name": "Tumor", "color": ["a", "b", "c"]}}, "is not [r, g, b]", (200, 0, 0)),
        ({"classification": {"name": "Stroma", "color": [300, 0, 0]}}, "is not [r, g, b]", (160, 160, 160)),
        ({"classification": {"name": "Stroma", "color": "#00ff80"}}, None, (0, 255, 128)),
        ({"classification": ["Tumor"]}, "neither an object", (160, 160, 160)),
        ({"classification": {"name": 5}, "name": ["x"]}, "not text", (160, 160, 160)),
    ]
    for props, note, colour in cases:
        p = write(tmp_path, "props.geojson", collection({"type": "Polygon", "coordinates": SQUARE}, props))
        anns, notes = read_geojson(p)
        assert len(anns) == 1 and anns[0].geometry.equals(box(0, 0, 100, 100)), props
        assert anns[0].color == colour, props
        assert (note is None and not notes) or any(note in n for n in notes), (props, notes)


def test_200k_random_self_intersecting_vertices_are_refused_quickly_in_bounded_memory(tmp_path):
    pts = np.random.default_rng(0).uniform(0, 40_000, (200_000, 2)).round(1).tolist()
    p = write(tmp_path, "scrambled.geojson", collection({"type": "Polygon", "coordinates": [[*pts, pts[0]]]}))
    tracemalloc.start()
    try:
        with pytest.raises(AnnotationError, match="checks at most") as err:
            read_geojson(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "scrambled.geojson" in str(err.value)
    assert peak < 300e6  # GEOS's check took 3.3 GB and ended in std::bad_alloc


def test_a_small_scrambled_polygon_is_not_repaired_for_minutes(tmp_path):
    pts = np.random.default_rng(0).uniform(0, 40_000, (200, 2)).round(1).tolist()  # ~4000 crossings
    p = write(tmp_path, "scrambled.geojson", collection({"type": "Polygon", "coordinates": [[*pts, pts[0]]]}))
    with pytest.raises(
        AnnotationError, match=f"at most {geojson_input.MAX_REPAIR_CROSSINGS} self-intersections"
    ):
        read_geojson(p)
    # A polygon that crosses itself a few times is still repaired, with a note.
    th = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
    ring = np.c_[1000 + 500 * np.cos(th), 1000 + 500 * np.sin(th)]
    for i in range(0, 2000, 200):
        ring[[i, i + 1]] = ring[[i + 1, i]]
    p = write(
        tmp_path,
        "twisted.geojson",
        collection({"type": "Polygon", "coordinates": [[*ring.tolist(), ring[0].tolist()]]}),
    )
    anns, notes = read_geojson(p)
    assert anns[0].geometry.is_valid and any("repaired" in n for n in notes)
    assert anns[0].geometry.area == pytest.approx(np.pi * 500**2, rel=0.01)


def test_6m_vertices_are_refused_before_parsing(tmp_path):
    body = b"[1.5,2.5]," * 6_000_000
    p = write(
        tmp_path,
        "six-million.geojson",
        b'{"type":"Feature","geometry":{"type":"Polygon","coordinates":[['
        + body
        + b'[1.5,2.5]]]},"properties":{}}',
    )
    tracemalloc.start()
    try:
        with pytest.raises(AnnotationError, match="more than 5,000,000 vertices"):
            read_geojson(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * p.stat().st_size  # parsed, it would be about 130 bytes a vertex (780 MB)


def test_one_polygon_over_the_feature_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(geojson_input, "MAX_FEATURE_VERTICES", 1000)
    ring = [[float(i), float(i % 2)] for i in range(1200)] + [[0.0, 0.0]]
    p = write(tmp_path, "long.geojson", collection({"type": "Polygon", "coordinates": [ring]}))
    with pytest.raises(AnnotationError, match="more than the 1,000 Delineo imports in one polygon"):
        read_geojson(p)


# ----------------------------------------------------------------------------- fuzzing

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=40,
)
_numbers = st.integers(-(10**12), 10**12) | st.floats(allow_nan=True, allow_infinity=True)
_position = st.lists(_numbers, min_size=0, max_size=4)
_ring = st.lists(_position, max_size=8)
_geometry = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["Polygon", "MultiPolygon", "Point", "LineString", "GeometryCollection", "Banana"]
        ),
        "coordinates": st.lists(_ring, max_size=3)
        | st.lists(st.lists(_ring, max_size=2), max_size=2)
        | _json,
    }
)
_properties = (
    st.none()
    | _json
    | st.fixed_dictionaries(
        {"classification": _json | st.fixed_dictionaries({"name": _json, "color": _json}), "name": _json}
    )
)
_feature = st.fixed_dictionaries(
    {"type": st.just("Feature"), "geometry": _geometry | _json, "properties": _properties}
)
_document = _json | st.fixed_dictionaries(
    {"type": st.just("FeatureCollection"), "features": st.lists(_feature, max_size=4)}
)

FUZZ = settings(
    max_examples=int(os.environ.get("DELINEO_FUZZ_EXAMPLES", "150")),
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(doc=_document)
def test_fuzzed_geojson_documents_succeed_or_raise_a_clear_error(tmp_path, doc):
    p = tmp_path / "fuzz.geojson"
    p.write_text(json.dumps(doc))
    try:
        anns, _ = read_geojson(p)
    except AnnotationError as e:
        assert str(p) in str(e)
        return
    for a in anns:
        assert a.geometry.is_valid and not a.geometry.is_empty
        assert len(a.color) == 3 and all(0 <= c <= 255 for c in a.color)


@FUZZ
@given(raw=st.binary(max_size=300) | st.text(alphabet='[]{}",:0123456789.eE-+ NaInfity\\tnrul', max_size=300))
def test_fuzzed_bytes_succeed_or_raise_a_clear_error(tmp_path, raw):
    p = tmp_path / "fuzz.geojson"
    p.write_bytes(raw if isinstance(raw, bytes) else raw.encode())
    try:
        read_geojson(p)
    except AnnotationError as e:
        assert str(p) in str(e)


@FUZZ
@given(
    text=st.text(max_size=40)
    | st.lists(st.floats() | st.integers(-(10**20), 10**20), min_size=3, max_size=5).map(
        lambda v: ",".join(map(str, v))
    )
)
def test_fuzzed_region_text_succeeds_or_raises_a_clear_error(text):
    try:
        rect = parse_rect(text)
        region, _ = region_within_slide(rect, (2220, 2967))
    except DelineoError:
        return
    assert region.is_valid and not region.is_empty and box(0, 0, 2220, 2967).covers(region)
