"""The ASAP likelihood map of a run, streamed to disk: each finished band of the class map is
written to a raw file per class as the run goes, the pyramid's lower levels are reduced from it
strip by strip, and the TIFF is written a strip at a time, so a whole slide's map needs memory
for a band, not for the slide (a 20 mm slide at 1 µm/px is 400 MB a class).

ASAP shows `<slide>_likelihood_map.tif` over the slide by itself: one uint8 channel (255 = 1.0)
at the model's resolution, covering the whole slide, zero where the model did not run.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from app.core.annotation_store import MAP_SUFFIX
from app.core.export import atomic_output
from app.core.file_locks import JUST_CREATED_S, hold_while_writing, is_held
from app.core.pyramid_tiff import level_sizes, write_pyramidal_tiff
from app.errors import DelineoError

STRIP = 512  # rows a reduction or a TIFF strip reads at a time (the TIFF's tile height)
SPOOL_PREFIX = ".delineo-likelihood-"


class LikelihoodMapError(DelineoError):
    pass


EXPORT_SUFFIX = "_likelihood_map.tif"  # ASAP's name for the overlay of `<slide>.<ext>`


def is_likelihood_map(path: str | Path) -> bool:
    """Whether `path` is a map Delineo wrote (a run's, kept beside the slide to re-trace, or
    ASAP's overlay), by its name: a picture of probabilities, never a slide to delineate."""
    return Path(path).name.lower().endswith((MAP_SUFFIX, EXPORT_SUFFIX))


def not_a_slide_message(path: str | Path) -> str:
    return (
        f"{path} is a likelihood map Delineo wrote (a run's tumour probabilities), not a "
        "slide: open the slide it was made on (ASAP and QuPath show the map over it)"
    )


def likelihood_map_path(slide_path: Path, folder: Path | None = None, cls: str | None = None) -> Path:
    """`<slide>_likelihood_map.tif`, the name ASAP loads beside a slide as an overlay; one per
    class of a multi-class model, `<slide>_<class>_likelihood_map.tif`."""
    part = f"_{re.sub(r'[^A-Za-z0-9]+', '-', cls).strip('-')}" if cls else ""
    return (folder or slide_path.parent) / f"{Path(slide_path).stem}{part}{EXPORT_SUFFIX}"


class LikelihoodSpool:
    """Class maps of a run on the slide's whole grid at the model's resolution, spooled band by
    band (`add_band`, in any order) into raw files in a temporary folder beside the output, then
    written as pyramidal TIFFs (`write`). `channels`: the class channels to keep, by channel
    index of the run's bands; `origin`: the level-0 position of the run's canvas pixel (0, 0).
    Checks the disk before the run: a map that cannot fit is refused, saying how much it needs."""

    def __init__(
        self,
        folder: Path,
        slide_size: tuple[int, int],
        level0_per_px: float,
        origin: tuple[float, float],
        channels: list[int],
    ):
        w0, h0 = slide_size
        self.level0_per_px = float(level0_per_px)
        self.sizes = level_sizes(
            max(1, math.ceil(w0 / level0_per_px)), max(1, math.ceil(h0 / level0_per_px)), 2, 256
        )
        self.offset = (round(origin[0] / level0_per_px), round(origin[1] / level0_per_px))
        self.channels = list(channels)
        folder = Path(folder)
        raw = sum(w * h for w, h in self.sizes) * len(self.channels)
        need = 2 * raw  # the raw levels, and the TIFFs at worst as large (zlib usually 5-20x less)
        try:
            free = shutil.disk_usage(folder).free
        except OSError as e:
            raise LikelihoodMapError(
                f"{folder}: cannot write the likelihood map here ({e.strerror or e})"
            ) from None
        if need > free:
            (w, h), n = self.sizes[0], len(self.channels)
            raise LikelihoodMapError(
                f"the likelihood map ({w} x {h} px, {n} class(es)) needs "
                f"about {need / 1e9:.1f} GB free in {folder}, which has {free / 1e9:.1f} GB; free some "
                "space or write the output to another disk"
            )
        sweep_stale_spools(folder)
        try:
            self._tmp = tempfile.TemporaryDirectory(prefix=SPOOL_PREFIX, dir=folder)
        except OSError as e:
            raise LikelihoodMapError(
                f"{folder}: cannot write the likelihood map here ({e.strerror or e})"
            ) from None
        self.folder = Path(self._tmp.name)
        w, h = self.sizes[0]
        self._files = {}
        for c in self.channels:
            f = open(self.folder / f"class{c}-level0.raw", "w+b")  # noqa: SIM115 - closed in close()
            hold_while_writing(f.fileno())  # a later sweep leaves a live spool alone
            f.truncate(w * h)  # unwritten pixels read as 0 (no answer)
            self._files[c] = f

    def __enter__(self) -> LikelihoodSpool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove the raw files (the TIFFs written stay)."""
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._tmp.cleanup()

    def add_band(self, first_row: int, band: np.ndarray) -> None:
        """A finished band of the run's class map: uint8 (C, rows, width) from canvas row
        `first_row`; the part on the slide is written, the rest (the canvas reaches past the
        slide's edges by up to a tile's overlap) dropped."""
        w, h = self.sizes[0]
        ox, oy = self.offset
        rows, width = band.shape[1:]
        y0, y1 = max(0, oy + first_row), min(h, oy + first_row + rows)
        x0, x1 = max(0, ox), min(w, ox + width)
        if y1 <= y0 or x1 <= x0:
            return
        part = band[:, y0 - oy - first_row : y1 - oy - first_row, x0 - ox : x1 - ox]
        for c, f in self._files.items():
            rows_c = np.ascontiguousarray(part[c])
            if x1 - x0 == w:  # the full width: one write
                f.seek(y0 * w)
                f.write(rows_c.data)
                continue
            for k in range(y1 - y0):
                f.seek((y0 + k) * w + x0)
                f.write(rows_c[k].data)

    def write(self, paths: dict[int, Path], mpp: float | None) -> list[Path]:
        """The pyramidal TIFF of each kept channel (`paths`: channel -> output file), atomically;
        `mpp`: the slide's µm per level-0 pixel, for the TIFF's pixel size."""
        out = []
        for c, path in paths.items():
            try:
                levels = self._levels(c)
            except OSError as e:
                raise LikelihoodMapError(
                    f"{path}: reducing the likelihood map failed ({e.strerror or e}); free some space "
                    "or write the output to another disk"
                ) from None
            with atomic_output(path) as tmp:
                write_pyramidal_tiff(
                    tmp,
                    _StripSource(levels, self.sizes),
                    self.sizes,
                    channels=1,
                    compression="zlib",
                    tile=STRIP,
                    mpp=self.level0_per_px * mpp if mpp else None,
                    atomic=False,
                )
            for f in levels[1:]:
                f.close()
            out.append(Path(path))
        return out

    def _levels(self, c: int) -> list:
        """Channel `c`'s raw file per pyramid level: each reduced 2x from the one above by the
        mean of 2 x 2 pixels (an odd last row or column: its own mean), strip by strip."""
        files = [self._files[c]]
        for level in range(1, len(self.sizes)):
            (w, h), w1 = self.sizes[level - 1], self.sizes[level][0]
            src = files[-1]
            dst = open(self.folder / f"class{c}-level{level}.raw", "w+b")  # noqa: SIM115 - closed in write()
            for y in range(0, h, STRIP):
                n = min(STRIP, h - y)
                src.seek(y * w)
                strip = np.frombuffer(src.read(n * w), np.uint8).reshape(n, w)
                dst.write(_halve(strip, w1).data)
            dst.flush()
            files.append(dst)
        return files


def sweep_stale_spools(folder: Path) -> None:
    """Remove the spools a killed run left in `folder` (hundreds of MB each); a live run's are
    held (its files locked; on Windows, open, so they cannot be deleted)."""
    now = time.time()
    for d in Path(folder).glob(f"{SPOOL_PREFIX}*"):
        try:
            if not d.is_dir() or now - d.stat().st_mtime < JUST_CREATED_S:
                continue
        except OSError:
            continue
        if not any(is_held(f) for f in d.glob("*.raw")):
            shutil.rmtree(d, ignore_errors=True)


def _halve(strip: np.ndarray, width: int) -> np.ndarray:
    """The mean of each 2 x 2 block (rounded), an odd edge repeated: (ceil(n / 2), width)."""
    n, w = strip.shape
    if n % 2 or w % 2:
        strip = np.pad(strip, ((0, n % 2), (0, w % 2)), mode="edge")
    s = strip.astype(np.uint16)
    s = s[0::2, 0::2] + s[1::2, 0::2] + s[0::2, 1::2] + s[1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)[:, :width]


class _StripSource:
    """`write_pyramidal_tiff`'s source over raw level files: the TIFF asks tile by tile, row
    by row, so one strip of each level is read at a time."""

    def __init__(self, files: list, sizes: list[tuple[int, int]]):
        self.files, self.sizes = files, sizes
        self._strip: tuple[int, int, np.ndarray] | None = None

    def __call__(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        width, height = self.sizes[level]
        if self._strip is None or self._strip[:2] != (level, y):
            n = min(STRIP, height - y)
            f = self.files[level]
            f.seek(y * width)
            self._strip = (level, y, np.frombuffer(f.read(n * width), np.uint8).reshape(n, width))
        return self._strip[2][:h, x : x + w]


class RunLikelihood:
    """The likelihood maps of one run, one per foreground class: `sink` goes to the run as its
    `map_sink`; `prepare(plan)` (planned, not started) checks the disk; `write` makes the TIFFs
    named for `stem` (the slide's) in `folder`. A spool that cannot be written (the disk filled
    during the run) stops taking bands but lets the run finish: its outline is not lost for the
    map, and `write` says what went wrong."""

    def __init__(self, slide_size: tuple[int, int], scheme, folder: Path, stem: str):
        self.slide_size, self.folder, self.stem = slide_size, Path(folder), stem
        self.classes = scheme.foreground
        self.spool: LikelihoodSpool | None = None
        self.error: str | None = None

    def sink(self, first_row: int, band: np.ndarray) -> None:
        if self.error is not None:
            return
        try:
            self.spool.add_band(first_row, band)
        except OSError as e:
            self.error = (
                f"{self.folder}: writing the likelihood map failed during the run ({e.strerror or e}); "
                "free some space or write the output to another disk"
            )
            self.spool.close()

    def prepare(self, plan) -> None:
        self.spool = LikelihoodSpool(
            self.folder,
            self.slide_size,
            plan.level0_per_model,
            plan.model_to_level0(0, 0),
            [c.channel for c in self.classes],
        )

    def write(self, mpp: float | None) -> dict[str, Path]:
        """Each class's TIFF, by class name; `mpp`: the slide's µm per level-0 pixel."""
        if self.error is not None:
            raise LikelihoodMapError(self.error)
        many = len(self.classes) > 1
        paths = {
            c.name: likelihood_map_path(Path(self.stem), self.folder, c.name if many else None)
            for c in self.classes
        }
        self.spool.write({c.channel: paths[c.name] for c in self.classes}, mpp)
        return paths

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
