"""`delineo convert --target ascend`: the FP16 ONNX, its graph cleaning, external data, the ATC line."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import DATA, run_delineo
from onnx import TensorProto, helper, numpy_helper

from app.inference.engines import ONNXRuntimeEngine
from app.inference.modelcard import ModelCard
from app.model.ascend import clean_fp16_graph, convert_for_ascend

EBHI = DATA / "ebhi"


def residual_fp32_graph() -> onnx.ModelProto:
    """An FP16 graph with what converters leave behind: a Cast back to FLOAT, an FP32 Constant
    feeding it, an FP32 initializer, and value_info typed before the conversion."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])
    const = helper.make_node(
        "Constant", [], ["c"], value=numpy_helper.from_array(np.full((1, 4), 2.0, np.float32), "c")
    )
    cast = helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT)
    mul = helper.make_node("Mul", ["x32", "c"], ["m"])
    add = helper.make_node("Add", ["m", "b"], ["y"])
    bias = numpy_helper.from_array(np.full((1, 4), 0.5, np.float32), "b")
    stale = helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([const, cast, mul, add], "residual", [x], [y], [bias], value_info=[stale])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_graph_cleaning_aligns_residual_fp32_nodes():
    model = residual_fp32_graph()
    mixed_types = (onnx.checker.ValidationError, onnx.shape_inference.InferenceError)
    with pytest.raises(mixed_types):  # what ATC refuses too
        onnx.checker.check_model(model, full_check=True)
    report = clean_fp16_graph(model)
    assert (report.casts_retargeted, report.constants_converted, report.initializers_converted) == (1, 1, 1)
    assert report.value_info_cleared == 1 and not model.graph.value_info
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([[1, 2, 3, 4]], np.float16)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], x * 2 + 0.5)


def test_convert_for_ascend_is_lossless_and_writes_the_atc_command(tmp_path):
    out = tmp_path / "ascend"
    result = convert_for_ascend("ebhi-tumour-resunet", out, data=EBHI, tiles=8)
    assert result["cosine_vs_fp32"] >= 0.9999 and result["opset"] == 17
    fp16 = onnx.load(str(out / "model-fp16.onnx"))
    onnx.checker.check_model(fp16, full_check=True)
    assert fp16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert not any(n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT for n in fp16.graph.node)
    assert all(i.data_type != TensorProto.FLOAT for i in fp16.graph.initializer)
    atc = (out / "atc.sh").read_text(encoding="utf-8")
    assert "atc --framework=5 --model=model-fp16.onnx" in atc
    assert "--soc_version=Ascend910B" in atc and "--input_shape=image:-1,3,512,512" in atc
    card = ModelCard.load(out)
    assert not card.verify() and card.validation["ascend"]["cosine_vs_fp32"] == result["cosine_vs_fp32"]
    tile = np.full((1, 64, 64, 3), 200, np.uint8)
    a, b = ONNXRuntimeEngine(card, "fp16").predict(tile), ONNXRuntimeEngine(card, "fp32").predict(tile)
    assert np.abs(a - b).max() < 0.01


def test_large_models_get_external_data(tmp_path):
    """Past the size limit (2 GB for real; 1 MB here) the weights go beside the graph."""
    out = tmp_path / "ascend"
    result = convert_for_ascend("ebhi-tumour-resunet", out, data=EBHI, tiles=4, external_over=1 << 20)
    assert result["external_data"]
    data = out / "model-fp16.onnx.data"
    assert data.stat().st_size > 4 << 20 and (out / "model-fp16.onnx").stat().st_size < 1 << 20
    card = ModelCard.load(out)
    assert card.files["onnx-fp16"]["weights"]["path"] == data.name and not card.verify()
    assert result["cosine_vs_fp32"] >= 0.9999


def test_cli_convert_target_ascend(tmp_path):
    r = run_delineo(
        "convert", "--target", "ascend", "ebhi-tumour-resunet", "--out", str(tmp_path / "a"),
        "--data", str(EBHI), "--soc-version", "Ascend310P3",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "cosine" in r.stderr and "Ascend310P3" in (tmp_path / "a" / "atc.sh").read_text(encoding="utf-8")
    assert json.loads((tmp_path / "a" / "card.json").read_text(encoding="utf-8"))["files"]["onnx-fp16"]
    r = run_delineo("convert", "--target", "ascend", "no-such-model", "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "no-such-model" in r.stderr
