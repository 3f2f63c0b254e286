"""Installing a model trained elsewhere (`delineo model add`): it is checked against the card's
contract, given a card, run once through the real engine on a real tile, and only then moved
into the per-user models folder. A model that does not fit is refused with one line saying what
is wrong, and nothing is left installed.

What the file declares is read first, without running it (`model_graph`); what the options
say must agree with it (`build_card`); the run on a tile checks what only running can show.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.inference.model_graph import ModelGraph, inspect_model
from app.inference.modelcard import (
    ACTIVATIONS,
    CHANNEL_ORDERS,
    MAX_CLASSES,
    MAX_TILE,
    ModelCard,
    ModelCardError,
    is_model_name,
    model_folders,
    write_card,
)
from app.paths import MODELS_DIR, SAMPLE_SLIDE, user_models_dir

DEFAULT_TILE = 512
# Where a model is put together before it is renamed into place: inside the models folder (the
# same file system, so the rename is atomic) but not a model folder itself (no card.json in it).
STAGING = ".staging"
# Colours given to classes named without one, in order, skipping any the user gave.
PALETTE = (
    (200, 0, 0),
    (0, 150, 0),
    (0, 90, 200),
    (230, 140, 0),
    (150, 0, 190),
    (0, 160, 160),
    (200, 0, 130),
    (120, 90, 20),
)
BACKGROUND_GREY = (128, 128, 128)  # never drawn; listed in the card
_COLOUR = re.compile(r"#([0-9a-fA-F]{6})")
# Which engines run which of a card's files (engine, precision): what the check runs.
ENGINE_RUNS = {
    "onnx-fp32": (("openvino", "fp32"), ("onnxruntime", "fp32")),
    "onnx-fp16": (("onnxruntime", "fp16"),),
    "onnx-int8": (("onnxruntime", "int8"),),
    "openvino-fp32": (("openvino", "fp32"),),
    "openvino-fp16": (("openvino", "fp16"),),
    "openvino-int8": (("openvino", "int8"),),
}


class ModelInstallError(ModelCardError):
    """A model that cannot be installed; the message names the file or option and the fix."""


@dataclass(frozen=True)
class InstallRequest:
    """What `delineo model add` was told about the model (None: work it out or the default)."""

    source: Path
    name: str
    mpp: float
    classes: str  # 'Name[:#rrggbb],...', one per output channel in channel order
    background: str | None = None
    activation: str | None = None  # default: sigmoid for one channel, softmax for more
    input_range: int = 1  # the model's input range: 1 (0..1) or 255 (0..255)
    mean: tuple[float, float, float] | None = None  # in the input range, in channel_order's order
    std: tuple[float, float, float] | None = None
    channel_order: str = "RGB"
    tile: int | None = None
    overlap: int | None = None
    threshold: float = 0.5
    force: bool = False
    version: str = "1.0.0"


def parse_classes(text: str, background: str | None = None) -> list[dict]:
    """'Tumour:#c80000,Stroma,Background' -> [{"name", "color", "channel"}], channels by position.
    A class without a colour takes grey if it is the background, else the next palette colour
    unlike any other class's."""
    where = "--classes"
    parts = [p.strip() for p in (text or "").split(",")]
    if not text or not text.strip() or any(not p for p in parts):
        raise ModelInstallError(
            f"{where} {text!r}: give the class of each output channel, comma-separated, e.g. "
            "'Tumour:#c80000,Stroma,Background'"
        )
    if len(parts) > MAX_CLASSES:
        raise ModelInstallError(f"{where}: {len(parts)} classes; at most {MAX_CLASSES}")
    classes, seen = [], set()
    for channel, part in enumerate(parts):
        name, sep, colour = part.partition(":")
        name = name.strip()
        if not name or len(name) > 100:
            raise ModelInstallError(f"{where}: {part!r} needs a class name of 1..100 characters")
        if name.lower() in seen:
            raise ModelInstallError(f"{where}: class {name!r} is named twice; give each class its own name")
        seen.add(name.lower())
        rgb = None
        if sep:
            m = _COLOUR.fullmatch(colour.strip())
            if m is None:
                raise ModelInstallError(
                    f"{where}: class {name!r} has colour {colour.strip()!r}; give #rrggbb, "
                    f"e.g. {name}:#c80000"
                )
            rgb = [int(m.group(1)[i : i + 2], 16) for i in (0, 2, 4)]
        classes.append({"name": name, "color": rgb, "channel": channel})
    taken = [c["color"] for c in classes if c["color"]]
    for c in classes:
        if c["color"] is None and background is not None and c["name"].lower() == background.lower():
            c["color"] = list(BACKGROUND_GREY)
        elif c["color"] is None:
            far = [p for p in PALETTE if all(math.dist(p, t) >= 120 for t in taken)]
            c["color"] = list(far[0] if far else PALETTE[len(taken) % len(PALETTE)])
        taken.append(c["color"])
    return classes


