"""Models built here, with conventions unlike the shipped model's, whose answers are known.

Neither is trained: each is a 1x1 convolution whose weights make a colour score as a class, so a
test slide painted in those colours has a known outline per class. The two differ in every
convention `delineo model add` has to be told about:

- `softmax_onnx`: ONNX, RGB input in 0..1 (no mean/std), dynamic height and width, logits out
  (the runtime applies softmax), classes Red, Green, Background on channels 0, 1, 2. A 2x2
  average pool and a 2x upsample give it a stride of 2.
- `bgr_ir`: OpenVINO IR (FP16 weights), BGR input in 0..255 normalized with a per-channel mean and std, a
  fixed 256x256 input, probabilities out (softmax inside the graph: activation none), classes
  Background, Blue, Red on channels 0, 1, 2. Its weights assume the mean and std, and read red
  from the third input channel, so an engine that forgets either gets the classes wrong.

`shapes_slide` paints a red rectangle, a green disk and a blue rectangle on white. Also the bad
models `model add` must refuse: wrong channel count, wrong input rank.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# Logit weights per class on (r, g, b) in 0..1, and a bias: red scores where red beats green,
# green where green beats red; anything else (white, blue) stays below the constant background.
K = 20.0
SOFTMAX_CLASSES = "Red:#c80000,Green:#00a000,Background"
_RGB_LOGITS = np.array([[K, -K, 0.0], [-K, K, 0.0], [0.0, 0.0, 0.0]], np.float32)  # Red, Green, Background
_RGB_BIAS = np.array([-2.0, -2.0, 0.0], np.float32)

IR_CLASSES = "Background,Blue:#0000c8,Red:#c80000"
IR_TILE = 256
IR_MEAN_BGR = (90.0, 110.0, 130.0)  # in 0..255, listed in the model's channel order (B, G, R)
IR_STD_BGR = (40.0, 50.0, 60.0)
# Logits on raw (b, g, r) in 0..1: blue where blue beats red and green, red where red beats both.
_BGR_RAW_LOGITS = np.array(
    [[0.0, 0.0, 0.0], [K, -K / 2, -K / 2], [-K / 2, -K / 2, K]], np.float32
)  # Background, Blue, Red
_BGR_RAW_BIAS = np.array([0.0, -4.0, -4.0], np.float32)

COLOURS = {"red": (200, 30, 30), "green": (30, 170, 40), "blue": (30, 40, 200)}
WHITE = (245, 245, 245)


def _onnx_model(graph, opset: int = 17):
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _conv_graph(
    weights: np.ndarray,
    bias: np.ndarray,
    in_shape: list,
    out_shape: list,
    stride_two: bool = False,
    name: str = "foreign",
):
    """input -> 1x1 Conv [-> 2x2 AveragePool -> 2x nearest Resize] -> output."""
    from onnx import TensorProto, helper, numpy_helper

    out_c, in_c = weights.shape[:2]
    w = numpy_helper.from_array(weights.reshape(out_c, in_c, 1, 1).astype(np.float32), "w")
    b = numpy_helper.from_array(bias.astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["logits" if not stride_two else "c"])]
    inits = [w, b]
    if stride_two:
        scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
        inits.append(scales)
        nodes += [
            helper.make_node("AveragePool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Resize", ["p", "", "scales"], ["logits"], mode="nearest"),
        ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
        inits,
    )
    return _onnx_model(graph)


def softmax_onnx(path: Path) -> Path:
    """The 3-class RGB 0..1 softmax model (logits out), dynamic H and W, stride 2."""
    import onnx

    model = _conv_graph(
        _RGB_LOGITS, _RGB_BIAS, ["N", 3, "H", "W"], ["N", 3, "H", "W"], stride_two=True, name="rgb-softmax"
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def with_external_data(source: Path, path: Path, location: str | None = None) -> Path:
    """A copy of an ONNX model whose weights live in a file beside it (as torch writes models
    over 2 GB; small shape constants stay inside): `location` defaults to MODEL.onnx.data, the
    name torch gives it."""
    import onnx
    from onnx.external_data_helper import set_external_data, write_external_data_tensors

    model = onnx.load(str(source))
    for tensor in model.graph.initializer:
        if tensor.name in ("w", "b"):
            set_external_data(tensor, location or path.name + ".data")
    onnx.save(write_external_data_tensors(model, str(path.parent)), str(path))
    return path


def bgr_ir(path: Path, fp16: bool = True) -> Path:
    """The BGR 0..255 mean/std IR with softmax inside (probabilities out), 256x256 input.
    `path` ends in .xml; the weights go to the .bin beside it, in FP16 as `ov.save_model` (and
    so most exporters) store them by default, or FP32."""
    import openvino as ov
    import openvino.opset13 as ops

    mean = np.array(IR_MEAN_BGR, np.float32) / 255
    std = np.array(IR_STD_BGR, np.float32) / 255
    # The model sees xn = (x/255 - mean) / std per channel; fold that back into the weights so
    # the logits are those of the raw colour: logit = W (xn * std + mean) + b.
    weights = _BGR_RAW_LOGITS * std[None, :]
    bias = _BGR_RAW_BIAS + _BGR_RAW_LOGITS @ mean
    image = ops.parameter([1, 3, IR_TILE, IR_TILE], ov.Type.f32, name="input_bgr")
    conv = ops.convolution(image, ops.constant(weights.reshape(3, 3, 1, 1)), [1, 1], [0, 0], [0, 0], [1, 1])
    logits = ops.add(conv, ops.constant(bias.reshape(1, 3, 1, 1)))
    probs = ops.softmax(logits, 1)
    probs.output(0).get_tensor().set_names({"probabilities"})
    model = ov.Model([probs], [image], "bgr-probabilities")
    ov.save_model(model, str(path), compress_to_fp16=fp16)
    return path


def wrong_channels_onnx(path: Path) -> Path:
    """A 1-channel (greyscale) input: not the 3-channel NCHW a slide gives."""
    import onnx

    model = _conv_graph(
        np.ones((2, 1), np.float32), np.zeros(2, np.float32), ["N", 1, "H", "W"], ["N", 2, "H", "W"]
    )
    onnx.save(model, str(path))
    return path


def wrong_rank_onnx(path: Path) -> Path:
    """A rank-3 input (C, H, W, no batch axis)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["image"], ["t"], perm=[1, 2, 0]),
            helper.make_node("MatMul", ["t", "w"], ["m"]),
            helper.make_node("Transpose", ["m"], ["logits"], perm=[2, 0, 1]),
        ],
        "rank3",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, "H", "W"])],
        [numpy_helper.from_array(np.ones((3, 2), np.float32), "w")],
    )
    onnx.save(_onnx_model(graph), str(path))
    return path


