"""`delineo convert --target ascend`: a lossless FP16 ONNX that Ascend's ATC compiler accepts.

ATC rejects graphs that mix types the converter left behind: Cast nodes that still cast to
FP32, FP32 Constant nodes, value_info entries typed from before the conversion. So the graph is
converted with onnxconverter-common, cleaned of those, checked, saved with external data when
it would pass protobuf's 2 GB limit, and compared with FP32 on validation tiles (cosine).
No torch here: this runs on the Ascend host as well.
"""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.core.dataset import data_folder
from app.errors import DelineoError
from app.inference.engines import ONNXRuntimeEngine
from app.inference.evaluation import compare_to_reference
from app.inference.modelcard import ModelCard, write_card

PROTOBUF_LIMIT = 2 * 1024**3  # bytes: a single ONNX protobuf cannot be larger
MIN_COSINE = 0.9999


class AscendConversionError(DelineoError):
    """A model that cannot be made Ascend-ready; the message says why."""


@dataclass
class CleaningReport:
    casts_retargeted: int = 0
    constants_converted: int = 0
    initializers_converted: int = 0
    value_info_cleared: int = 0
    weights_clamped: int = 0  # |w| under FP16's smallest normal, set to it (harmless: cosine says)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "casts_retargeted": self.casts_retargeted,
            "constants_converted": self.constants_converted,
            "initializers_converted": self.initializers_converted,
            "value_info_cleared": self.value_info_cleared,
            "weights_clamped": self.weights_clamped,
        }


def clean_fp16_graph(model) -> CleaningReport:
    """Align what the FP16 conversion left in FP32, in place: Cast-to-FLOAT nodes retargeted to
    FLOAT16, FP32 Constant values and initializers converted, stale value_info cleared."""
    from onnx import TensorProto, numpy_helper

    report = CleaningReport()
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            for attr in node.attribute:
                if attr.g.node:
                    graphs.append(attr.g)  # subgraphs (If/Loop bodies)
                graphs.extend(sub for sub in attr.graphs)
            if node.op_type == "Cast":
                for attr in node.attribute:
                    if attr.name == "to" and attr.i == TensorProto.FLOAT:
                        attr.i = TensorProto.FLOAT16
                        report.casts_retargeted += 1
            elif node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                        arr = numpy_helper.to_array(attr.t).astype(np.float16)
                        attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
                        report.constants_converted += 1
                    elif attr.name == "value_float":
                        report.notes.append(f"{node.name}: value_float constant left as is")
        for i, init in enumerate(g.initializer):
            if init.data_type == TensorProto.FLOAT:
                arr = numpy_helper.to_array(init).astype(np.float16)
                g.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
                report.initializers_converted += 1
        report.value_info_cleared += len(g.value_info)
        del g.value_info[:]
    return report


def to_fp16(model):
    """FP16 weights, activations, inputs and outputs (the NPU's native type), then cleaned."""
    import warnings

    from onnxconverter_common import float16

    with warnings.catch_warnings(record=True) as caught:  # one per tiny weight: counted instead
        warnings.simplefilter("always")
        fp16 = float16.convert_float_to_float16(model, keep_io_types=False, disable_shape_infer=False)
    report = clean_fp16_graph(fp16)
    report.weights_clamped = sum("truncated" in str(w.message) for w in caught)
    return fp16, report


def save_onnx(model, path: Path, external_over: int = PROTOBUF_LIMIT) -> bool:
    """Save; weights go to `<name>.data` beside it when the model is over `external_over` bytes.
    Returns whether external data was used."""
    import onnx

    external = model.ByteSize() > external_over
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    return external


def atc_command(model_file: str, input_name: str, tile: int, soc: str, output: str) -> str:
    """The ATC line that compiles the FP16 ONNX into an offline model (.om) for the NPU,
    dynamic batch matching the server's batching."""
    args = [
        "atc",
        "--framework=5",
        f"--model={model_file}",
        f"--output={output}",
        "--input_format=NCHW",
        f"--input_shape={input_name}:-1,3,{tile},{tile}",
        "--dynamic_batch_size=1,2,4,8,16",
        f"--soc_version={soc}",
        "--precision_mode_v2=origin",
        "--log=error",
    ]
    return " ".join(shlex.quote(a) for a in args)


