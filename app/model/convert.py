"""`delineo convert`: checkpoint -> ONNX FP32, OpenVINO IR FP16 and INT8, ONNX Runtime INT8,
each validated against FP32 on `val`, and the model card that ties them together.

A one-channel checkpoint (the tumour target) exports its sigmoid in the graph (a format-1 card);
a lesions checkpoint exports raw logits and a format-2 card whose runtime applies the softmax.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from app.core.dataset import LESION_CLASSES, Pair, load_image, read_manifest
from app.errors import DelineoError
from app.inference.engines import ONNXRuntimeEngine, OpenVINOEngine
from app.inference.evaluation import compare_lesions_to_reference, compare_to_reference
from app.inference.modelcard import ModelCard, write_card
from app.model.accuracy_control import quantize_openvino_controlled
from app.model.train import load_checkpoint
from app.model.unet import ProbabilityHead, count_parameters

ONNX_EXTERNAL_DATA_THRESHOLD = 2 << 30  # protobuf's 2 GB limit
# A softmax model's OpenVINO INT8 keeps in float what costs a class more than this (the floor
# is 0.005 on val; the margin is for val tiles behaving unlike the held-out train tiles).
INT8_MAX_CLASS_DROP = 0.003
INT8_CONTROL_TILES = 240
TUMOUR_COLOUR = [200, 0, 0]  # QuPath's default "Tumor" colour
LESION_COLOURS = {
    "Background": [0, 0, 0],
    "Tumor": TUMOUR_COLOUR,
    "High-grade dysplasia": [230, 150, 0],
    "Other epithelium": [40, 110, 220],
}
COMPARE_WITH = "ebhi-tumour-resunet"  # the binary model whose HGIN confusion the lesions card quotes
LICENCE = "Apache-2.0 (model weights); trained on EBHI-Seg, CC BY 4.0"
ATTRIBUTION = (
    "EBHI-Seg: Shi L, Li X, Hu W, et al. EBHI-Seg: A novel enteroscope biopsy histopathological "
    "hematoxylin and eosin image dataset for image segmentation tasks. Front. Med. 2023;10:1114673. "
    "doi:10.3389/fmed.2023.1114673. Licence CC BY 4.0."
)
TARGET = (
    "Tumour = the annotated (white-mask) epithelium of adenocarcinoma images. Every pixel of every "
    "other EBHI-Seg class is non-tumour: normal mucosa, polyps, low-grade and high-grade "
    "intraepithelial neoplasia, serrated adenoma. High-grade IN is pre-invasive and is taught as "
    "non-tumour, so the model marks invasive adenocarcinoma only; some high-grade IN is expected "
    "to be marked (see the false-positive rate)."
)
LESIONS_TARGET = (
    "Per pixel, one of: Tumor = the annotated (white-mask) epithelium of adenocarcinoma images; "
    "High-grade dysplasia = that of high-grade intraepithelial neoplasia images; Other epithelium "
    "= that of normal, polyp, low-grade IN and serrated adenoma images; Background = every "
    "unannotated pixel. High-grade IN has its own class, so pre-invasive lesions are no longer "
    "called tumour or nothing."
)

Progress = Callable[[str], None]


def is_softmax(model: torch.nn.Module) -> bool:
    """A multi-channel checkpoint is exported as logits for the runtime's softmax."""
    return model.config["classes"] > 1


