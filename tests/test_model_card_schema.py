"""docs/model-card.schema.json describes the cards Delineo reads: every shipped card validates,
and the mistakes a lab writing a card by hand is likely to make do not."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "model-card.schema.json").read_text(encoding="utf-8"))
SHIPPED = sorted((ROOT / "resources" / "models").glob("*/card.json"))


def errors(card: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return [e.message for e in validator.iter_errors(card)]


def test_the_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("card_json", SHIPPED, ids=lambda p: p.parent.name)
def test_every_shipped_card_validates(card_json):
    assert SHIPPED, "no shipped model cards found"
    assert errors(json.loads(card_json.read_text(encoding="utf-8"))) == []


def _example() -> dict:
    return json.loads(SHIPPED[0].read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c.pop("classes"),
        lambda c: c["classes"][0].update(color=[300, 0, 0]),
        lambda c: c["classes"][0].update(color="#c80000"),
        lambda c: c["input"].update(layout="NHWC"),
        lambda c: c["input"].update(channel_order="GBR"),
        lambda c: c["input"].update(tile=8),
        lambda c: c["normalization"].update(std=[0.25, 0, 0.25]),
        lambda c: c["normalization"].update(mean=[0.5, 0.5]),
        lambda c: c.update(name="../elsewhere"),
        lambda c: c.update(format=2, output={"threshold": 0.5}),  # format 2 must say its activation
        lambda c: c["output"].update(activation="relu"),
        lambda c: c["files"].update({"tensorflow-fp32": {"path": "m.pb", "sha256": "0" * 64}}),
        lambda c: next(iter(c["files"].values())).update(sha256="not-a-digest"),
        lambda c: next(iter(c["files"].values())).update(path="../../etc/passwd"),
    ],
    ids=[
        "no classes",
        "colour out of range",
        "colour as hex text",
        "NHWC layout",
        "unknown channel order",
        "tile too small",
        "zero std",
        "two means",
        "name is a path",
        "format 2 without activation",
        "unknown activation",
        "unknown file key",
        "bad sha256",
        "file outside the folder",
    ],
)
def test_hand_written_mistakes_fail(break_it):
    card = copy.deepcopy(_example())
    card.setdefault("output", {"activation": "none", "threshold": 0.5})
    break_it(card)
    assert errors(card), "the schema accepted a broken card"
