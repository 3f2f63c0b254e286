"""The prediction contract: classes by output channel, declared by the model card, from the
engine's (N, C, H, W) answer through blending, the decision rule and tracing to every export.

The engines here are transparent stand-ins with known answers (a colour rule on the real
sample slide), so each class's outline can be checked against the rule applied directly."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
from conftest import SAMPLE_SVS
from gaussian import gaussian_blur
from shapely.geometry import box

from app.core import export
from app.core.class_scores import ClassScheme, OutputClass
from app.core.geometry import rasterize
from app.core.probability_map import ProbabilityMap
from app.core.slide import Slide
from app.core.tissue import TissueMask
from app.inference.engine import Engine, EngineError, activate, check_output
from app.inference.modelcard import ModelCard, ModelCardError
from app.inference.pipeline import DelineationRun, RunSettings
from app.serve.server import card_summary

REGION = box(400, 600, 1800, 2200)  # tissue and glass on the sample


def card(classes: list[dict], **extra) -> ModelCard:
    raw = {
        "format": 2,
        "name": "colour-rule",
        "version": "1",
        "mpp": 0.5,  # the sample's own: tiles read exactly the pixels the rule is checked on
        "input": {"tile": 256, "overlap": 32, "multiple": 16},
        "normalization": {"scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]},
        "output": {"activation": "none"},
        "classes": classes,
        **extra,
    }
    return ModelCard.from_dict(raw, Path("."))


EXCLUSIVE = [  # channel order unlike the list order, background in the middle
    {"name": "Dark", "color": [120, 0, 160], "channel": 2},
    {"name": "Background", "color": [0, 0, 0], "channel": 0},
    {"name": "Pale", "color": [0, 150, 220], "channel": 1},
]


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Smoothed brightness (N, H, W) or (H, W): as smooth as a real model's map (tile reads are
    aligned to whole pixels, so single nuclei are not comparable)."""
    grey = rgb.astype(np.float32).mean(axis=-1)
    if grey.ndim == 2:
        return gaussian_blur(grey, 3)
    return np.stack([gaussian_blur(g, 3) for g in grey])


class ColourRule(Engine):
    """Exclusive classes by brightness: Dark < 170 <= Pale < 215 <= Background, one-hot, so the
    blended map is the rule itself wherever the tiles agree (they read the same pixels)."""

    name = "colour-rule"

    def __init__(self, card: ModelCard):
        self.card = card

    def predict(self, batch: np.ndarray) -> np.ndarray:
        lum = luminance(batch)
        out = np.zeros((len(batch), 3, *lum.shape[1:]), np.float32)
        out[:, 2] = lum < 170  # Dark
        out[:, 1] = (lum >= 170) & (lum < 215)  # Pale
        out[:, 0] = lum >= 215  # Background
        return out


class Overlapping(Engine):
    """Independent (sigmoid-like) classes: "Stained" where lum < 200, "Dense" where lum < 150,
    as probabilities 0.8 / 0.2, so Dense lies inside Stained and both are outlined."""

    name = "overlapping"

    def __init__(self, card: ModelCard):
        self.card = card

    def predict(self, batch: np.ndarray) -> np.ndarray:
        lum = luminance(batch)
        return np.stack([np.where(lum < 200, 0.8, 0.2), np.where(lum < 150, 0.8, 0.2)], axis=1).astype(
            np.float32
        )


def agreement(slide: Slide, result, mask_of) -> dict[str, float]:
    """Dice per class between the run's outline and the rule applied to the region read at
    once, at the model's resolution, where tiles ran (glass tiles are skipped)."""
    plan = result.plan
    x0, y0 = plan.model_to_level0(0, 0)
    w, h = plan.size
    c = plan.choice
    rgb = slide.read_region(round(x0), round(y0), c.level, w, h, c.reduction)
    inside = rasterize(REGION, (h, w), plan.level0_per_model, (x0, y0)) & (result.blender.weight > 0)
    out = {}
    for name, truth in mask_of(luminance(rgb)).items():
        truth &= inside
        drawn = rasterize(shapely.union_all(result.outlines[name]), (h, w), plan.level0_per_model, (x0, y0))
        out[name] = 2 * (drawn & truth).sum() / max(1, drawn.sum() + truth.sum())
    return out


