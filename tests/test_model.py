"""The model pipeline: training lowers the loss, conversion keeps the model, the shipped model
matches its card. Uses the bundled EBHI-Seg tiles; torch comes from the [train] extra."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import EBHI, SAMPLE_SVS, run_delineo

torch = pytest.importorskip("torch")

from app.core.slide import Slide  # noqa: E402
from app.inference.engines import ONNXRuntimeEngine, OpenVINOEngine  # noqa: E402
from app.inference.modelcard import ModelCard, to_model_input  # noqa: E402


def test_training_steps_lower_the_loss():
    from app.core.dataset import read_manifest
    from app.model.train import TileBank, TrainConfig, dice_bce_loss, seed_everything
    from app.model.unet import ResUNet

    seed_everything(0)
    cfg = TrainConfig(data=str(EBHI), out="", batch=4)
    bank = TileBank(read_manifest(EBHI, "train"))
    x, y = bank.batch(np.random.default_rng(0), cfg)
    model = ResUNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    losses = []
    for _ in range(12):
        loss = dice_bce_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8, losses


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A checkpoint from a one-epoch run on the bundled tiles, converted like the shipped model."""
    from app.model.convert import convert
    from app.model.train import TrainConfig, train

    tmp = tmp_path_factory.mktemp("tiny")
    ckpt = train(
        TrainConfig(data=str(EBHI), out=str(tmp / "run"), epochs=1, batch=4, samples_per_epoch=8),
        progress=lambda _s: None,
    )
    card = convert(ckpt, tmp / "model", data=EBHI, calibration_tiles=8, progress=lambda _s: None)
    return ckpt, card


def test_convert_writes_onnx_and_ir_that_agree_with_torch(tiny_model):
    import onnx

    from app.model.train import load_checkpoint

    ckpt, card = tiny_model
    m = onnx.load(str(card.file("onnx-fp32")))
    assert m.opset_import[0].version == 17
    dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert card.verify() == []

    model, _ = load_checkpoint(ckpt)
    with Slide.open(SAMPLE_SVS) as s:
        tile = s.read_region(900, 1300, 0, 320, 256)[None]  # not square: dynamic H/W
    with torch.no_grad():
        ref = torch.sigmoid(model(torch.from_numpy(to_model_input(tile, card.normalization)))).numpy()
    for engine, tol in (
        (ONNXRuntimeEngine(card, "fp32"), 1e-4),
        (OpenVINOEngine(card, "fp32"), 1e-4),
        (OpenVINOEngine(card, "fp16", inference_precision="f32"), 5e-3),
    ):
        out = engine.predict(tile)
        assert out.shape == (1, 1, 256, 320)
        assert np.abs(out - ref).max() < tol, engine.name
    for engine in (OpenVINOEngine(card, "int8"), ONNXRuntimeEngine(card, "int8")):
        out = engine.predict(tile).ravel()
        cos = out @ ref.ravel() / (np.linalg.norm(out) * np.linalg.norm(ref))
        assert cos > 0.99, engine.name
    rows = card.validation["rows"]
    assert set(rows) >= {"onnxruntime-fp32", "openvino-fp16", "openvino-int8", "onnxruntime-int8"}
    assert card.validation["torch_vs_onnx_max_abs_diff"] < 1e-4


def test_card_checksum_catches_a_changed_file(tiny_model, tmp_path):
    import shutil

    _, card = tiny_model
    copy = tmp_path / "copy"
    shutil.copytree(card.path, copy)
    with open(copy / "model-int8.bin", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    assert ModelCard.load(copy).verify() == ["openvino-int8"]


# ----------------------------------------------------------------------------- the shipped model


@pytest.fixture(scope="module")
def shipped():
    return ModelCard.load()


def test_shipped_card_is_complete_and_checksums_match(shipped):
    assert shipped.verify() == []
    for key in ("onnx-fp32", "openvino-fp16", "openvino-int8", "onnx-int8", "torch-fp32"):
        assert shipped.file(key).is_file()
    rows = shipped.validation["rows"]
    fp32 = rows["onnxruntime-fp32"]["dice"]
    # The floors of the model issue: val Dice, precision parity, output agreement.
    assert fp32 >= 0.80
    assert abs(rows["openvino-fp16"]["dice"] - fp32) <= 0.005
    assert abs(rows["openvino-int8"]["dice"] - fp32) <= 0.005
    assert rows["openvino-fp16"]["cosine_vs_fp32"] >= 0.9999
    assert rows["openvino-int8"]["cosine_vs_fp32"] >= 0.999
    assert "CC BY 4.0" in shipped.raw["data_attribution"]
    total = sum(e["bytes"] + e.get("weights", {}).get("bytes", 0) for e in shipped.files.values())
    assert total < 60e6


def test_evaluate_on_bundled_val_tiles_matches_the_card(shipped):
    r = run_delineo("evaluate", "--manifest", str(EBHI / "val.csv"), "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    dice = out["dice"]
    assert set(dice) == {"fp32", "fp16", "int8"}
    # 12 tiles are a small sample of the card's 233: same model, same ballpark, and the
    # precisions agree with each other as closely as the card says.
    assert abs(dice["fp32"] - shipped.validation["rows"]["onnxruntime-fp32"]["dice"]) < 0.1
    assert abs(dice["fp16"] - dice["fp32"]) < 0.01
    assert abs(dice["int8"] - dice["fp32"]) < 0.01


def test_openvino_and_onnxruntime_agree_on_a_real_tile(shipped):
    with Slide.open(SAMPLE_SVS) as s:
        tile = s.read_region(700, 1100, 0, 512, 512)[None]
    ov32 = OpenVINOEngine(shipped, "fp32").predict(tile)
    ort32 = ONNXRuntimeEngine(shipped, "fp32").predict(tile)
    assert np.abs(ov32 - ort32).max() < 1e-3
    ov8 = OpenVINOEngine(shipped, "int8").predict(tile) > 0.5
    ort8 = ONNXRuntimeEngine(shipped, "int8").predict(tile) > 0.5
    ref = ort32 > 0.5
    for m in (ov8, ort8):
        agree = 2 * (m & ref).sum() + 1
        assert agree / (m.sum() + ref.sum() + 1) > 0.95


def test_bench_model_json_rows():
    r = run_delineo(
        "bench",
        "model",
        "--json",
        "--tile",
        "256",
        "--repeats",
        "2",
        "--configs",
        "onnxruntime-int8,openvino-int8,torch-fp32",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["config"] for row in rows] == ["onnxruntime-int8", "openvino-int8", "torch-fp32"]
    for row in rows:
        assert row["ms_per_tile"] > 0 and row["mpix_per_s"] > 0 and row["peak_rss_mb"] > 50
