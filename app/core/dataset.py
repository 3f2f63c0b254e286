"""EBHI-Seg style manifests: image/mask pairs with a class, read the same way by training,
calibration and evaluation so the tumour target is defined in exactly one place."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from app.errors import DelineoError

TUMOUR_CLASS = "adenocarcinoma"
"""Only the annotated epithelium of adenocarcinoma images is tumour. Every pixel of every other
class (normal, polyp, low- and high-grade intraepithelial neoplasia, serrated adenoma) is
non-tumour: high-grade IN is pre-invasive and is deliberately taught as negative."""


class ManifestError(DelineoError):
    """A manifest that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path
    cls: str
    split: str
    case: str

    @property
    def is_tumour_class(self) -> bool:
        return self.cls == TUMOUR_CLASS


def read_manifest(path: str | Path, split: str | None = None) -> list[Pair]:
    """Rows of an EBHI-Seg manifest (`image, mask, class[, case, split]`), paths relative to it.

    `path` may be the CSV or the folder holding `manifest.csv`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest; pass a CSV with columns image, mask, class")
    root = path.parent
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"image", "mask", "class"} - set(reader.fieldnames or [])
        if missing:
            raise ManifestError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        rows = [
            Pair(
                image=root / r["image"],
                mask=root / r["mask"],
                cls=r["class"].strip(),
                split=(r.get("split") or "").strip(),
                case=(r.get("case") or "").strip(),
            )
            for r in reader
        ]
    if split is not None:
        rows = [r for r in rows if r.split == split]
    if not rows:
        raise ManifestError(f"{path}: no rows" + (f" with split={split}" if split else ""))
    return rows


def load_image(pair: Pair) -> np.ndarray:
    """RGB uint8 (H, W, 3)."""
    with Image.open(pair.image) as im:
        return np.asarray(im.convert("RGB"))


def load_target(pair: Pair) -> np.ndarray:
    """Tumour target, uint8 {0, 1} (H, W): the mask's white pixels, only in tumour-class images."""
    with Image.open(pair.mask) as im:
        mask = np.asarray(im.convert("L")) > 127
    if not pair.is_tumour_class:
        mask = np.zeros_like(mask)
    return mask.astype(np.uint8)
