"""The model card: everything a runtime must know to feed a model and trust its output.

A card is `card.json` beside the model files. Training, conversion, the engines, the pipeline
and the server all read it from here, so the input contract is defined once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.errors import DelineoError
from app.paths import MODELS_DIR

NORMALIZATION = {"scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
"""Input = (rgb_uint8 * scale - mean) / std, channels RGB, layout NCHW, float32."""

DEFAULT_MODEL = "ebhi-tumour-resunet"
PRECISIONS = ("fp32", "fp16", "int8")


class ModelCardError(DelineoError):
    """A model folder or card that cannot be used; the message names it and the fix."""


def to_model_input(batch_nhwc: np.ndarray, norm: dict) -> np.ndarray:
    """uint8 RGB NHWC -> normalized float32 NCHW, the layout every exported model takes."""
    if batch_nhwc.ndim == 3:
        batch_nhwc = batch_nhwc[None]
    x = batch_nhwc.astype(np.float32)
    mean = np.asarray(norm["mean"], np.float32) / norm["scale"]
    inv_std = norm["scale"] / np.asarray(norm["std"], np.float32)
    x = (x - mean) * inv_std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
        """Path of one model file, e.g. `openvino-int8`; a clear error when the card lacks it."""
        entry = self.files.get(key)
        if entry is None:
            have = ", ".join(sorted(self.files)) or "none"
            raise ModelCardError(f"{self.path / 'card.json'}: no '{key}' model (has: {have})")
        p = self.path / entry["path"]
        if not p.is_file():
            raise ModelCardError(f"{p}: listed in the model card but missing; reinstall the model")
        return p

    def verify(self) -> list[str]:
        """Files whose sha256 does not match the card (empty when all match)."""
        bad = []
        for key, entry in self.files.items():
            for e in (entry, entry.get("weights")):
                if e is None:
                    continue
                p = self.path / e["path"]
                if not p.is_file() or sha256(p) != e["sha256"]:
                    bad.append(key)
                    break
        return bad

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
    def from_dict(cls, raw: dict, folder: Path, where: object = "model card") -> ModelCard:
        """A card from its JSON (a file's, or a server's metadata: then without files)."""
        try:
            return cls(
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
