"""The model card: everything a runtime must know to feed a model and trust its output.

A card is `card.json` beside the model files. Training, conversion, the engines, the pipeline
and the server all read it from here, so the input contract is defined once.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.errors import DelineoError
from app.inference.integrity import cached_sha256, sha256
from app.paths import MODELS_DIR

NORMALIZATION = {"scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
"""Input = (rgb_uint8 * scale - mean) / std, channels RGB, layout NCHW, float32."""

DEFAULT_MODEL = "ebhi-tumour-resunet"
MAX_TILE = 4096  # px: a card asking for more is refused (a 4096² tile is 48 MiB of uint8 already)
MAX_CLASSES = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
PRECISIONS = ("fp32", "fp16", "int8")


class ModelCardError(DelineoError):
    """A model folder or card that cannot be used; the message names it and the fix."""


class ModelIntegrityError(ModelCardError):
    """A model file whose checksum is not the card's: changed, damaged or tampered with."""


def to_model_input(batch_nhwc: np.ndarray, norm: dict) -> np.ndarray:
    """uint8 RGB NHWC -> normalized float32 NCHW, the layout every exported model takes."""
    if batch_nhwc.ndim == 3:
        batch_nhwc = batch_nhwc[None]
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
    def overlap(self) -> int:
        return int(self.input["overlap"])

    @property
    def multiple(self) -> int:
        return int(self.input.get("multiple", 16))

    @property
    def tumour_colour(self) -> tuple[int, int, int]:
        return tuple(self.classes[0]["color"])

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

    def verify(self) -> list[str]:
        """Keys of the files whose sha256 does not match the card (empty when all match)."""
        return [key for key in self.files if self._mismatch(key) is not None]

    def check_integrity(self) -> None:
        """Every file the card lists matches its sha256, or ModelIntegrityError naming the first
        that does not (what a server checks before it starts)."""
        for key in self.files:
            bad = self._mismatch(key)
            if bad is not None:
                raise ModelIntegrityError(self._mismatch_message(bad))

    @classmethod
    def load(cls, where: str | Path | None = None) -> ModelCard:
        """A card by folder, by card.json path, or by the name of a shipped model."""
        if where is None:
            where = DEFAULT_MODEL
        p = Path(where)
        if not p.exists() and (MODELS_DIR / str(where)).exists():
            p = MODELS_DIR / str(where)
        if p.is_dir():
            p = p / "card.json"
        if not p.is_file():
            shipped = ", ".join(sorted(d.name for d in MODELS_DIR.glob("*") if d.is_dir()))
            raise ModelCardError(
                f"{where}: no model card found; give a folder with card.json or a shipped model"
                f" ({shipped or 'none installed'})"
            )
        try:
            raw = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ModelCardError(f"{p}: not a valid model card ({e})") from None
        return cls.from_dict(raw, p.parent, where=p)

    @classmethod
    def shipped(cls, name: str, where: object = "model name") -> ModelCard:
        """A shipped model's card by its name only: a name from elsewhere (a server's metadata)
        is never taken as a path."""
        if not is_model_name(name):
            raise ModelCardError(f"{where}: {name!r} is not a model name (letters, digits, . _ -)")
        p = MODELS_DIR / name / "card.json"
        if not p.is_file():
            shipped = ", ".join(sorted(d.name for d in MODELS_DIR.glob("*") if d.is_dir()))
            raise ModelCardError(
                f"{where}: no shipped model named {name!r} ({shipped or 'none installed'}); give the "
                "model's folder in Settings or --model"
            )
        return cls.load(p)

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
    tmp.write_text(json.dumps(raw, indent=2) + "\n")
    tmp.replace(out / "card.json")
