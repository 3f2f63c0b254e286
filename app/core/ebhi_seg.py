"""EBHI-Seg's public release turned into the manifest layout the trainer reads (app/core/dataset.py).

The release (Shi et al., Front. Med. 2023, doi:10.3389/fmed.2023.1114673, CC BY 4.0) has one
folder per class, each with `image/` and `label/` holding PNGs of the same name. The layout
written here: `images/<class>/<name>.jpg` (JPEG quality 92, 4:4:4, as scanners store tiles),
`masks/<class>/<name>.png` (1-bit, the label thresholded at 127) and `manifest.csv`
(`image, mask, class, case, split, malignant`).

The split is by case, the 7-digit case number in every file name (GT2001837-1-400-001,
GTxc2012943-...), so crops of one case never straddle splits, even when a case has images in
several classes. A case's split is a pure function of its number (sha256), so the same release
always gives the same split, on any machine.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from app.core.dataset import TUMOUR_CLASS
from app.errors import DelineoError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
CASE_NUMBER = re.compile(r"(\d{7})")
DOWNLOAD_HINT = (
    "download EBHI-Seg (doi:10.3389/fmed.2023.1114673, CC BY 4.0), unpack it and run "
    "`delineo data ebhi-seg DOWNLOADED_DIR --out DIR`"
)


class ReleaseError(DelineoError):
    """A folder that is not an EBHI-Seg release; the message names it and what was expected."""


@dataclass
class Conversion:
    out: Path
    pairs: Counter = field(default_factory=Counter)  # (class, split) -> pairs written
    cases: Counter = field(default_factory=Counter)  # split -> cases
    unpaired: list[Path] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.pairs.values())


def class_name(folder: str) -> str:
    """'High-grade IN' -> 'high-grade-in', the class names the manifest and the trainer use."""
    return re.sub(r"[^a-z0-9]+", "-", folder.lower()).strip("-")


def case_of(name: str) -> str:
    m = CASE_NUMBER.search(name)
    if m is None:
        raise ReleaseError(f"{name}: no 7-digit case number in the file name; cannot split by case")
    return m.group(1)


def split_of(case: str, val_fraction: float, test_fraction: float) -> str:
    """'test', 'val' or 'train' for a case, the same every time for the same case number."""
    u = int.from_bytes(hashlib.sha256(case.encode()).digest()[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def _class_folders(src: Path) -> list[Path]:
    if not src.is_dir():
        raise ReleaseError(f"{src}: no such folder; {DOWNLOAD_HINT}")
    found = [d for d in sorted(src.iterdir()) if (d / "image").is_dir() and (d / "label").is_dir()]
    if not found:
        # The archive unpacks into one top folder (EBHI-SEG/); accept its parent too.
        inner = [d for d in sorted(src.iterdir()) if d.is_dir()]
        if len(inner) == 1:
            return _class_folders(inner[0])
        raise ReleaseError(
            f"{src}: not an EBHI-Seg release (expected class folders such as Adenocarcinoma/, "
            f"each with image/ and label/); {DOWNLOAD_HINT}"
        )
    return found


def _images(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def convert_release(
    src: str | Path,
    out: str | Path,
    val_fraction: float = 0.12,
    test_fraction: float = 0.15,
    progress: Callable[[str], None] | None = None,
) -> Conversion:
    """Write the manifest layout for the release in `src` into `out` (which must be empty or new)."""
    src, out = Path(src), Path(out)
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ReleaseError(f"val ({val_fraction}) and test ({test_fraction}) fractions must sum below 1")
    folders = _class_folders(src)
    if out.exists() and any(out.iterdir()):
        raise ReleaseError(f"{out}: not empty; give a new or empty folder for the converted data")
    result = Conversion(out)
    rows = []
    cases: dict[str, str] = {}
    for folder in folders:
        cls = class_name(folder.name)
        images, labels = _images(folder / "image"), _images(folder / "label")
        result.unpaired += [p for stem, p in images.items() if stem not in labels]
        result.unpaired += [p for stem, p in labels.items() if stem not in images]
        (out / "images" / cls).mkdir(parents=True, exist_ok=True)
        (out / "masks" / cls).mkdir(parents=True, exist_ok=True)
        for stem in sorted(images.keys() & labels.keys()):
            case = case_of(stem)
            split = cases.setdefault(case, split_of(case, val_fraction, test_fraction))
            image, mask = f"images/{cls}/{stem}.jpg", f"masks/{cls}/{stem}.png"
            _write_image(images[stem], out / image)
            _write_mask(labels[stem], out / mask)
            rows.append((image, mask, cls, case, split, int(cls == TUMOUR_CLASS)))
            result.pairs[(cls, split)] += 1
        if progress:
            progress(f"{folder.name}: {sum(n for (c, _), n in result.pairs.items() if c == cls)} pairs")
    if not rows:
        raise ReleaseError(f"{src}: no image/label pairs with the same name found; {DOWNLOAD_HINT}")
    result.cases.update(cases.values())
    with (out / "manifest.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "mask", "class", "case", "split", "malignant"])
        w.writerows(rows)
    return result


def _write_image(src: Path, dest: Path) -> None:
    try:
        with Image.open(src) as im:
            im.convert("RGB").save(dest, quality=92, subsampling=0)
    except OSError as e:
        raise ReleaseError(f"{src}: cannot be read as an image ({e})") from None


def _write_mask(src: Path, dest: Path) -> None:
    try:
        with Image.open(src) as im:
            white = np.asarray(im.convert("L")) > 127
    except OSError as e:
        raise ReleaseError(f"{src}: cannot be read as a label image ({e})") from None
    Image.fromarray(white).save(dest)
