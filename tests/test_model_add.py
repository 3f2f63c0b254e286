"""Bring your own model: `delineo model add|list|remove` with two models built here whose
conventions are unlike the shipped model's (tests/foreign_models.py), a slide painted with
shapes in their colours, and the bad models `model add` must refuse without installing anything.
Every test installs into its own per-user folder (XDG_DATA_HOME in tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import foreign_models as fm
import pytest
import shapely
from conftest import RunningServer, run_delineo

from app.cli import main as delineo_main
from app.inference.modelcard import ModelCard

MODEL_MPP = 1.0  # the foreign models' mpp; the slide is 0.5 µm/px, so runs read its level 1
AREA_TOLERANCE = 0.03


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("foreign-models")
    return {
        "onnx": fm.softmax_onnx(d / "rgb-softmax.onnx"),
        "ir": fm.bgr_ir(d / "bgr-probabilities.xml"),
        "one-channel-input": fm.wrong_channels_onnx(d / "grey.onnx"),
        "rank-3-input": fm.wrong_rank_onnx(d / "rank3.onnx"),
    }


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    return fm.shapes_slide(tmp_path_factory.mktemp("shapes") / "shapes.tif", mpp=0.5)


@pytest.fixture
def models_folder(tmp_path, monkeypatch) -> Path:
    """This test's own per-user models folder (platformdirs follows XDG_DATA_HOME on Linux),
    for this process and the `delineo` processes it starts."""
    data = tmp_path / "user-data"
    monkeypatch.setenv("XDG_DATA_HOME", str(data))
    return data / "Delineo" / "models"


def onnx_args(path: Path, name: str = "rgb-softmax") -> list[str]:
    """RGB in 0..1, logits out: the runtime applies softmax; Background is never outlined."""
    return [
        "model", "add", str(path), "--name", name, "--mpp", str(MODEL_MPP),
        "--classes", fm.SOFTMAX_CLASSES, "--background-class", "Background",
    ]  # fmt: skip


def ir_args(path: Path, name: str = "bgr-probabilities") -> list[str]:
    """BGR in 0..255 with a per-channel mean and std, probabilities out (activation none)."""
    mean, std = (",".join(f"{v:g}" for v in t) for t in (fm.IR_MEAN_BGR, fm.IR_STD_BGR))
    return [
        "model", "add", str(path), "--name", name, "--mpp", str(MODEL_MPP),
        "--classes", fm.IR_CLASSES, "--background-class", "background", "--activation", "none",
        "--input-range", "255", "--mean", mean, "--std", std, "--channel-order", "BGR",
    ]  # fmt: skip


def installed_cards(models_folder: Path) -> list[Path]:
    return sorted(models_folder.rglob("card.json")) if models_folder.exists() else []


def add(args: list[str], capsys) -> tuple[int, str]:
    """`delineo ...` in this process (the same code as the command, without a start-up)."""
    code = delineo_main(args)
    return code, capsys.readouterr().err


# -- installing ----------------------------------------------------------------------------


def test_the_onnx_softmax_model_is_installed_with_a_card_that_says_how_to_run_it(
    foreign, models_folder, capsys
):
    code, err = add(onnx_args(foreign["onnx"]), capsys)
    assert code == 0, err
    assert "installed rgb-softmax" in err and "openvino" in err and "onnxruntime" in err
    card = ModelCard.load("rgb-softmax")  # by name: the user's folder is searched
    assert card.path == models_folder / "rgb-softmax"
    assert card.verify() == []  # the sha256 of the copied file is the card's
    raw = card.raw
    assert raw["format"] == 2
    assert [(c["name"], c["channel"]) for c in raw["classes"]] == [
        ("Red", 0),
        ("Green", 1),
        ("Background", 2),
    ]
    assert raw["classes"][0]["color"] == [200, 0, 0] and raw["classes"][1]["color"] == [0, 160, 0]
    assert raw["classes"][2]["color"] == [128, 128, 128]  # the background: grey unless given
    assert raw["background"] == "Background" and raw["output"]["activation"] == "softmax"
    assert raw["input"]["channel_order"] == "RGB" and raw["input"]["tile"] == 512
    assert raw["input"]["multiple"] == 2  # its average pool halves the tile: found in the graph
    assert raw["normalization"] == {"scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    assert list(raw["files"]) == ["onnx-fp32"]
    assert not (models_folder / ".staging").exists() or not any((models_folder / ".staging").iterdir())


def test_the_openvino_ir_is_installed_with_its_weights_and_its_fixed_tile(foreign, models_folder, capsys):
    code, err = add(ir_args(foreign["ir"]), capsys)
    assert code == 0, err
    card = ModelCard.load("bgr-probabilities")
    assert sorted(p.name for p in card.path.iterdir()) == [
        "bgr-probabilities.bin",
        "bgr-probabilities.xml",
        "card.json",
    ]
    entry = next(iter(card.files.values()))
    assert entry["weights"]["path"] == "bgr-probabilities.bin" and card.verify() == []
    raw = card.raw
    assert raw["input"]["tile"] == fm.IR_TILE  # the IR takes 256x256 only
    assert raw["input"]["channel_order"] == "BGR" and raw["output"]["activation"] == "none"
    assert raw["normalization"] == {"scale": 1.0, "mean": list(fm.IR_MEAN_BGR), "std": list(fm.IR_STD_BGR)}
    assert raw["background"] == "Background"  # --background-class matched case-insensitively


def test_an_onnx_model_with_external_weights_is_installed_with_them(foreign, models_folder, tmp_path, capsys):
    model = fm.with_external_data(foreign["onnx"], tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").is_file()
    code, err = add(onnx_args(model, name="big"), capsys)
    assert code == 0, err
    card = ModelCard.load("big")
    assert card.files["onnx-fp32"]["weights"]["path"] == "big.onnx.data"
    assert (card.path / "big.onnx.data").read_bytes() == (tmp_path / "big.onnx.data").read_bytes()
    (card.path / "big.onnx.data").write_bytes(b"\0" * 8)  # damaged after installing: caught
    assert card.verify() == ["onnx-fp32"]


def test_a_graph_ending_in_softmax_given_softmax_again_is_installed_with_a_note(
    foreign, models_folder, capsys
):
    args = [a if a != "none" else "softmax" for a in ir_args(foreign["ir"])]
    code, err = add(args, capsys)
    assert code == 0, err
    assert "note: bgr-probabilities.xml: no pixel of the sample tile scores above 0.58" in err
    assert "--activation none --force" in err
    code, err = add(ir_args(foreign["ir"], name="right"), capsys)
    assert code == 0 and "note:" not in err


def test_cards_written_by_model_add_follow_the_published_schema(foreign, models_folder, capsys):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(
        (Path(__file__).parents[1] / "docs" / "model-card.schema.json").read_text(encoding="utf-8")
    )
    for args in (onnx_args(foreign["onnx"]), ir_args(foreign["ir"])):
        assert add(args, capsys)[0] == 0
    for card_json in installed_cards(models_folder):
        jsonschema.validate(json.loads(card_json.read_text(encoding="utf-8")), schema)


def test_list_shows_installed_and_shipped_models_and_remove_takes_only_installed_ones(
    foreign, models_folder, capsys
):
    assert add(onnx_args(foreign["onnx"]), capsys)[0] == 0
    assert delineo_main(["model", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["rgb-softmax"]["classes"] == ["Red", "Green", "Background"]
    assert rows["rgb-softmax"]["source"] == "installed" and rows["rgb-softmax"]["mpp"] == MODEL_MPP
    assert rows["rgb-softmax"]["folder"] == str(models_folder / "rgb-softmax")
    assert rows["ebhi-tumour-resunet"]["source"] == "shipped"
    assert delineo_main(["model", "list"]) == 0
    table = capsys.readouterr().out
    assert "rgb-softmax" in table and "Background (background)" in table and "ebhi-tumour-resunet" in table

    code, err = add(["model", "remove", "ebhi-tumour-resunet"], capsys)
    assert code == 2 and "shipped with Delineo" in err
    assert ModelCard.load("ebhi-tumour-resunet").verify() == []
    code, err = add(["model", "remove", "no-such-model"], capsys)
    assert code == 2 and "no installed model" in err and "rgb-softmax" in err
    assert add(["model", "remove", "rgb-softmax"], capsys)[0] == 0
    assert installed_cards(models_folder) == []
    delineo_main(["model", "list", "--json"])
    assert "rgb-softmax" not in {r["name"] for r in json.loads(capsys.readouterr().out)}


def test_list_says_why_a_card_in_the_models_folder_cannot_be_used(models_folder, capsys):
    broken = models_folder / "hand-written"
    broken.mkdir(parents=True)
    (broken / "card.json").write_text('{"name": "hand-written", "version": "1"')
    assert delineo_main(["model", "list", "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == "hand-written")
    assert "not a valid model card" in row["error"] and row["source"] == "installed"
    assert delineo_main(["model", "list"]) == 0
    assert "unusable:" in capsys.readouterr().out


def test_a_second_add_of_a_name_is_refused_unless_forced(foreign, models_folder, capsys):
    assert add(onnx_args(foreign["onnx"], name="mine"), capsys)[0] == 0
    code, err = add(ir_args(foreign["ir"], name="mine"), capsys)
    assert code == 2 and "already installed" in err and "--force" in err
    assert ModelCard.load("mine").raw["input"]["channel_order"] == "RGB"  # untouched
    assert add([*ir_args(foreign["ir"], name="mine"), "--force"], capsys)[0] == 0
    assert ModelCard.load("mine").raw["input"]["channel_order"] == "BGR"
    assert [p.parent.name for p in installed_cards(models_folder)] == ["mine"]


# -- delineating with them -----------------------------------------------------------------


def outlines(geojson: Path) -> dict[str, float]:
    """Area in µm² of the outlines per class of a `delineo delineate` result (0.5 µm/px)."""
    areas: dict[str, float] = {}
    for f in json.loads(geojson.read_text(encoding="utf-8"))["features"]:
        name = f["properties"]["classification"]["name"]
        areas[name] = areas.get(name, 0.0) + shapely.geometry.shape(f["geometry"]).area * 0.25
    return areas


@pytest.mark.parametrize(
    ("model", "engine", "precision", "found", "not_found"),
    [
        ("onnx", "openvino", None, {"Red": "red", "Green": "green"}, "blue"),  # its only file: FP32
        ("onnx", "onnxruntime", "fp32", {"Red": "red", "Green": "green"}, "blue"),
        ("ir", "openvino", "fp16", {"Red": "red", "Blue": "blue"}, "green"),
    ],
    ids=["onnx-openvino", "onnx-onnxruntime", "ir-openvino"],
)
def test_delineate_outlines_each_shape_as_its_class_and_never_the_background(
    foreign, shapes, models_folder, tmp_path, capsys, model, engine, precision, found, not_found
):
    args = onnx_args(foreign[model]) if model == "onnx" else ir_args(foreign[model])
    assert add(args, capsys)[0] == 0
    slide, drawn = shapes
    out = tmp_path / "outlines.geojson"
    r = run_delineo(
        "delineate", str(slide), "--region", "0,0,2048,2048", "--out", str(out),
        "--model", args[4], "--engine", engine, *(("--precision", precision) if precision else ()),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    areas = outlines(out)
    assert set(areas) == set(found), f"classes outlined: {sorted(areas)}"  # never "Background"
    for cls, shape in found.items():
        assert areas[cls] == pytest.approx(drawn[shape], rel=AREA_TOLERANCE), cls
    assert not_found not in found.values()


def test_serve_and_bench_take_an_installed_model_by_name(foreign, shapes, models_folder, tmp_path, capsys):
    pytest.importorskip("kserve")
    import httpx

    assert add(onnx_args(foreign["onnx"]), capsys)[0] == 0
    r = run_delineo(
        "bench", "model", "--model", "rgb-softmax", "--configs", "onnxruntime-fp32", "--repeats", "1"
    )
    assert r.returncode == 0, r.stderr
    assert "onnxruntime-fp32" in r.stdout
    server = RunningServer("--model", "rgb-softmax", "--precision", "fp32", "--threads", "1")
    try:
        meta = httpx.get(f"{server.url}/v2/models/rgb-softmax", timeout=10).json()
        card = meta["parameters"]["delineo_card"]
        assert [c["name"] for c in card["classes"]] == ["Red", "Green", "Background"]
        assert card["background"] == "Background" and meta["outputs"][0]["shape"][1] == 3
        out = tmp_path / "remote.geojson"
        slide, drawn = shapes
        r = run_delineo(
            "delineate", str(slide), "--region", "0,0,2048,2048", "--out", str(out),
            "--engine", "remote", "--url", server.url,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        areas = outlines(out)
        assert set(areas) == {"Red", "Green"}
        assert areas["Red"] == pytest.approx(drawn["red"], rel=AREA_TOLERANCE)
    finally:
        server.stop()


# -- refusing ------------------------------------------------------------------------------


def _text_model(tmp_path: Path) -> Path:
    p = tmp_path / "notes.onnx"
    p.write_text("This is not a model, just a text file someone named .onnx\n")
    return p


def _checkpoint(tmp_path: Path) -> Path:
    p = tmp_path / "model.pt"
    p.write_bytes(b"PK\x03\x04" + bytes(200))  # what torch.save writes starts as a zip
    return p


def _ir_without_weights(tmp_path: Path, foreign) -> Path:
    p = tmp_path / "lonely.xml"
    p.write_bytes(foreign["ir"].read_bytes())
    return p


REFUSALS = {
    # name: (args given the foreign models and tmp_path, words the one line must contain)
    "wrong channel count": (
        lambda f, t: onnx_args(f["one-channel-input"]),
        ["grey.onnx", "1 channel(s) at axis 1", "3-channel NCHW"],
    ),
    "wrong input rank": (lambda f, t: onnx_args(f["rank-3-input"]), ["rank3.onnx", "rank 3", "rank 4"]),
    "a text file named .onnx": (lambda f, t: onnx_args(_text_model(t)), ["notes.onnx", "not an ONNX model"]),
    "external weights under another name": (
        lambda f, t: onnx_args(fm.with_external_data(f["onnx"], t / "split.onnx", location="weights.bin")),
        ["split.onnx", "weights.bin", "split.onnx.data"],
    ),
    "an IR without its .bin": (lambda f, t: ir_args(_ir_without_weights(t, f)), ["lonely.bin", "missing"]),
    "a PyTorch checkpoint": (
        lambda f, t: [*onnx_args(f["onnx"])[:2], str(_checkpoint(t)), *onnx_args(f["onnx"])[3:]],
        ["model.pt", "not an ONNX model (.onnx) or an OpenVINO IR", "export it to ONNX"],
    ),
    "classes that do not match the output": (
        lambda f, t: [*onnx_args(f["onnx"])[:-4], "--classes", "Red,Green"],
        ["--classes", "2 class(es)", "outputs 3 channel(s)"],
    ),
    "background not among the classes": (
        lambda f, t: [*onnx_args(f["onnx"])[:-1], "Stroma"],
        ["--background-class", "'Stroma'", "not one of the classes"],
    ),
    "logits declared as probabilities": (
        lambda f, t: [*onnx_args(f["onnx"]), "--activation", "none"],
        ["rgb-softmax.onnx", "not probabilities", "--activation softmax"],
    ),
    "a mean in 0..255 for a 0..1 input": (
        lambda f, t: [a if a != "255" else "1" for a in ir_args(f["ir"])],
        ["--mean 90,110,130", "--input-range 255"],
    ),
    "a tile the model does not take": (
        lambda f, t: [*ir_args(f["ir"]), "--tile", "512"],
        ["--tile 512", "256"],
    ),
    "a bad colour": (
        lambda f, t: [*onnx_args(f["onnx"])[:-4], "--classes", "Red:red,Green,Background"],
        ["--classes", "#rrggbb"],
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_model_that_does_not_fit_is_refused_in_one_line_and_nothing_is_installed(
    case, foreign, models_folder, tmp_path, capsys
):
    make_args, words = REFUSALS[case]
    code, err = add(make_args(foreign, tmp_path), capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("delineo: error: "), err
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    assert installed_cards(models_folder) == []
    staging = models_folder / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []


# -- choosing one ----------------------------------------------------------------------------


def test_settings_lists_each_model_with_the_classes_it_outlines(
    foreign, models_folder, capsys, qtbot, qsettings
):
    from app.ui.settings_dialog import SettingsDialog, load_settings

    assert add(onnx_args(foreign["onnx"]), capsys)[0] == 0
    dlg = SettingsDialog(qsettings)
    qtbot.addWidget(dlg)
    labels = {dlg.model.itemData(i): dlg.model.itemText(i) for i in range(dlg.model.count())}
    assert labels["rgb-softmax"] == "rgb-softmax — Red, Green"  # the background is not outlined
    assert labels["ebhi-tumour-resunet"] == "ebhi-tumour-resunet — Tumor"
    dlg.model.setCurrentIndex(dlg.model.findData("rgb-softmax"))
    assert "background: Background" in dlg.model_details.text()
    assert "installed with delineo model add" in dlg.model_details.text()
    dlg.accept()
    assert load_settings(qsettings).model == "rgb-softmax"
