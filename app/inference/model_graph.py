"""What a model file declares, read without running it: its files, its one input and output
with their shapes, the precision its weights are stored in, and its stride (how much it
downsamples), which OpenVINO's shape inference gives for ONNX and IR alike.

ONNX is first checked with `onnx` (external data off, size bounded) where it is installed; the
desktop app leaves `onnx` out, and OpenVINO's reader then says what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.inference.modelcard import ModelCardError

MAX_MODEL_BYTES = 4 << 30  # a model (weights included) larger than this is refused before it is read
STRIDE_PROBE = 2048  # side the model's shapes are inferred at to find its stride (up to 256)


class ModelFileError(ModelCardError):
    """A model file that cannot be read, or is not one model Delineo runs; the message names it."""


@dataclass(frozen=True)
class ModelGraph:
    """What a model file declares: its files, inputs and outputs (None: a dynamic size)."""

    files: tuple[Path, ...]  # the model file, then its weights (.bin, .onnx.data) if any
    key: str  # the card's file key, e.g. "onnx-fp32"
    input_name: str
    input_shape: tuple[int | None, ...] | None  # None: no declared shape
    output_name: str
    output_shape: tuple[int | None, ...] | None
    stride: int | None  # the most the model downsamples (None: not found)


def inspect_model(source: Path) -> ModelGraph:
    """Open the model file without running it; a ModelFileError naming the file when it is
    not an ONNX model or an OpenVINO IR, or cannot be read."""
    source = Path(source)
    if not source.is_file():
        raise ModelFileError(f"{source}: no such file; give the model's .onnx or OpenVINO .xml")
    suffix = source.suffix.lower()
    if suffix == ".onnx":
        files = _onnx_files(source)
    elif suffix == ".xml":
        weights = source.with_suffix(".bin")
        if not weights.is_file():
            raise ModelFileError(f"{weights}: missing; an OpenVINO IR is MODEL.xml with MODEL.bin beside it")
        with open(source, "rb") as f:
            head = f.read(4096)
        if b"<net" not in head:
            raise ModelFileError(f"{source}: not an OpenVINO IR (no <net> element at its start)")
        files = (source, weights)
    else:
        hint = (
            " (export it to ONNX first, e.g. torch.onnx.export)" if suffix in (".pt", ".pth", ".ckpt") else ""
        )
        raise ModelFileError(
            f"{source}: not an ONNX model (.onnx) or an OpenVINO IR (.xml with its .bin){hint}"
        )
    total = sum(f.stat().st_size for f in files)
    if total > MAX_MODEL_BYTES:
        raise ModelFileError(
            f"{source}: {total / 2**30:.1f} GiB with its weights; models up to "
            f"{MAX_MODEL_BYTES >> 30} GiB are taken"
        )
    if suffix == ".onnx":
        _check_onnx(source)
    return _openvino_graph(source, files)


def _onnx_files(source: Path) -> tuple[Path, ...]:
    """The ONNX file and its external data file if it has one (only MODEL.onnx.data, beside it,
    as torch writes it: the card lists an ONNX model's weights under that name)."""
    if source.stat().st_size > MAX_MODEL_BYTES:
        raise ModelFileError(f"{source}: larger than {MAX_MODEL_BYTES >> 30} GiB; not a model Delineo takes")
    with open(source, "rb") as f:
        head = f.read(64)
    if not head or head.lstrip()[:1] in (b"<", b"{", b"#") or _is_text(head):
        raise ModelFileError(f"{source}: not an ONNX model (the file is text, not an ONNX protobuf)")
    data = source.with_name(source.name + ".data")
    return (source, data) if data.is_file() else (source,)


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _check_onnx(source: Path) -> None:
    """The protobuf is an ONNX model whose weights are inside it or in MODEL.onnx.data beside
    it. Read with external data off, so its size is the file's. Skipped without `onnx` (the
    desktop app): OpenVINO's reader then says what is wrong."""
    try:
        import onnx
        from onnx.external_data_helper import uses_external_data
    except ImportError:
        return
    try:
        model = onnx.load(str(source), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises its own DecodeError and others
        raise ModelFileError(f"{source}: not an ONNX model ({type(e).__name__}: {e})") from None
    graph = model.graph
    if not graph.node or not graph.output or not model.opset_import:
        raise ModelFileError(f"{source}: not an ONNX model (no graph, outputs or opset in it)")
    locations = set()
    for tensor in graph.initializer:
        if uses_external_data(tensor):
            locations.update(e.value for e in tensor.external_data if e.key == "location")
    expected = source.name + ".data"
    if locations - {expected}:
        raise ModelFileError(
            f"{source}: its weights are in {', '.join(sorted(locations))}; Delineo takes external data "
            f"only as {expected} beside the model (onnx.save(model, path, save_as_external_data=True, "
            f"location='{expected}')) or inside the .onnx"
        )
    if locations and not source.with_name(expected).is_file():
        raise ModelFileError(f"{source.with_name(expected)}: missing; the model's weights are in it")


def _last_line(e: BaseException) -> str:
    """OpenVINO's reason, which comes last after the source locations of its checks."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]


def _dims(partial_shape) -> tuple[int | None, ...] | None:
    if partial_shape.rank.is_dynamic:
        return None
    return tuple(d.get_length() if d.is_static else None for d in partial_shape)


def _openvino_graph(source: Path, files: tuple[Path, ...]) -> ModelGraph:
    try:
        import openvino as ov
    except ImportError as e:
        raise ModelFileError(f"OpenVINO is not installed ({e}); pip install openvino") from None
    kind = "ONNX model" if source.suffix.lower() == ".onnx" else "OpenVINO IR"
    try:
        model = ov.Core().read_model(str(source))
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError and its own types
        raise ModelFileError(f"{source}: not a readable {kind} ({_last_line(e)})") from None
    inputs, outputs = model.inputs, model.outputs
    if len(inputs) != 1:
        names = ", ".join(i.get_any_name() for i in inputs)
        raise ModelFileError(
            f"{source}: takes {len(inputs)} inputs ({names}); Delineo feeds a model one image tensor"
        )
    if len(outputs) != 1:
        names = ", ".join(o.get_any_name() if o.get_names() else "?" for o in outputs) or "none"
        raise ModelFileError(
            f"{source}: has {len(outputs)} outputs ({names}); Delineo runs a model with one output, the "
            "class scores (N, C, H, W): export only that one"
        )
    inp, out = inputs[0], outputs[0]
    if not inp.get_element_type().is_real():
        raise ModelFileError(
            f"{source}: its input {inp.get_any_name()!r} is {inp.get_element_type().get_type_name()}; "
            "Delineo feeds float32 (normalized with --input-range, --mean and --std)"
        )
    in_shape, out_shape = _dims(inp.get_partial_shape()), _dims(out.get_partial_shape())
    stride, probed_out = _stride(model, in_shape)
    if probed_out is not None and out_shape is not None and len(out_shape) == len(probed_out) == 4:
        # shape inference at a fixed size tells a channel count the file left dynamic
        out_shape = (out_shape[0], out_shape[1] or probed_out[1], *out_shape[2:])
    return ModelGraph(
        files=files,
        key=_file_key(model, source),
        input_name=inp.get_any_name() if inp.get_names() else "input",
        input_shape=in_shape,
        output_name=out.get_any_name() if out.get_names() else "output",
        output_shape=out_shape,
        stride=stride,
    )


def _file_key(model, source: Path) -> str:
    """The card's key for the file: its format and the precision its weights are stored in."""
    types = {op.get_type_name() for op in model.get_ops()}
    consts = {
        op.get_output_element_type(0).get_type_name()
        for op in model.get_ops()
        if op.get_type_name() == "Constant"
    }
    if types & {"FakeQuantize", "QuantizeLinear", "DequantizeLinear"} or consts & {"i8", "u8"}:
        precision = "int8"
    elif "f16" in consts or model.inputs[0].get_element_type().get_type_name() == "f16":
        precision = "fp16"
    else:
        precision = "fp32"
    return f"{'onnx' if source.suffix.lower() == '.onnx' else 'openvino'}-{precision}"


def _stride(model, in_shape) -> tuple[int | None, tuple | None]:
    """(the most the model downsamples, its output shape at the probe size): OpenVINO infers
    every tensor's shape at a fixed input size, and a feature map 1/s of the input is stride s."""
    if in_shape is None or len(in_shape) != 4:
        return None, None
    h, w = in_shape[2], in_shape[3]
    side = h if h is not None and h == w else STRIDE_PROBE
    if h is None or w is None:
        try:
            model.reshape({model.inputs[0]: [1, in_shape[1] or 3, side, side]})
        except Exception:  # noqa: BLE001 - a graph that cannot take the probe size: stride unknown
            return None, None
    stride = 1
    for op in model.get_ordered_ops():
        for output in op.outputs():
            dims = _dims(output.get_partial_shape())
            if dims is None or len(dims) != 4 or None in dims[2:]:
                continue
            fh, fw = dims[2], dims[3]
            if 1 < fh < side and fh == fw and side % fh == 0 and side // fh <= 256:
                stride = max(stride, side // fh)
    return stride, _dims(model.outputs[0].get_partial_shape())