def export_onnx(model: torch.nn.Module, path: Path, multiple: int) -> Path:
    """ONNX opset 17 with dynamic batch, height and width (multiples of `multiple`); weights in the
    file below 2 GB, in `<name>.data` beside it above. One channel: the sigmoid is in the graph;
    several: raw logits (no activation)."""
    head = (model if is_softmax(model) else ProbabilityHead(model)).eval()
    n_bytes = sum(p.numel() * p.element_size() for p in head.parameters())
    b = torch.export.Dim("batch", min=1, max=256)
    h = torch.export.Dim("h", min=1, max=1024)
    w = torch.export.Dim("w", min=1, max=1024)
    torch.onnx.export(
        head,
        (torch.zeros(1, 3, 8 * multiple, 8 * multiple),),
        str(path),
        opset_version=17,
        input_names=["image"],
        output_names=["logits" if is_softmax(model) else "probability"],
        dynamic_shapes={"x": {0: b, 2: multiple * h, 3: multiple * w}},
        external_data=n_bytes > ONNX_EXTERNAL_DATA_THRESHOLD,
        dynamo=True,
        verbose=False,
    )
    _name_dynamic_dims(path)
    return path


def _name_dynamic_dims(path: Path) -> None:
    """Readable symbolic dims (batch, height, width) for tools that show model metadata."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    for value in (*m.graph.input, *m.graph.output):
        dims = value.type.tensor_type.shape.dim
        for d, name in zip(dims, ("batch", None, "height", "width"), strict=True):
            if name and d.dim_param:
                d.dim_param = name
    onnx.save(m, str(path))


def drawn_train_tiles(
    data: str | Path, n: int, skip: int = 0, seed: int = 0, downsample: int = 1
) -> list[Pair]:
    """`n` train tiles of one shuffle, after its first `skip`, in manifest order: calibration
    draws the first ones and a softmax model's INT8 accuracy control the next, so the two never
    share a tile."""
    pairs = read_manifest(data, "train", downsample)
    idx = np.random.default_rng(seed).permutation(len(pairs))[skip : skip + n]
    return [pairs[i] for i in sorted(idx)]


def load_calibration_tiles(data: str | Path, n: int, seed: int = 0, downsample: int = 1) -> list[np.ndarray]:
    """`n` real train tiles, every class represented in proportion."""
    return [load_image(p) for p in drawn_train_tiles(data, n, seed=seed, downsample=downsample)]


def quantize_openvino(onnx_path: Path, out_xml: Path, tiles: list[np.ndarray], card_norm: dict) -> None:
    import nncf
    import openvino as ov

    from app.inference.modelcard import to_model_input

    model = ov.convert_model(str(onnx_path))
    dataset = nncf.Dataset(tiles, lambda t: to_model_input(t[None], card_norm))
    quantized = nncf.quantize(model, dataset, subset_size=len(tiles), preset=nncf.QuantizationPreset.MIXED)
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)


def save_openvino_fp16(onnx_path: Path, out_xml: Path) -> None:
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(out_xml), compress_to_fp16=True)


def quantize_onnxruntime(
    onnx_path: Path,
    out_path: Path,
    tiles: list[np.ndarray],
    card_norm: dict,
    exclude: list[str] | None = None,
) -> None:
    """Static QDQ INT8: signed weights, *unsigned* activations (signed ones leave most convolutions
    in float on x86 and run slower than FP32), weights in 7 bits (`reduce_range`): x86 CPUs
    without VNNI (AVX2 only) add u8 x s8 products in 16 bits, which saturate with full-range
    weights (val Dice 0.792 instead of 0.805 on such a CPU); VNNI CPUs lose nothing by it."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from app.inference.modelcard import to_model_input

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(tiles)

        def get_next(self):
            t = next(self.it, None)
            return None if t is None else {"image": to_model_input(t[None], card_norm)}

    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        quant_pre_process(str(onnx_path), str(prepped), skip_symbolic_shape=True)
        quantize_static(
            str(prepped),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            nodes_to_exclude=exclude or [],
        )