def shapes_slide(path: Path, mpp: float = 0.5, side: int = 2048) -> tuple[Path, dict[str, float]]:
    """A pyramidal TIFF (`mpp` µm/px) of a red rectangle, a green disk and a blue rectangle on
    white; returns the path and each shape's drawn area in µm²."""
    from app.core.pyramid_tiff import array_source, level_sizes, write_pyramidal_tiff

    img = np.full((side, side, 3), WHITE, np.uint8)
    s = side / 2048
    red = (int(200 * s), int(240 * s), int(900 * s), int(760 * s))  # x0, y0, x1, y1
    cx, cy, r = int(1450 * s), int(600 * s), int(330 * s)
    blue = (int(500 * s), int(1200 * s), int(1700 * s), int(1750 * s))
    img[red[1] : red[3], red[0] : red[2]] = COLOURS["red"]
    yy, xx = np.ogrid[:side, :side]
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = COLOURS["green"]
    img[blue[1] : blue[3], blue[0] : blue[2]] = COLOURS["blue"]
    sizes = level_sizes(side, side, 2, 256)
    write_pyramidal_tiff(path, array_source(img, sizes), sizes, mpp=mpp, compression="zlib")
    px = mpp * mpp
    areas = {
        "red": (red[2] - red[0]) * (red[3] - red[1]) * px,
        "green": float(np.count_nonzero((img == COLOURS["green"]).all(axis=2))) * px,
        "blue": (blue[2] - blue[0]) * (blue[3] - blue[1]) * px,
    }
    assert math.isclose(areas["green"], math.pi * r * r * px, rel_tol=0.02)
    return path, areas
