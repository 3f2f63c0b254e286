"""The slides of a batch: named files, and the slide files and DICOM folders under named folders."""

from __future__ import annotations

import os
from pathlib import Path

from app.core.likelihood_map import is_likelihood_map, not_a_slide_message
from app.core.slide import PLAIN_IMAGE_SUFFIXES, SLIDE_SUFFIXES
from app.errors import DelineoError

# In a folder, PNG and JPEG files are labels, thumbnails and exports far more often than slides;
# they are taken when named on the command line.
FOLDER_SUFFIXES = tuple(s for s in SLIDE_SUFFIXES if s not in PLAIN_IMAGE_SUFFIXES or s.startswith(".tif"))


class BatchInputError(DelineoError):
    """A path given to the batch is missing, holds no slide, or two slides would share an output."""


def slide_stem(path: Path) -> str:
    """The output's name: the file's stem, or a DICOM folder's own name."""
    return path.name if path.is_dir() else path.stem


def find_slides(paths: list[str | Path]) -> list[Path]:
    """Slides in the order given, folders searched recursively (sorted); a DICOM series is its
    folder. Two slides with one stem would write one GeoJSON: refused, naming both."""
    found: list[Path] = []
    for given in paths:
        p = Path(given).expanduser()
        if not p.exists():
            raise BatchInputError(f"{p}: no such file or folder")
        p = Path(os.path.abspath(p))  # not resolved: a link is a slide of its own name
        if p.is_file() and is_likelihood_map(p):
            raise BatchInputError(not_a_slide_message(p))
        if p.is_file() or _is_dicom_folder(p):
            found.append(p)
            continue
        inside = _slides_under(p)
        if not inside:
            raise BatchInputError(
                f"{p}: no slide files found in this folder or below (looked for "
                f"{' '.join(FOLDER_SUFFIXES)} and DICOM folders)"
            )
        found.extend(inside)
    unique = list(dict.fromkeys(found))
    by_stem: dict[str, Path] = {}
    for s in unique:
        other = by_stem.setdefault(slide_stem(s).lower(), s)
        if other != s:
            raise BatchInputError(
                f"{other} and {s} would both be written to {slide_stem(s)}.geojson; "
                "rename one, or run them in separate batches with different --out folders"
            )
    return unique


def _is_dicom_folder(p: Path) -> bool:
    return p.is_dir() and any(p.glob("*.dcm"))


def _slides_under(folder: Path) -> list[Path]:
    out: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(root)
        if any(f.lower().endswith(".dcm") for f in files):  # a DICOM series: the folder is the slide
            out.append(here)
            dirs[:] = []
            continue
        out.extend(
            (here / f)
            for f in sorted(files)
            # A folder the viewer was used in holds its runs' maps beside the slides: not slides.
            if not f.startswith(".")
            and Path(f).suffix.lower() in FOLDER_SUFFIXES
            and not is_likelihood_map(f)
        )
    return out