def convert(
    checkpoint: str | Path,
    out: str | Path,
    data: str | Path,
    calibration_tiles: int = 300,
    name: str | None = None,
    version: str = "1.0.0",
    tile: int = 512,
    overlap: int = 64,
    mpp: float = 1.0,
    validation_limit: int | None = None,
    progress: Progress = print,
) -> ModelCard:
    model, ckpt = load_checkpoint(checkpoint)  # first: a refused checkpoint leaves nothing behind
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = name or out.name
    norm = ckpt["normalization"]
    multiple = 2 ** model.config["levels"]
    # A coarse model (trained with --downsample k) sees slides at k x the tiles' pixel size.
    downsample = int((ckpt.get("train_config") or {}).get("downsample", 1) or 1)
    mpp *= downsample
    t0 = time.time()

    softmax = is_softmax(model)
    if not softmax:  # the binary model ships its PyTorch weights for `bench model`
        torch.save({"state_dict": model.state_dict(), "config": model.config}, out / "model-fp32.pt")
    onnx_path = out / "model-fp32.onnx"
    progress("exporting ONNX (opset 17, dynamic batch/height/width)…")
    export_onnx(model, onnx_path, multiple)

    progress(f"reading {calibration_tiles} calibration tiles from train…")
    calib = load_calibration_tiles(data, calibration_tiles, downsample=downsample)
    progress("OpenVINO IR FP16…")
    save_openvino_fp16(onnx_path, out / "model-fp16.xml")
    if softmax:
        held_out = drawn_train_tiles(data, INT8_CONTROL_TILES, calibration_tiles, downsample=downsample)
        progress(
            f"OpenVINO IR INT8 (NNCF with accuracy control: at most {INT8_MAX_CLASS_DROP} Dice lost on "
            f"any class of {len(held_out)} held-out train tiles; calibration on {len(calib)})…"
        )
        kept_float = quantize_openvino_controlled(
            onnx_path, out / "model-int8.xml", calib, held_out, norm, INT8_MAX_CLASS_DROP, progress
        )
    else:
        progress(f"OpenVINO IR INT8 (NNCF post-training quantization on {len(calib)} tiles)…")
        quantize_openvino(onnx_path, out / "model-int8.xml", calib, norm)
    progress("ONNX Runtime INT8 (QDQ, unsigned activations)…")
    # Logits for a softmax: the head in float, and the layers OpenVINO's accuracy control kept in
    # float, keep ORT INT8 within 0.005 Dice per class (HGD +0.009 with only the head in float).
    exclude = sorted({_last_conv(onnx_path), *kept_float}) if softmax else None
    quantize_onnxruntime(onnx_path, out / "model-int8.onnx", calib, norm, exclude)
    del calib

    files = {
        **({} if softmax else {"torch-fp32": "model-fp32.pt"}),
        "onnx-fp32": "model-fp32.onnx",
        "openvino-fp16": "model-fp16.xml",
        "openvino-int8": "model-int8.xml",
        "onnx-int8": "model-int8.onnx",
    }
    raw = {
        "name": name,
        "version": version,
        "created": dt.date.today().isoformat(),
        "task": "Per-pixel tumour (colorectal adenocarcinoma epithelium) vs non-tumour on H&E",
        "target": TARGET,
        "architecture": {
            "type": "ResUNet (residual 2D UNet, GaNDLF-style)",
            **model.config,
            "parameters": count_parameters(model),
        },
        "classes": [{"name": "Tumor", "index": 1, "color": TUMOUR_COLOUR}],
        "input": {
            "name": "image",
            "layout": "NCHW",
            "dtype": "float32",
            "channel_order": "RGB",
            "tile": tile,
            "overlap": overlap,
            "multiple": multiple,
        },
        "output": {"name": "probability", "activation": "sigmoid", "threshold": 0.5},
        "normalization": norm,
        "mpp": mpp,
        "mpp_note": (
            "EBHI-Seg publishes no pixel size ('400x' microscope images); crypt and nucleus sizes "
            "suggest about 1 µm/px (a slide level near 10x). This is an estimate: slides are read "
            "at the level nearest this mpp."
        ),
        "files": {},
        "validation": {},
        "training": {
            "checkpoint": Path(checkpoint).name,
            "epoch": ckpt.get("epoch"),
            "val_dice_torch": ckpt.get("val", {}).get("dice"),
            "config": _shareable(ckpt.get("train_config")),
        },
        "licence": LICENCE,
        "data_attribution": ATTRIBUTION,
    }
    if softmax:
        raw = _lesions_card(raw, model)
    if downsample > 1:
        raw["task"] = (
            f"Coarse tumour triage at {mpp:g} µm/px for an adaptive run's first pass: where tumour "
            "may be, so full resolution runs only there"
        )
        raw["mpp_note"] += f" Trained on EBHI-Seg tiles reduced {downsample}x (block means): {mpp:g} µm/px."
    write_card(out, raw, files)
    card = ModelCard.load(out)

    progress("validating every precision against FP32 on val…")
    pairs = read_manifest(data, "val", downsample)
    if validation_limit:
        pairs = pairs[:validation_limit]
    engines = {
        "onnxruntime-fp32": ONNXRuntimeEngine(card, "fp32"),
        "openvino-fp32": OpenVINOEngine(card, "fp32", "CPU"),
        "openvino-fp16": OpenVINOEngine(card, "fp16", "CPU", inference_precision="f32"),
        "openvino-int8": OpenVINOEngine(card, "int8", "CPU"),
        "onnxruntime-int8": ONNXRuntimeEngine(card, "int8"),
    }
    if softmax:
        return _validate_lesions(raw, out, files, model, card, engines, pairs, t0, progress)
    rows = compare_to_reference(engines, pairs, reference="onnxruntime-fp32")
    torch_ok = _torch_agreement(model, pairs[:4], engines["onnxruntime-fp32"], norm)
    raw["validation"] = {
        "split": "val",
        "tiles": len(pairs),
        "tumour_tiles": sum(p.is_tumour_class for p in pairs),
        "reference": "onnxruntime-fp32",
        "torch_vs_onnx_max_abs_diff": torch_ok,
        "note": "fp16 is checked with OpenVINO's f32 precision hint so the table shows the IR's own "
        "loss; at run time a CPU with BF16 runs it in BF16 (see `delineo evaluate`).",
        "rows": rows,
    }
    write_card(out, raw, files)
    progress(f"model card written: {out / 'card.json'} ({time.time() - t0:.0f}s)")
    for k, r in rows.items():
        progress(
            f"  {k:<18} Dice {r['dice']:.4f}  cosine {r['cosine_vs_fp32']:.6f}  "
            f"max|diff| {r['max_abs_diff_vs_fp32']:.4f}  FP rate {r['fp_rate_non_tumour']:.4f}"
        )
    return ModelCard.load(out)