EXACT = RunSettings(min_area_um2=0, min_hole_um2=0, simplify_um=0)


def test_exclusive_classes_are_outlined_by_argmax_and_background_never_comes_back():
    c = card(EXCLUSIVE, background="Background")
    assert c.scheme.exclusive and [k.name for k in c.scheme.foreground] == ["Pale", "Dark"]
    with Slide.open(SAMPLE_SVS) as s:
        result = DelineationRun(s, REGION, ColourRule(c), EXACT).execute()
        dice = agreement(s, result, lambda lum: {"Dark": lum < 170, "Pale": (lum >= 170) & (lum < 215)})
    assert list(result.outlines) == ["Pale", "Dark"]
    assert result.probability.shape[0] == 3  # one blended channel per class, background included
    annotations = result.annotations()
    assert {a.cls for a in annotations} == {"Pale", "Dark"}  # never Background
    assert {a.color for a in annotations if a.cls == "Dark"} == {(120, 0, 160)}
    assert dice["Dark"] > 0.97 and dice["Pale"] > 0.95, dice  # Pale: a thin band between Dark and glass
    dark, pale = (shapely.union_all(result.outlines[n]) for n in ("Dark", "Pale"))
    # One class per pixel: the outlines meet without overlapping, but for the tracer's cut corners
    # and bridged pinches (a pixel's width along each border).
    assert dark.intersection(pale).area < 0.03 * dark.area


def test_sensitivity_of_exclusive_classes_is_one_minus_background():
    """A map that is 60 % background and 40 % Dark everywhere: argmax says background; a
    sensitivity of 0.3 (foreground when 1 - p(background) >= 0.3) outlines Dark."""
    scheme = card(EXCLUSIVE, background="Background").scheme
    scores = np.zeros((3, 8, 8), np.uint8)
    scores[0], scores[2] = round(0.6 * 255), round(0.4 * 255)
    assert not scheme.labels(scores).any()
    assert (scheme.labels(scores, threshold=0.3) == 2).all()  # label 2 = Dark, the second outlined
    no_bg = ClassScheme(scheme.classes, exclusive=True)  # no background: pure argmax
    assert (no_bg.labels(scores) == 1).all()  # Background is then a class like any other


def test_independent_classes_each_have_their_threshold_and_may_overlap():
    c = card(
        [
            {"name": "Stained", "color": [200, 0, 0], "channel": 0, "threshold": 0.5},
            {"name": "Dense", "color": [0, 0, 200], "channel": 1, "threshold": 0.5},
        ],
        output={"activation": "sigmoid"},
    )
    assert not c.scheme.exclusive
    with Slide.open(SAMPLE_SVS) as s:
        result = DelineationRun(s, REGION, Overlapping(c), EXACT).execute()
        dice = agreement(s, result, lambda lum: {"Stained": lum < 200, "Dense": lum < 150})
        strict = DelineationRun(
            s, REGION, Overlapping(c), RunSettings(threshold=0.9, **vars_of(EXACT))
        ).execute()
    assert min(dice.values()) > 0.97, dice
    stained, dense = (shapely.union_all(result.outlines[n]) for n in ("Stained", "Dense"))
    assert dense.difference(stained).area < 0.01 * dense.area  # Dense inside Stained
    assert strict.polygons == []  # the run's threshold replaces every class's: 0.8 < 0.9


def vars_of(settings: RunSettings) -> dict:
    return {k: getattr(settings, k) for k in ("min_area_um2", "min_hole_um2", "simplify_um")}


