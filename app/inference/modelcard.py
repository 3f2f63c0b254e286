"""The model card: everything a runtime must know to feed a model and trust its output.

A card is `card.json` beside the model files. Training, conversion, the engines, the pipeline
and the server all read it from here, so the contract is defined once: the input (channel order,
normalization, tile), the output (activation, and which channel is which class) and how scores
become classes (`ClassScheme`). docs/MODEL-CARD.md documents the format. Cards of format 1 (one
sigmoid Tumor channel whose graph outputs probability) still load.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from app.core.class_scores import ClassScheme, OutputClass
from app.errors import DelineoError
from app.inference.integrity import cached_sha256, sha256
from app.paths import MODELS_DIR, user_models_dir

NORMALIZATION = {"scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
"""Input = (rgb_uint8 * scale - mean) / std, channels RGB, layout NCHW, float32."""

DEFAULT_MODEL = "ebhi-tumour-resunet"
MAX_TILE = 4096  # px: a card asking for more is refused (a 4096² tile is 48 MiB of uint8 already)
MAX_CLASSES = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
PRECISIONS = ("fp32", "fp16", "int8")
FORMAT = 2
ACTIVATIONS = ("sigmoid", "softmax", "none")
CHANNEL_ORDERS = ("RGB", "BGR")


TRAINING_ONLY_FILES = ("torch-fp32",)  # files keys no engine loads


class ModelCardError(DelineoError):
    """A model folder or card that cannot be used; the message names it and the fix."""


class ModelIntegrityError(ModelCardError):
    """A model file whose checksum is not the card's: changed, damaged or tampered with."""


def to_model_input(batch_nhwc: np.ndarray, norm: dict, channel_order: str = "RGB") -> np.ndarray:
    """uint8 RGB NHWC -> normalized float32 NCHW in the model's channel order, the layout every
    exported model takes."""
    if batch_nhwc.ndim == 3:
        batch_nhwc = batch_nhwc[None]
    if channel_order == "BGR":
        batch_nhwc = batch_nhwc[..., ::-1]
    x = batch_nhwc.astype(np.float32)
    mean = np.asarray(norm["mean"], np.float32) / norm["scale"]
    inv_std = norm["scale"] / np.asarray(norm["std"], np.float32)
    x = (x - mean) * inv_std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@dataclass
