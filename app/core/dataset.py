"""EBHI-Seg style manifests: image/mask pairs with a class, read the same way by training,
calibration and evaluation so the tumour and lesion targets are defined in exactly one place."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from app.core.resample import area_downscale
from app.errors import DelineoError

TUMOUR_CLASS = "adenocarcinoma"
"""Only the annotated epithelium of adenocarcinoma images is tumour. Every pixel of every other
class (normal, polyp, low- and high-grade intraepithelial neoplasia, serrated adenoma) is
non-tumour: high-grade IN is pre-invasive and is deliberately taught as negative."""


TARGETS = ("tumour", "lesions")
"""`tumour`: one sigmoid channel, adenocarcinoma epithelium vs everything else (the shipped
binary model). `lesions`: a label map over `LESION_CLASSES` for a softmax model."""

LESION_CLASSES = ("Background", "Tumor", "High-grade dysplasia", "Other epithelium")
"""Label index = output channel. "Tumor" is the binary model's class name, so exports and the
classes panel match between the two models."""

LESION_LABEL = {
    "adenocarcinoma": 1,
    "high-grade-in": 2,
    "normal": 3,
    "polyp": 3,
    "low-grade-in": 3,
    "serrated-adenoma": 3,
}
"""EBHI-Seg class -> label of its mask's white pixels; every unmasked pixel is 0 (background).
High-grade IN is pre-invasive: with its own label the model no longer has to call it tumour or
nothing."""


class ManifestError(DelineoError):
    """A manifest that cannot be used; the message names the file and the fix."""


DATA_ENV = "DELINEO_DATA"
GET_THE_DATA = (
    "download EBHI-Seg (doi:10.3389/fmed.2023.1114673), convert it with "
    "`delineo data ebhi-seg DOWNLOADED_DIR --out DIR`, then pass --data DIR or set DELINEO_DATA=DIR"
)


def data_folder(given: str | Path | None = None) -> Path:
    """The EBHI-Seg folder (with manifest.csv) for train, convert and bench accuracy: `given`, or
    $DELINEO_DATA (that folder, or a folder holding `ebhi-seg/`). The repository ships none."""
    if given is not None:
        return Path(given)
    env = os.environ.get(DATA_ENV, "").strip()
    if not env:
        raise ManifestError(f"no training data given: {GET_THE_DATA}")
    root = Path(env).expanduser()
    for candidate in (root, root / "ebhi-seg"):
        if (candidate / "manifest.csv").is_file():
            return candidate
    raise ManifestError(f"{root} (from ${DATA_ENV}): no manifest.csv there or in ebhi-seg/; {GET_THE_DATA}")


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path
    cls: str
    split: str
    case: str
    downsample: int = 1  # read at 1/downsample of the tile's size (a coarse model's pixel size)

    @property
    def is_tumour_class(self) -> bool:
        return self.cls == TUMOUR_CLASS


def read_manifest(path: str | Path, split: str | None = None, downsample: int = 1) -> list[Pair]:
    """Rows of an EBHI-Seg manifest (`image, mask, class[, case, split]`), paths relative to it.

    `path` may be the CSV or the folder holding `manifest.csv`. With `downsample` k, every
    image and target is read at 1/k of its size (block means; a target pixel is set where most
    of its block is), as a model at k times the pixel size sees it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest; pass a CSV with columns image, mask, class")
    root = path.parent
    with path.open(newline="", encoding="utf-8") as f:
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
                downsample=downsample,
            )
            for r in reader
        ]
    if split is not None:
        rows = [r for r in rows if r.split == split]
    if not rows:
        raise ManifestError(f"{path}: no rows" + (f" with split={split}" if split else ""))
    return rows


def load_image(pair: Pair) -> np.ndarray:
    """RGB uint8 (H, W, 3), at the pair's downsample."""
    with Image.open(pair.image) as im:
        rgb = np.asarray(im.convert("RGB"))
    return _reduced(rgb, pair.downsample)


def _reduced(a: np.ndarray, k: int) -> np.ndarray:
    """Block means of k x k pixels (the far partial row and column dropped)."""
    if k == 1:
        return a
    h, w = a.shape[0] // k, a.shape[1] // k
    return area_downscale(a[: h * k, : w * k], (w, h))


def load_target(pair: Pair, target: str = "tumour") -> np.ndarray:
    """uint8 (H, W). `tumour`: {0, 1}, the mask's white pixels, only in tumour-class images.
    `lesions`: the mask's white pixels hold the pair's `LESION_LABEL`, the rest 0."""
    with Image.open(pair.mask) as im:
        mask = _reduced(np.asarray(im.convert("L")), pair.downsample) > 127
    if target == "tumour":
        return (mask & pair.is_tumour_class).astype(np.uint8)
    if target != "lesions":
        raise ManifestError(f"target {target!r}: not one of {', '.join(TARGETS)}")
    return mask.astype(np.uint8) * np.uint8(lesion_label(pair))


def lesion_label(pair: Pair) -> int:
    """The lesion label of a pair's masked pixels; an unknown class is an error, not background."""
    try:
        return LESION_LABEL[pair.cls]
    except KeyError:
        raise ManifestError(
            f"{pair.image}: class {pair.cls!r} has no lesion label; the lesions target knows "
            f"{', '.join(sorted(LESION_LABEL))}"
        ) from None
