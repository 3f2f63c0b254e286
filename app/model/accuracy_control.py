"""OpenVINO INT8 of a softmax (lesions) model under a per-class Dice budget.

Plain post-training quantization of the lesions model cost one class 0.008 val Dice, over the
0.005 that a precision may lose. NNCF's accuracy-control flow keeps the layers that cost most in
float until the worst class loses no more than `max_drop`; it is measured on train tiles held out
from calibration, never on `val`, so the card's val table stays an honest check.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from app.core.dataset import LESION_CLASSES, Pair, load_image, load_target
from app.inference.evaluation import confusion, exclusive_labels
from app.inference.modelcard import to_model_input


def class_dice(conf: np.ndarray) -> np.ndarray:
    """Dice of each foreground class (channel 0 is background) from a summed confusion matrix."""
    tp = np.diag(conf)[1:].astype(np.float64)
    denom = conf.sum(axis=0)[1:] + conf.sum(axis=1)[1:]
    return 2 * tp / np.maximum(1, denom)


class WorstClassDrop:
    """NNCF's validation function: 1 minus the largest per-class Dice loss against the FP32
    model on the same tiles, so FP32 scores 1 and `max_drop` bounds every class at once.

    Data items are tile indices; FP32's per-tile confusion matrices are kept, so a subset of
    tiles (NNCF ranks layers on one) is compared with FP32 on that same subset."""

    def __init__(self, images: list[np.ndarray], targets: list[np.ndarray], norm: dict):
        self.images, self.targets, self.norm = images, targets, norm
        self.reference: list[np.ndarray] | None = None

    def transform(self, i: int) -> np.ndarray:
        return to_model_input(self.images[i][None], self.norm)

    def confusions(self, compiled, items) -> tuple[list[int], list[np.ndarray]]:
        idx, confs = [], []
        n = len(LESION_CLASSES)
        for i in items:
            logits = compiled(self.transform(i))[0][0].astype(np.float32)
            e = np.exp(logits - logits.max(axis=0))
            labels = exclusive_labels(e / e.sum(axis=0))
            idx.append(i)
            confs.append(confusion(self.targets[i], labels, n))
        return idx, confs

    def set_reference(self, compiled) -> None:
        _, self.reference = self.confusions(compiled, range(len(self.images)))

    def __call__(self, compiled, items) -> tuple[float, list[float]]:
        idx, confs = self.confusions(compiled, items)
        ref = class_dice(sum(self.reference[i] for i in idx))
        got = class_dice(sum(confs))
        # Per tile: pixel accuracy against the truth, which NNCF uses to pick telling tiles.
        per_tile = [float(np.trace(c) / max(1, c.sum())) for c in confs]
        return 1.0 - float(np.max(ref - got)), per_tile


def quantize_openvino_controlled(
    onnx_path: Path,
    out_xml: Path,
    calibration: list[np.ndarray],
    held_out: list[Pair],
    norm: dict,
    max_drop: float,
    progress: Callable[[str], None] = print,
) -> list[str]:
    """Quantize, save, and return the convolutions kept in float (their ONNX node names), so
    ONNX Runtime INT8 can keep the same ones."""
    import nncf
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    images = [load_image(p) for p in held_out]
    metric = WorstClassDrop(images, [load_target(p, "lesions") for p in held_out], norm)
    metric.set_reference(ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}))
    quantized = nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(calibration, lambda t: to_model_input(t[None], norm)),
        nncf.Dataset(list(range(len(held_out))), metric.transform),
        metric,
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(calibration),
    )
    drop = 1.0 - metric(ov.Core().compile_model(quantized, "CPU"), range(len(held_out)))[0]
    progress(f"  worst class Dice loss on {len(held_out)} held-out train tiles: {drop:.4f}")
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    return float_convolutions(quantized)


def float_convolutions(model) -> list[str]:
    """Convolutions of an NNCF-quantized OpenVINO model whose weights are still a float constant
    (quantized ones are dequantized from int8 by a Multiply), by the name of the ONNX node they
    came from (OpenVINO appends `/WithoutBiases`)."""
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Convolution" and op.input_value(1).get_node().get_type_name() == "Constant":
            out.append(op.get_friendly_name().removesuffix("/WithoutBiases"))
    return out