def _last_conv(onnx_path: Path) -> str:
    """The name of the graph's output convolution (the head)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "Conv"][-1]


def _shareable(config: dict | None) -> dict | None:
    """The training config without this machine's paths (the data folder, the --init file)."""
    if not config:
        return config
    out = dict(config)
    out["data"] = "EBHI-Seg (delineo data ebhi-seg)"
    if out.get("init"):
        out["init"] = "/".join(Path(out["init"]).parts[-2:])
    return out


def _lesions_card(raw: dict, model: torch.nn.Module) -> dict:
    """The format-2 card of a lesions checkpoint: softmax over channels, one class each."""
    if model.config["classes"] != len(LESION_CLASSES):
        raise ValueError(f"a softmax checkpoint needs {len(LESION_CLASSES)} channels ({LESION_CLASSES})")
    classes = [{"name": n, "color": LESION_COLOURS[n], "channel": i} for i, n in enumerate(LESION_CLASSES)]
    return {
        "format": 2,
        **raw,
        "task": "Per-pixel colorectal epithelium on H&E: tumour (adenocarcinoma), high-grade "
        "dysplasia, other epithelium, background",
        "target": LESIONS_TARGET,
        "classes": classes,
        "background": "Background",
        "output": {"name": "logits", "activation": "softmax", "exclusive": True},
    }