def _first_line(e: BaseException) -> str:
    """An exception's message as one short line (runtimes raise pages of stack)."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _tile_and_multiple(request: InstallRequest, graph: ModelGraph) -> tuple[int, int, int]:
    """(tile, overlap, multiple) from the model's input and the options; a refusal naming the
    option when they disagree."""
    shape, src = graph.input_shape, request.source
    h = w = None
    if shape is not None:
        if len(shape) != 4:
            raise ModelInstallError(
                f"{src}: its input {graph.input_name!r} has rank {len(shape)} {_shape(shape)}; Delineo "
                "feeds rank 4 (N, 3, H, W)"
            )
        if shape[1] != 3:
            layout = " (it looks NHWC: export it channels-first, NCHW)" if shape[3] == 3 else ""
            raise ModelInstallError(
                f"{src}: its input {graph.input_name!r} {_shape(shape)} has {shape[1] or 'a dynamic'} "
                f"channel(s) at axis 1; Delineo feeds 3-channel NCHW images{layout}"
            )
        h, w = shape[2], shape[3]
    if (h is None) != (w is None) or (h is not None and h != w):
        raise ModelInstallError(
            f"{src}: its input {_shape(shape)} is not square; Delineo feeds square tiles (make height "
            "and width dynamic, or equal)"
        )
    if h is not None:
        if request.tile is not None and request.tile != h:
            raise ModelInstallError(
                f"--tile {request.tile}: the model takes {h}x{w} tiles only; give --tile {h}"
            )
        tile = h
    else:
        tile = DEFAULT_TILE if request.tile is None else request.tile
    if not 16 <= tile <= MAX_TILE:
        raise ModelInstallError(f"--tile {tile}: give a tile side of 16..{MAX_TILE} pixels")
    stride = graph.stride
    if stride is None:
        multiple = math.gcd(tile, 32)
    else:
        multiple = stride
        if tile % stride:
            fit = max(stride, tile - tile % stride)
            raise ModelInstallError(
                f"--tile {tile}: the model downsamples by {stride}, so the tile must be a multiple of "
                f"{stride}, e.g. --tile {fit}"
            )
    overlap = min(64, tile // 4) if request.overlap is None else request.overlap
    if not 0 <= overlap <= tile // 2:
        raise ModelInstallError(f"--overlap {overlap}: give 0..{tile // 2} pixels (at most half the tile)")
    return tile, overlap, multiple


def _shape(shape) -> str:
    if shape is None:
        return "(undeclared)"
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def build_card(request: InstallRequest, graph: ModelGraph) -> dict:
    """The format-2 card (without `files`) for the model and the options, after checking that
    they agree: a ModelInstallError naming the option or the file when they do not."""
    if not is_model_name(request.name):
        raise ModelInstallError(
            f"--name {request.name!r}: use letters, digits, '.', '_' and '-' (it names the folder), "
            "e.g. my-model"
        )
    if not (
        isinstance(request.mpp, int | float) and math.isfinite(request.mpp) and 0.01 <= request.mpp <= 100
    ):
        raise ModelInstallError(
            f"--mpp {request.mpp}: give the µm per pixel the model was trained at (0.01..100), e.g. 0.5"
        )
    tile, overlap, multiple = _tile_and_multiple(request, graph)  # the input first: what it takes
    classes = parse_classes(request.classes, request.background)
    names = [c["name"] for c in classes]
    out = graph.output_shape
    if out is not None and len(out) != 4:
        raise ModelInstallError(
            f"{request.source}: its output {graph.output_name!r} has rank {len(out)} {_shape(out)}; Delineo "
            "takes class scores (N, C, H, W)"
        )
    channels = out[1] if out is not None else None
    activation = request.activation or ("sigmoid" if (channels or len(classes)) == 1 else "softmax")
    if activation not in ACTIVATIONS:
        raise ModelInstallError(f"--activation {activation}: give one of {', '.join(ACTIVATIONS)}")
    if channels is not None and channels != len(classes):
        raise ModelInstallError(
            f"--classes: {len(classes)} class(es) ({', '.join(names)}) but the model outputs {channels} "
            f"channel(s) {_shape(out)}; name one class per output channel, in channel order"
        )
    if len(classes) == 1 and activation == "softmax":
        raise ModelInstallError(
            "--activation softmax: a one-channel output is always 1 after softmax; give sigmoid (or none "
            "when the model outputs the probability)"
        )
    background = request.background
    if background is not None:
        match = [n for n in names if n.lower() == background.lower()]
        if not match:
            raise ModelInstallError(
                f"--background-class {background!r}: not one of the classes ({', '.join(names)})"
            )
        background = match[0]
        if len(classes) == 1:
            raise ModelInstallError(
                f"--background-class {background!r}: it is the only class, so nothing would be outlined"
            )
    if request.channel_order.upper() not in CHANNEL_ORDERS:
        raise ModelInstallError(f"--channel-order {request.channel_order}: give RGB or BGR")
    if request.input_range not in (1, 255):
        raise ModelInstallError(f"--input-range {request.input_range}: give 1 (input 0..1) or 255 (0..255)")
    mean = _triple("--mean", request.mean, 0.0, request.input_range)
    std = _triple("--std", request.std, 1.0, request.input_range)
    if any(s <= 0 for s in std):
        raise ModelInstallError(f"--std {','.join(f'{s:g}' for s in std)}: give three positive numbers")
    if not (math.isfinite(request.threshold) and 0 < request.threshold <= 1):
        raise ModelInstallError(
            f"--threshold {request.threshold:g}: give a probability above 0 and at most 1"
        )
    card = {
        "format": 2,
        "name": request.name,
        "version": request.version,
        "created": time.strftime("%Y-%m-%d"),
        "task": f"Installed with delineo model add from {request.source.name}",
        "mpp": float(request.mpp),
        "input": {
            "name": graph.input_name,
            "layout": "NCHW",
            "dtype": "float32",
            "channel_order": request.channel_order.upper(),
            "tile": tile,
            "overlap": overlap,
            "multiple": multiple,
        },
        # model input = (pixel * scale - mean) / std; mean and std in the model's input range
        "normalization": {"scale": 1 / 255 if request.input_range == 1 else 1.0, "mean": mean, "std": std},
        "output": {"name": graph.output_name, "activation": activation, "threshold": request.threshold},
        "classes": [{**c, "threshold": request.threshold} if activation == "sigmoid" else c for c in classes],
    }
    if background is not None:
        card["background"] = background
    return card


def _triple(option: str, value, default: float, input_range: int) -> list[float]:
    if value is None:
        return [default] * 3
    values = [float(v) for v in value]
    if len(values) != 3 or not all(math.isfinite(v) and abs(v) <= 1e6 for v in values):
        raise ModelInstallError(f"{option}: give three numbers, one per channel, e.g. {option} 0.5,0.5,0.5")
    if input_range == 1 and option == "--mean" and any(abs(v) > 1.5 for v in values):
        raise ModelInstallError(
            f"{option} {','.join(f'{v:g}' for v in values)}: with --input-range 1 give it in 0..1 units "
            "(e.g. 0.485,0.456,0.406), or give --input-range 255"
        )
    return values


def sample_tile(tile: int) -> np.ndarray:
    """A real H&E tile (tile x tile RGB) from the centre of the bundled sample slide."""
    from app.core.slide import Slide

    with Slide.open(SAMPLE_SLIDE) as slide:
        w, h = slide.dimensions
        return slide.read_region(max(0, (w - tile) // 2), max(0, (h - tile) // 2), 0, tile, tile)


def check_runs(card: ModelCard, key: str, tile_rgb: np.ndarray | None = None) -> tuple[list[str], list[str]]:
    """Run the card's model through each real engine that takes its file, on a real tile, and
    check what comes back: (1, C, tile, tile) probabilities, finite, in 0..1. Returns the
    engines' names and notes on what looks doubtful; a ModelInstallError saying what was wrong."""
    from app.inference.engine import EngineError
    from app.inference.engine_registry import create_engine

    rgb = sample_tile(card.tile) if tile_rgb is None else tile_rgb
    model_file = card.path / card.files[key]["path"]
    channels = len(card.raw["classes"])
    activation = card.raw["output"]["activation"]
    ran = []
    for engine_key, precision in ENGINE_RUNS[key]:
        try:
            engine = create_engine(engine_key, card, precision, "CPU")
        except (EngineError, ModelCardError) as e:
            if key == "openvino-fp32" and f"no '{key}'" not in str(e) and "no '" in str(e):
                raise ModelInstallError(
                    f"{model_file.name}: an IR with FP32 weights does not run in this Delineo; save it with "
                    "FP16 weights (openvino.save_model's default) or give the ONNX model"
                ) from None
            raise ModelInstallError(f"{model_file.name}: {engine_key} could not load it: {e}") from None
        try:
            out = engine.predict(rgb[None])
        except Exception as e:  # noqa: BLE001 - whatever the runtime raises on a model it cannot run
            raise ModelInstallError(
                f"{model_file.name}: {engine.name} failed on a {card.tile}x{card.tile} tile of the sample "
                f"slide ({type(e).__name__}: {_first_line(e)})"
            ) from None
        finally:
            engine.close()
        out = np.asarray(out)
        want = (1, channels, card.tile, card.tile)
        if out.shape != want:
            raise ModelInstallError(
                f"{model_file.name}: on a {card.tile}x{card.tile} tile {engine.name} gave "
                f"{tuple(out.shape)}, not {want} (one {card.tile}x{card.tile} map per class); check "
                "--classes and --tile"
            )
        if not np.isfinite(out).all():
            raise ModelInstallError(
                f"{model_file.name}: gives NaN or infinite scores on a tile of the sample slide; check "
                "--input-range, --mean and --std"
            )
        lo, hi = float(out.min()), float(out.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            fix = (
                "it outputs logits: give --activation softmax (or sigmoid)"
                if activation == "none"
                else "check --activation"
            )
            raise ModelInstallError(
                f"{model_file.name}: scores {lo:.3g}..{hi:.3g} on a tile of the sample slide are not "
                f"probabilities in 0..1; {fix}"
            )
        ran.append(engine.name)
    doubt = _activated_twice(out[0], activation)
    return ran, [f"{model_file.name}: {doubt}"] if doubt else []


def _activated_twice(probs: np.ndarray, activation: str) -> str | None:
    """A model whose graph already ends in a sigmoid or softmax, given that activation again,
    still gives numbers in 0..1, but squeezed: sigmoid of 0..1 is 0.5..0.73 everywhere, softmax
    of probabilities never exceeds e / (e + C - 1). Said as a note: it cannot be certain."""
    if activation == "sigmoid" and probs.min() >= 0.5 - 1e-4 and probs.max() <= 1 / (1 + math.exp(-1)) + 1e-4:
        return (
            "every score on the sample tile is 0.50..0.73, as when the graph already outputs "
            "probabilities; if it does, add it again with --activation none --force"
        )
    channels = probs.shape[0]
    if activation == "softmax" and probs.max() <= math.e / (math.e + channels - 1) + 1e-4:
        return (
            "no pixel of the sample tile scores above "
            f"{math.e / (math.e + channels - 1):.2f}, as when the graph already ends in a softmax; if it "
            "does, add it again with --activation none --force"
        )
    return None


@dataclass(frozen=True)
class Installed:
    card: ModelCard
    engines: tuple[str, ...]  # the engines it was run through
    notes: tuple[str, ...] = ()  # what looked doubtful in the run


def install(request: InstallRequest, tile_rgb: np.ndarray | None = None) -> Installed:
    """Check, copy into a temporary folder in the models folder, write the card, run it, then
    rename the folder into place. Nothing is left behind on failure."""
    graph = inspect_model(request.source)
    raw = build_card(request, graph)
    if (MODELS_DIR / request.name / "card.json").is_file():
        raise ModelInstallError(
            f"--name {request.name}: a model shipped with Delineo has this name; choose another name"
        )
    root = user_models_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / request.name
    if final.exists() and not request.force:
        raise ModelInstallError(
            f"--name {request.name}: already installed in {final}; give --force to replace it, or "
            f"delineo model remove {request.name} first"
        )
    staging = root / STAGING
    staging.mkdir(exist_ok=True)
    _remove_stale(staging)
    tmp = Path(tempfile.mkdtemp(prefix=f"{request.name}.", suffix=".installing", dir=staging))
    old = None
    try:
        for f in graph.files:
            shutil.copyfile(f, tmp / f.name)
        write_card(tmp, raw, {graph.key: graph.files[0].name})
        card = ModelCard.load(tmp)
        card.check_integrity()
        engines, notes = check_runs(card, graph.key, tile_rgb)
        if final.exists():
            old = final.rename(tmp.with_suffix(".replaced"))
        tmp.rename(final)
        tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            old = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not final.exists():
            old.rename(final)
    return Installed(ModelCard.load(final), tuple(engines), tuple(notes))


def _remove_stale(staging: Path, older_than_s: float = 3600) -> None:
    """Folders an interrupted install or removal left behind (killed mid-copy)."""
    now = time.time()
    for p in staging.iterdir():
        try:
            if p.is_dir() and now - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            continue


def remove(name: str) -> Path:
    """Remove an installed model's folder (never a shipped one); returns the folder removed."""
    if not is_model_name(name):
        raise ModelInstallError(
            f"{name!r}: not a model name (letters, digits, . _ -); see delineo model list"
        )
    folder = user_models_dir() / name
    if not (folder / "card.json").is_file():
        if (MODELS_DIR / name / "card.json").is_file():
            raise ModelInstallError(
                f"{name}: shipped with Delineo, so it cannot be removed (only models you added)"
            )
        have = ", ".join(sorted(p.parent.name for p in user_models_dir().glob("*/card.json"))) or "none"
        raise ModelInstallError(
            f"{name}: no installed model of that name (installed: {have}); see delineo model list"
        )
    staging = folder.parent / STAGING
    staging.mkdir(exist_ok=True)
    trash = Path(tempfile.mkdtemp(prefix=f"{name}.", suffix=".removing", dir=staging))
    folder.rename(trash / name)  # gone from the list at once, even if deleting the files takes a while
    shutil.rmtree(trash, ignore_errors=True)
    return folder


def describe(card: ModelCard, shipped: bool) -> dict:
    """One model for `delineo model list`: name, version, classes, mpp, folder, where from."""
    classes = card.raw.get("classes", card.classes)
    background = card.raw.get("background")
    return {
        "name": card.name,
        "version": card.version,
        "classes": [c["name"] for c in classes],
        "background": background,
        "mpp": card.mpp,
        "folder": str(card.path),
        "source": "shipped" if shipped else "installed",
    }


def list_models() -> list[dict]:
    """Every model Delineo can run by name: installed ones first (they are found first), then
    the shipped ones. A folder whose card does not load is listed with its problem."""
    rows, seen = [], set()
    for root in model_folders():  # in the order names are looked up
        shipped = root == MODELS_DIR
        for card_json in sorted(root.glob("*/card.json")) if root.is_dir() else ():
            folder = card_json.parent
            if not is_model_name(folder.name) or folder.name in seen:
                continue
            seen.add(folder.name)
            try:
                rows.append(describe(ModelCard.load(folder), shipped))
            except ModelCardError as e:
                rows.append(
                    {
                        "name": folder.name,
                        "folder": str(folder),
                        "error": str(e),
                        "source": "shipped" if shipped else "installed",
                    }
                )
    return rows