def convert_for_ascend(
    model: str | Path | None,
    out: str | Path,
    data: str | Path | None = None,  # None: $DELINEO_DATA (app.core.dataset.data_folder)
    tiles: int = 64,
    soc: str = "Ascend910B",
    external_over: int = PROTOBUF_LIMIT,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Write `out/` with model-fp16.onnx, the FP32 ONNX it came from, atc.sh and a card; check
    FP16 against FP32 on `tiles` validation tiles. Returns the report (also in the card)."""
    import onnx

    say = progress or (lambda _: None)
    card = ModelCard.load(model)
    src = card.file("onnx-fp32")
    out = Path(out)
    if out.resolve() == card.path.resolve():
        raise AscendConversionError(f"--out {out}: give a new folder, not the model's own")
    if out.exists() and not out.is_dir():
        raise AscendConversionError(f"--out {out}: is a file; give a folder to write the Ascend model into")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = e.strerror
        raise AscendConversionError(f"--out {out}: cannot create it ({why}); choose another folder") from None
    fp32 = onnx.load(str(src))
    opset = next((o.version for o in fp32.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset != 17:
        say(f"note: {src.name} is opset {opset}; Ascend's ATC is validated here with opset 17")
    say(f"converting {src.name} to FP16…")
    fp16, report = to_fp16(fp32)
    onnx.checker.check_model(fp16, full_check=True)
    fp16_path = out / "model-fp16.onnx"
    external = save_onnx(fp16, fp16_path, external_over)
    shutil.copyfile(src, out / "model-fp32.onnx")
    if external:
        onnx.checker.check_model(str(fp16_path))  # the path form follows external data
    raw = json.loads((card.path / "card.json").read_text(encoding="utf-8"))
    raw.pop("validation", None)
    write_card(out, raw, {"onnx-fp16": fp16_path.name, "onnx-fp32": "model-fp32.onnx"})
    new = ModelCard.load(out)

    say(f"checking FP16 against FP32 on {tiles} validation tiles…")
    pairs = _validation_pairs(data, tiles)
    rows = compare_to_reference(
        {"fp32": ONNXRuntimeEngine(new, "fp32"), "fp16": ONNXRuntimeEngine(new, "fp16")},
        pairs,
        "fp32",
        batch=4,
    )
    cosine = rows["fp16"]["cosine_vs_fp32"]
    input_name = fp16.graph.input[0].name
    atc = atc_command(fp16_path.name, input_name, card.tile, soc, f"{card.name}-{soc.lower()}")
    (out / "atc.sh").write_text(
        "#!/bin/sh\n# Compile the FP16 ONNX into an Ascend offline model (run on the Ascend host, CANN "
        "toolkit sourced).\n# Or serve the ONNX directly: delineo serve --model . --provider cann\n"
        f'cd "$(dirname "$0")" && {atc}\n',
        encoding="utf-8",
    )
    (out / "atc.sh").chmod(0o755)
    result = {
        "target": "ascend",
        "soc_version": soc,
        "opset": opset,
        "cleaning": report.as_dict(),
        "external_data": external,
        "tiles": len(pairs),
        "cosine_vs_fp32": cosine,
        "max_abs_diff_vs_fp32": rows["fp16"]["max_abs_diff_vs_fp32"],
        "dice_fp32": rows["fp32"].get("dice"),
        "dice_fp16": rows["fp16"].get("dice"),
        "atc": atc,
    }
    raw = json.loads((out / "card.json").read_text(encoding="utf-8"))
    raw["validation"] = {"ascend": result}
    write_card(out, raw, {"onnx-fp16": fp16_path.name, "onnx-fp32": "model-fp32.onnx"})
    if cosine < MIN_COSINE:
        raise AscendConversionError(
            f"FP16 output departs from FP32 (cosine {cosine:.6f} < {MIN_COSINE}); see {out}"
        )
    say(f"FP16 cosine vs FP32 {cosine:.6f} on {len(pairs)} tiles; ATC command in {out / 'atc.sh'}")
    return result


def _validation_pairs(data: str | Path, n: int):
    """`n` tiles spread over the EBHI-Seg `val` split (never train: calibration's business)."""
    from app.core.dataset import read_manifest

    pairs = read_manifest(data_folder(data), split="val")
    step = max(1, len(pairs) // n)
    return pairs[::step][:n]