def _validate_lesions(raw, out, files, model, card, engines, pairs, t0, progress) -> ModelCard:
    """Per-class Dice and cosine of every precision, the HGIN confusion, and the binary model's
    numbers on the same tiles for comparison."""
    from app.inference.engine_registry import create_engine

    engines = {k: (e, card) for k, e in engines.items()}
    try:
        binary = ModelCard.load(COMPARE_WITH)
        engines[f"{COMPARE_WITH}-fp32"] = (create_engine("onnxruntime", binary, "fp32"), binary)
    except DelineoError as e:
        progress(f"no comparison with {COMPARE_WITH}: {e}")
    rows = compare_lesions_to_reference(engines, pairs, reference="onnxruntime-fp32")
    comparison = rows.pop(f"{COMPARE_WITH}-fp32", None)
    if comparison is not None:  # a tumour-only model: its other classes' Dice mean nothing
        comparison["dice"] = {"Tumor": comparison["dice"]["Tumor"]}
        comparison.pop("score", None)
    torch_ok = _torch_agreement(model, pairs[:4], engines["onnxruntime-fp32"][0], card.normalization)
    fp32 = rows["onnxruntime-fp32"]["dice"]
    worst = {k: round(max(abs(r["dice"][c] - fp32[c]) for c in fp32), 5) for k, r in rows.items()}
    raw["validation"] = {
        "split": "val",
        "tiles": len(pairs),
        "tiles_per_class": _tiles_per_class(pairs),
        "reference": "onnxruntime-fp32",
        "decision": "exclusive: foreground where 1 - p(Background) >= 0.5, then the foreground "
        "class with the highest probability (the runtime's default)",
        "torch_vs_onnx_max_abs_diff": torch_ok,
        "hgin_called_tumour_definitions": {
            "hgin_called_tumour": "share of the high-grade IN images' annotated pixels called Tumor",
            "hgin_tile_pixels_called_tumour": "share of all pixels of high-grade IN images called "
            "Tumor (the binary model's 37 % in issue 11)",
        },
        "note": "fp16 is checked with OpenVINO's f32 precision hint so the table shows the IR's own "
        "loss; at run time a CPU with BF16 runs it in BF16 (see `delineo evaluate`).",
        "max_class_dice_diff_vs_fp32": worst,
        "rows": rows,
    }
    if comparison is not None:
        raw["validation"]["binary_model"] = {
            "model": COMPARE_WITH,
            "engine": "onnxruntime-fp32",
            **comparison,
        }
    write_card(out, raw, files)
    progress(f"model card written: {out / 'card.json'} ({time.time() - t0:.0f}s)")
    for k, r in {**rows, **({COMPARE_WITH: comparison} if comparison else {})}.items():
        dice = "  ".join(f"{c} {d:.4f}" for c, d in r["dice"].items())
        progress(
            f"  {k:<20} Dice {dice}  cosine {r.get('cosine_vs_fp32', float('nan')):.6f}"
            f"  HGIN called Tumor {r['hgin_called_tumour']:.4f} (tile pixels "
            f"{r['hgin_tile_pixels_called_tumour']:.4f})"
        )
    return ModelCard.load(out)


def _tiles_per_class(pairs: list[Pair]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in pairs:
        counts[p.cls] = counts.get(p.cls, 0) + 1
    return dict(sorted(counts.items()))


def _torch_agreement(model, pairs: list[Pair], engine, norm: dict) -> float:
    """Max |PyTorch - engine| over a few val tiles, after the card's activation."""
    from app.inference.modelcard import to_model_input

    imgs = np.stack([load_image(p) for p in pairs])
    with torch.no_grad():
        logits = model(torch.from_numpy(to_model_input(imgs, norm)))
        if is_softmax(model):
            ref = torch.softmax(logits, dim=1).numpy()
        else:
            ref = torch.sigmoid(logits)[:, 0].numpy()
    got = engine.predict(imgs)  # (N, C, H, W) after the card's activation
    if not is_softmax(model):
        got = got[:, 0]
    return round(float(np.abs(got - ref).max()), 7)