class ModelCard:
    path: Path  # the card's folder
    name: str
    version: str
    classes: list[dict]
    input: dict
    normalization: dict
    mpp: float
    files: dict  # key (e.g. "onnx-fp32", "openvino-int8") -> {"path", "sha256", "bytes"}
    validation: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    @property
    def tile(self) -> int:
        return int(self.input["tile"])

    @property
    def adaptive(self) -> dict:
        """The card's `adaptive` block (bounds-checked at load): the coarse model and the rule
        for where an adaptive run refines (see `RefineRule`)."""
        return dict(self.raw.get("adaptive") or {})

    @property
    def coarse_model(self) -> str | None:
        """The installed model an adaptive run's first pass uses (a name, never a path), or
        None: the card's `adaptive.coarse_model`."""
        name = (self.raw.get("adaptive") or {}).get("coarse_model")
        return str(name) if name and is_model_name(str(name)) else None

    @property
    def overlap(self) -> int:
        return int(self.input["overlap"])

    @property
    def multiple(self) -> int:
        return int(self.input.get("multiple", 16))

    @property
    def format(self) -> int:
        return int(self.raw.get("format", 1))

    @property
    def channel_order(self) -> str:
        return str(self.input.get("channel_order", "RGB"))

    @property
    def activation(self) -> str:
        """What the runtime applies to the raw output. A format-1 card's "sigmoid" described
        its graph, which already outputs probability."""
        if self.format < 2:
            return "none"
        return str(self.raw.get("output", {}).get("activation", "none"))

    @property
    def channels(self) -> int:
        return len(self.classes)

    @cached_property
    def scheme(self) -> ClassScheme:
        return scheme_of({**self.raw, "classes": self.classes})

    @property
    def default_threshold(self) -> float:
        return self.scheme.default_threshold

    def file(self, key: str) -> Path:
        """Path of one model file, e.g. `openvino-int8`, checked against the card's sha256 (its
        weights file too); a clear error when the card lacks it or it does not match."""
        entry = self.files.get(key)
        if entry is None:
            have = ", ".join(sorted(self.files)) or "none"
            raise ModelCardError(f"{self.path / 'card.json'}: no '{key}' model (has: {have})")
        p = self.path / entry["path"]
        if not p.is_file():
            raise ModelCardError(f"{p}: listed in the model card but missing; reinstall the model")
        bad = self._mismatch(key)
        if bad is not None:
            raise ModelIntegrityError(self._mismatch_message(bad))
        return p

    def _mismatch(self, key: str) -> Path | None:
        """The first file of entry `key` (model, then weights) that is missing or differs."""
        entry = self.files[key]
        for e in (entry, entry.get("weights")):
            if e is None:
                continue
            p = self.path / e["path"]
            try:
                if "bytes" in e and p.stat().st_size != e["bytes"]:
                    return p
                if cached_sha256(p) != e["sha256"]:
                    return p
            except (OSError, TypeError, KeyError):
                return p
        return None

    def _mismatch_message(self, p: Path) -> str:
        return (
            f"{p}: does not match the sha256 in {self.path / 'card.json'} (changed, damaged or "
            "tampered with); reinstall the model or convert it again"
        )

    def checked_files(self) -> list[str]:
        """The card's files to check: all but a training-only file that is absent (the PyTorch
        weights, for `train --init`, are left out of the app; present, they are checked)."""
        return [
            k
            for k in self.files
            if not (k in TRAINING_ONLY_FILES and not (self.path / self.files[k]["path"]).exists())
        ]

    def verify(self) -> list[str]:
        """Keys of the files whose sha256 does not match the card (empty when all match)."""
        return [key for key in self.checked_files() if self._mismatch(key) is not None]

    def check_integrity(self) -> None:
        """Every file the card lists matches its sha256, or ModelIntegrityError naming the first
        that does not (what a server checks before it starts)."""
        for key in self.checked_files():
            bad = self._mismatch(key)
            if bad is not None:
                raise ModelIntegrityError(self._mismatch_message(bad))

    @classmethod
    def load(cls, where: str | Path | None = None) -> ModelCard:
        """A card by folder, by card.json path, or by the name of an installed model (the
        user's models folder first, then the shipped ones)."""
        if where is None:
            where = DEFAULT_MODEL
        p = Path(where)
        if not p.exists() and is_model_name(str(where)):
            p = next((d / str(where) for d in model_folders() if (d / str(where)).is_dir()), p)
        if p.is_dir():
            p = p / "card.json"
        if not p.is_file():
            raise ModelCardError(
                f"{where}: no model card found; give a folder with card.json or an installed model"
                f" ({', '.join(installed_names()) or 'none installed'}; delineo model list)"
            )
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelCardError(f"{p}: not a valid model card ({e})") from None
        return cls.from_dict(raw, p.parent, where=p)

    @classmethod
    def shipped(cls, name: str, where: object = "model name") -> ModelCard:
        """A shipped model's card by its name only: a name from elsewhere (a server's metadata)
        is never taken as a path."""
        if not is_model_name(name):
            raise ModelCardError(f"{where}: {name!r} is not a model name (letters, digits, . _ -)")
        p = next(
            (d / name / "card.json" for d in model_folders() if (d / name / "card.json").is_file()), None
        )
        if p is None:
            raise ModelCardError(
                f"{where}: no installed model named {name!r} ({', '.join(installed_names()) or 'none'}); "
                "install it with delineo model add, or give the model's folder in Settings or --model"
            )
        return cls.load(p)

    @classmethod
    def installed(cls) -> list[ModelCard]:
        """Every usable installed card, the user's before the shipped (a user's model of a
        shipped model's name hides it); an unreadable card is left out (`model list` says why)."""
        cards, seen = [], set()
        for folder in model_folders():
            for d in sorted(folder.glob("*")):
                if d.name in seen or not (d / "card.json").is_file():
                    continue
                try:
                    cards.append(cls.load(d))
                    seen.add(d.name)
                except ModelCardError:
                    continue
        return cards

    @classmethod
    def from_dict(cls, raw: dict, folder: Path, where: object = "model card") -> ModelCard:
        """A card from its JSON (a file's, or a server's metadata: then without files)."""
        try:
            card = cls(
                path=folder,
                name=raw["name"],
                version=raw["version"],
                classes=raw["classes"],
                input=raw["input"],
                normalization=raw["normalization"],
                mpp=float(raw["mpp"]),
                files=raw.get("files", {}),
                validation=raw.get("validation", {}),
                raw=raw,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelCardError(f"{where}: not a valid model card ({e})") from None
        problem = _out_of_bounds(raw)
        if problem:
            raise ModelCardError(f"{where}: not a usable model card ({problem})")
        return card


def model_folders() -> list[Path]:
    """Where models are installed, in the order names are looked up."""
    return [user_models_dir(), MODELS_DIR]


def installed_names() -> list[str]:
    return sorted(
        {d.name for f in model_folders() if f.is_dir() for d in f.iterdir() if (d / "card.json").is_file()}
    )


def scheme_of(raw: dict) -> ClassScheme:
    """The decision rule a (bounds-checked) card declares; format 1: one independent class."""
    output = raw.get("output") or {}
    default_t = float(output.get("threshold", 0.5))
    classes = tuple(
        OutputClass(
            str(c["name"]),
            tuple(int(v) for v in c["color"]),
            int(c.get("channel", i)) if raw.get("format", 1) >= 2 else i,
            float(c.get("threshold", default_t)),
        )
        for i, c in enumerate(raw["classes"])
    )
    classes = tuple(sorted(classes, key=lambda c: c.channel))
    if raw.get("format", 1) < 2:
        return ClassScheme(classes)
    activation = output.get("activation", "none")
    exclusive = output.get(
        "exclusive", activation == "softmax" or (activation == "none" and len(classes) > 1)
    )
    return ClassScheme(classes, exclusive=bool(exclusive), background=raw.get("background"))


def is_model_name(name: object) -> bool:
    """A plain model name, safe in a URL path and as a folder name: never a path."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None and name not in (".", "..")


def _int_in(v, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _finite_in(v, lo: float, hi: float) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi


def _out_of_bounds(raw: dict) -> str | None:
    """What in a card's numbers would make a runtime misbehave (a 65536 px tile is a 4 GiB
    allocation), or None. Cards come from disk and from servers: neither is trusted."""
    inp, norm = raw["input"], raw["normalization"]
    if not isinstance(inp, dict) or not isinstance(norm, dict):
        return "input and normalization must be objects"
    tile, overlap, multiple = inp.get("tile"), inp.get("overlap"), inp.get("multiple", 16)
    if not _int_in(tile, 16, MAX_TILE):
        return f"input.tile {tile!r} is not a whole number of pixels in 16..{MAX_TILE}"
    if not _int_in(overlap, 0, tile // 2):
        return f"input.overlap {overlap!r} is not a whole number in 0..{tile // 2} (half the tile)"
    if not _int_in(multiple, 1, 256) or tile % multiple:
        return f"input.multiple {multiple!r} is not in 1..256 or does not divide the tile {tile}"
    if not _finite_in(raw["mpp"], 0.01, 100):
        return f"mpp {raw['mpp']!r} is not a pixel size in 0.01..100 µm"
    if not _finite_in(norm.get("scale"), 1e-6, 1e6):
        return f"normalization.scale {norm.get('scale')!r} is not a positive number"
    for k in ("mean", "std"):
        v = norm.get(k)
        if not (isinstance(v, list) and len(v) == 3 and all(_finite_in(x, -1e6, 1e6) for x in v)):
            return f"normalization.{k} must be three numbers"
    if any(x == 0 for x in norm["std"]):
        return "normalization.std must not be zero"
    classes = raw["classes"]
    if not (isinstance(classes, list) and 1 <= len(classes) <= MAX_CLASSES):
        return f"classes must be a list of 1..{MAX_CLASSES}"
    for c in classes:
        colour = c.get("color") if isinstance(c, dict) else None
        if not (isinstance(c, dict) and isinstance(c.get("name"), str) and 0 < len(c["name"]) <= 100):
            return "each class needs a name (text, at most 100 characters)"
        if not (isinstance(colour, list) and len(colour) == 3 and all(_int_in(x, 0, 255) for x in colour)):
            return f"class {c['name']!r}: color must be three integers 0..255"
    output = raw.get("output") or {}
    threshold = output.get("threshold", 0.5) if isinstance(output, dict) else None
    if not _finite_in(threshold, 0, 1):
        return f"output.threshold {threshold!r} is not in 0..1"
    problem = _adaptive_problem(raw.get("adaptive"))
    if problem:
        return problem
    fmt = raw.get("format", 1)
    if fmt not in (1, FORMAT):
        return f"format {fmt!r} is not one this Delineo reads (1 or {FORMAT}); update Delineo"
    if fmt < 2:
        return None
    return _contract_problem(raw, inp, output, classes)


ADAPTIVE_KEYS = frozenset({"coarse_model", "refine_level", "refine_min_um2", "refine_margin_px", "note"})


def _adaptive_problem(adaptive) -> str | None:
    """What in a card's `adaptive` block an adaptive run could not use, or None."""
    if adaptive is None:
        return None
    if not isinstance(adaptive, dict):
        return "adaptive must be an object"
    unknown = sorted(set(adaptive) - ADAPTIVE_KEYS)
    if unknown:
        return f"adaptive.{unknown[0]} is not a key Delineo reads ({', '.join(sorted(ADAPTIVE_KEYS))})"
    name = adaptive.get("coarse_model")
    if name is not None and not is_model_name(name):
        return f"adaptive.coarse_model {name!r} is not a model name (letters, digits, . _ -)"
    if "refine_level" in adaptive and not _finite_in(adaptive["refine_level"], 0.001, 1):
        return f"adaptive.refine_level {adaptive['refine_level']!r} is not in 0.001..1"
    if "refine_min_um2" in adaptive and not _finite_in(adaptive["refine_min_um2"], 0, 1e7):
        return f"adaptive.refine_min_um2 {adaptive['refine_min_um2']!r} is not an area in 0..1e7 µm²"
    if "refine_margin_px" in adaptive and not _int_in(adaptive["refine_margin_px"], 0, MAX_TILE):
        margin = adaptive["refine_margin_px"]
        return f"adaptive.refine_margin_px {margin!r} is not a whole number in 0..{MAX_TILE}"
    return None