def test_a_constant_multi_class_engine_gives_a_seamless_map_per_class():
    c = card(EXCLUSIVE, background="Background")

    class Constant(ColourRule):
        def predict(self, batch):
            out = np.empty((len(batch), 3, *batch.shape[1:3]), np.float32)
            out[:, 0], out[:, 1], out[:, 2] = 0.2, 0.3, 0.5
            return out

    with Slide.open(SAMPLE_SVS) as s:
        region = box(500, 700, 1700, 2100)  # tissue throughout: every tile runs
        every_tile = TissueMask(np.ones((64, 64), bool), 64 / max(s.dimensions))
        result = DelineationRun(s, region, Constant(c), EXACT, tissue=every_tile).execute()
    plan = result.plan
    inside = rasterize(
        region, result.probability.shape[1:], plan.level0_per_model, plan.model_to_level0(0, 0)
    )
    assert result.tiles_done > 4
    for channel, value in ((0, 0.2), (1, 0.3), (2, 0.5)):
        values = result.probability[channel][inside].astype(np.float32)
        assert np.abs(values - value).max() < 2e-3, channel  # no seam, no gap, in every channel
    assert list(result.outlines) == ["Pale", "Dark"] and result.outlines["Pale"] == []
    assert shapely.union_all(result.outlines["Dark"]).symmetric_difference(region).area < 0.01 * region.area


@pytest.fixture(scope="module")
def multi_class_run():
    c = card(EXCLUSIVE, background="Background")
    with Slide.open(SAMPLE_SVS) as s:
        result = DelineationRun(s, REGION, ColourRule(c), RunSettings(min_area_um2=200)).execute()
    return c, result


def test_classes_flow_to_every_export(multi_class_run, tmp_path):
    _, result = multi_class_run
    annotations = result.annotations()
    counts = {n: len(ps) for n, ps in result.outlines.items()}
    assert all(counts.values()), counts
    # QuPath GeoJSON: one classification per class, with its colour.
    export.export_geojson(tmp_path / "a.geojson", annotations, 0.5)
    features = json.loads((tmp_path / "a.geojson").read_text(encoding="utf-8"))["features"]
    by_class = {}
    for f in features:
        klass = f["properties"]["classification"]
        by_class.setdefault(klass["name"], set()).add(tuple(klass["color"]))
    assert by_class == {"Pale": {(0, 150, 220)}, "Dark": {(120, 0, 160)}}
    # ASAP XML: a group per class, every annotation in its class's group.
    root = ET.fromstring(export.asap_xml(annotations))
    groups = {g.get("Name") for g in root.iter("Group")}
    assert {"Pale", "Dark"} <= groups and "Background" not in groups
    assert {a.get("PartOfGroup") for a in root.iter("Annotation")} <= groups
    # TIFF mask: one label value per class, where that class is.
    with Slide.open(SAMPLE_SVS) as s:
        export.export_tiff_mask(tmp_path / "mask.tif", s, annotations)
        w0 = s.dimensions[0]
    labels = export.class_indices(annotations)
    assert set(labels) == {"Pale", "Dark"} and len(set(labels.values())) == 2
    with tifffile.TiffFile(tmp_path / "mask.tif") as tif:
        mask = tif.pages[0].asarray()
    f = w0 / mask.shape[1]  # level-0 px per mask px
    for name in ("Pale", "Dark"):
        drawn = rasterize(shapely.union_all(result.outlines[name]), mask.shape, f, (0.0, 0.0))
        labelled = mask == labels[name]
        # Each label lies inside its class's outline; a filled hole of one class may be painted
        # over by another class's outline inside it.
        assert (drawn & labelled).sum() > 0.95 * labelled.sum() > 0.3 * drawn.sum(), name
    # CSV: a row per annotation with its class, and a total per class.
    export.export_csv(tmp_path / "a.csv", annotations, 0.5)
    rows = list(csv.DictReader((tmp_path / "a.csv").open()))
    assert {r["class"] for r in rows} == {"Pale", "Dark"}
    for name in ("Pale", "Dark"):
        assert sum(r["class"] == name and r["row"] == "annotation" for r in rows) == counts[name]
        total = next(r for r in rows if r["class"] == name and r["row"] == "class total")
        assert int(total["count"]) == counts[name]


def test_the_live_overlay_colours_each_class_as_the_outline_decides(multi_class_run):
    from app.ui.overlay import tile_mask_image

    c, _ = multi_class_run
    scores = np.zeros((3, 4, 6), np.float32)
    scores[0, :, :2] = 1  # background
    scores[1, :, 2:4] = 1  # Pale
    scores[2, :, 4:] = 1  # Dark
    image = tile_mask_image(scores, c.scheme)
    assert image.pixelColor(0, 0).alpha() == 0
    pale, dark = image.pixelColor(2, 1), image.pixelColor(5, 2)
    assert (pale.red(), pale.green(), pale.blue(), pale.alpha()) == (0, 150, 220, 255)
    assert (dark.red(), dark.green(), dark.blue(), dark.alpha()) == (120, 0, 160, 255)


def test_a_multi_class_map_survives_a_restart(multi_class_run, tmp_path):
    _, result = multi_class_run
    pmap = result.probability_map
    back = ProbabilityMap.load(pmap.save(tmp_path / "run.tif"))
    assert back.scheme == pmap.scheme and np.array_equal(back.prob, pmap.prob)
    assert back.trace(0.5, 200) == pmap.trace(0.5, 200)


def test_the_server_metadata_carries_the_classes(multi_class_run):
    c, _ = multi_class_run
    remote_view = ModelCard.from_dict(card_summary(c), Path("."))
    assert remote_view.scheme == c.scheme and remote_view.activation == c.activation


def test_format_1_cards_still_load_as_one_tumour_class():
    shipped = json.loads((Path(ModelCard.load().path) / "card.json").read_text(encoding="utf-8"))
    old = {k: v for k, v in shipped.items() if k != "format"}
    old["classes"] = [{"name": "Tumor", "index": 1, "color": [200, 0, 0]}]
    old["output"] = {"name": "probability", "activation": "sigmoid", "threshold": 0.5}
    legacy = ModelCard.from_dict(old, Path("."))
    assert legacy.activation == "none"  # format 1's graph outputs probability itself
    assert legacy.scheme == ClassScheme((OutputClass("Tumor", (200, 0, 0), 0, 0.5),))
    assert ModelCard.load().scheme == legacy.scheme  # the shipped card says the same in format 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"classes": [{"name": "A", "color": [1, 2, 3], "channel": 1}]}, "channels"),
        ({"classes": [{"name": "A", "color": [1, 2, 3]}, {"name": "A", "color": [1, 2, 3]}]}, "unique"),
        ({"background": "Stroma"}, "background"),
        ({"output": {"activation": "relu"}}, "activation"),
        ({"input": {"tile": 256, "overlap": 32, "channel_order": "GBR"}}, "channel_order"),
        ({"output": {"activation": "softmax"}, "classes": [{"name": "A", "color": [1, 2, 3]}]}, "softmax"),
        ({"format": 7}, "format"),
    ],
)
def test_a_card_that_does_not_add_up_is_refused_with_what_is_wrong(change, message):
    raw = {
        "format": 2,
        "name": "bad",
        "version": "1",
        "mpp": 1.0,
        "input": {"tile": 256, "overlap": 32},
        "normalization": {"scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]},
        "output": {"activation": "softmax"},
        "classes": [{"name": "A", "color": [1, 2, 3]}, {"name": "B", "color": [4, 5, 6]}],
    }
    raw.update(change)
    with pytest.raises(ModelCardError, match=message):
        ModelCard.from_dict(raw, Path("."))


def test_an_answer_with_the_wrong_channel_count_is_an_error_not_empty_outlines():
    c = card(EXCLUSIVE, background="Background")
    with pytest.raises(EngineError, match="3 class channel"):
        check_output(np.zeros((1, 2, 16, 16), np.float32), c, "model.onnx")
    logits = np.array([[[[0.0]], [[np.log(3.0)]]]], np.float32)
    assert activate(logits, "softmax")[0, :, 0, 0] == pytest.approx([0.25, 0.75])
    assert activate(np.zeros((1, 1, 1, 1)), "sigmoid")[0, 0, 0, 0] == pytest.approx(0.5)