def _contract_problem(raw: dict, inp: dict, output: dict, classes: list[dict]) -> str | None:
    """What in a format-2 card's classes, channels and activation does not add up, or None."""
    if output.get("activation", "none") not in ACTIVATIONS:
        return f"output.activation {output.get('activation')!r} is not one of {', '.join(ACTIVATIONS)}"
    if "exclusive" in output and not isinstance(output["exclusive"], bool):
        return "output.exclusive must be true or false"
    if inp.get("channel_order", "RGB") not in CHANNEL_ORDERS:
        return f"input.channel_order {inp.get('channel_order')!r} is not RGB or BGR"
    if inp.get("layout", "NCHW") != "NCHW":
        return f"input.layout {inp.get('layout')!r}: only NCHW models are supported"
    names = [c["name"] for c in classes]
    if len(set(names)) != len(names):
        return "class names must be unique"
    channels = [c.get("channel", i) for i, c in enumerate(classes)]
    if not all(_int_in(ch, 0, MAX_CLASSES - 1) for ch in channels) or sorted(channels) != list(
        range(len(classes))
    ):
        return f"class channels {channels} must be 0..{len(classes) - 1}, one class each"
    for c in classes:
        if "threshold" in c and not _finite_in(c["threshold"], 0, 1):
            return f"class {c['name']!r}: threshold {c['threshold']!r} is not in 0..1"
    background = raw.get("background")
    if background is not None and background not in names:
        return f"background {background!r} is not one of the classes ({', '.join(names)})"
    if background is not None and len(classes) < 2:
        return "a model with a background class needs at least one other class"
    if output.get("activation") == "softmax" and len(classes) < 2:
        return "softmax needs at least two output channels (one class: use sigmoid)"
    return None


def write_card(out: Path, raw: dict, files: dict[str, str]) -> None:
    """Write `out/card.json` listing `files` (key -> path relative to `out`) with sha256 and size
    (an IR's .bin, or ONNX external data, listed with its model), atomically."""
    entries = {}
    for key, rel in files.items():
        p = out / rel
        entry = {"path": rel, "sha256": sha256(p), "bytes": p.stat().st_size}
        weights = p.with_suffix(".bin") if p.suffix == ".xml" else p.with_name(p.name + ".data")
        if weights.is_file():
            size = weights.stat().st_size
            entry["weights"] = {"path": weights.name, "sha256": sha256(weights), "bytes": size}
        entries[key] = entry
    raw["files"] = entries
    tmp = out / ".card.json.tmp"
    tmp.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / "card.json")
