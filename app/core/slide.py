"""One class over every slide format Delineo reads.

OpenSlide (through the openslide-bin wheel, so nothing is installed system-wide) reads the
scanner formats and DICOM WSI; plain PNG/JPEG/TIFF images go through OpenSlide's ImageSlide
(Pillow). Every failure becomes a `SlideError` that names the file and the reason.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import warnings
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from app.core import resample
from app.core.jpeg_markers import jpeg_colour_space
from app.core.tiff_tiles import JpegTiffLevels
from app.errors import DelineoError

log = logging.getLogger(__name__)

SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
    ".png",
    ".jpg",
    ".jpeg",
)
FORMAT_FILTER = (
    "Slides (" + " ".join(f"*{s}" for s in SLIDE_SUFFIXES) + ");;"
    "Aperio (*.svs *.svslide);;Hamamatsu (*.ndpi *.vms *.vmu);;MIRAX (*.mrxs);;"
    "Leica (*.scn);;Ventana (*.bif);;DICOM WSI (*.dcm);;TIFF (*.tif *.tiff);;"
    "Images (*.png *.jpg *.jpeg *.tif *.tiff);;All files (*)"
)

PLAIN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

# What a message names when a file is no slide at all.
SLIDE_FORMATS = (
    "Aperio .svs, Hamamatsu .ndpi .vms .vmu, Leica .scn, MIRAX .mrxs, Sakura .svslide, Ventana .bif, "
    "DICOM WSI, tiled TIFF (Delineo also opens PNG and JPEG images)"
)
# How the slide formats' files begin: a file that begins so but does not open is a damaged slide,
# one that begins otherwise (a text file, a document) is no slide at all.
SLIDE_MAGIC = (
    b"II*\x00",  # TIFF (Aperio, Hamamatsu NDPI, Leica, Ventana, Philips, generic), little-endian
    b"MM\x00*",  # TIFF, big-endian
    b"II+\x00",  # BigTIFF
    b"MM\x00+",
    b"SQLite format 3\x00",  # Sakura .svslide
    b"\xff\xd8\xff",  # JPEG (Hamamatsu VMS tiles, MIRAX's .mrxs)
    b"\x89PNG",
    b"ZISRAWFILE",  # Zeiss CZI
)
# Formats whose named file is a text index (or may be): judged damaged, not foreign, by name.
INDEX_SUFFIXES = (".vms", ".vmu", ".mrxs")

# A plain image larger than this is almost certainly a mislabelled slide; Pillow would decode it
# whole into memory (4 bytes a pixel: 640 MB at this size). Delineo applies this limit itself,
# with its own message, instead of Pillow's decompression-bomb warning at 89 M pixels (Pillow
# refuses outright above 179 M).
MAX_PLAIN_IMAGE_PIXELS = 160_000_000


# Vendors whose tiled JPEG TIFF levels map one to one onto TIFF pages, so their tiles can be
# decoded directly (Ventana BIF overlaps its tiles and Philips' are sparse: OpenSlide reads those).
DIRECT_VENDORS = ("aperio", "generic-tiff")


class SlideError(DelineoError):
    """The slide cannot be opened or read; the message names the file and the reason."""


def resolve_slide_path(path: str | Path) -> Path:
    """The file to hand to OpenSlide: a DICOM folder resolves to one file of its series."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SlideError(f"{p}: no such file or folder")
    if p.is_dir():
        dcm = sorted(p.glob("*.dcm"))
        if dcm:
            return dcm[0]
        mrxs = sorted(p.glob("*.mrxs"))
        if mrxs:
            return mrxs[0]
        raise SlideError(f"{p}: this folder holds no slide (no .dcm series or .mrxs file)")
    return p


class Slide:
    """A read-only whole-slide image. `read_region` is safe to call from several threads."""

    def __init__(self, path: Path, handle: openslide.AbstractSlide):
        self.path = path
        self._h = handle
        # OpenSlide's C library is thread-safe; Pillow-backed ImageSlide is not.
        self._lock = threading.Lock() if isinstance(handle, openslide.ImageSlide) else None
        self._reopen_lock = threading.Lock()
        self._retired: list[openslide.AbstractSlide] = []
        # Reads in flight, so close() never frees OpenSlide's handle under a reader thread
        # (OpenSlide aborts the process when that happens).
        self._use_lock = threading.Lock()
        self._readers = 0
        self._closing = False
        self._closed = False
        props = handle.properties
        self.vendor: str | None = props.get(openslide.PROPERTY_NAME_VENDOR)
        self.dimensions: tuple[int, int] = tuple(handle.dimensions)
        self.level_count: int = handle.level_count
        self.level_dimensions: list[tuple[int, int]] = [tuple(d) for d in handle.level_dimensions]
        self.level_downsamples: list[float] = [float(d) for d in handle.level_downsamples]
        self.mpp: tuple[float, float] | None = _mpp(props)
        self.objective_power: float | None = _float(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
        self.bounds: tuple[int, int, int, int] | None = _bounds(props)
        self.associated_image_names: list[str] = sorted(handle.associated_images.keys())
        self._ycbcr_frames = _mislabelled_ycbcr_dicom(path, props)
        # Tiled JPEG TIFFs whose tiles we decode ourselves, about 4x faster than through
        # OpenSlide and pixel for pixel the same on each level's grid (see tiff_tiles).
        self._direct = (
            JpegTiffLevels.probe(self.path, self.level_dimensions) if self.vendor in DIRECT_VENDORS else None
        )
        if self._ycbcr_frames:
            log.info("%s: DICOM says RGB but its JPEG frames are YCbCr; converting colours", path)
        # What a user should hear about a slide that opened anyway.
        self.notes: list[str] = _missing_levels(path, self.level_dimensions) if self.vendor == "dicom" else []

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | Path) -> Slide:
        p = resolve_slide_path(path)
        if not p.is_file():
            raise SlideError(f"{p}: not a regular file")
        try:
            with open(p, "rb") as f:
                f.read(1)
        except PermissionError:
            raise SlideError(f"{p}: permission denied; check the file's read permissions") from None
        except OSError as e:
            raise SlideError(f"{p}: cannot be read ({e.strerror or e})") from None
        try:
            fmt = openslide.OpenSlide.detect_format(str(p))
            if fmt is not None:
                handle = openslide.OpenSlide(str(p))
            elif p.suffix.lower() in PLAIN_IMAGE_SUFFIXES:
                handle = _open_plain_image(p)
            elif p.stat().st_size == 0:
                raise SlideError(f"{p}: the file is empty (0 bytes); an interrupted copy? Copy it again")
            elif _looks_like_a_slide(p):
                raise SlideError(
                    f"{p}: OpenSlide does not recognise this file ({_size(p)}); it is damaged or "
                    "incomplete (an interrupted copy?), or not a supported slide format"
                )
            else:
                raise SlideError(
                    f"{p}: not a slide file OpenSlide can read ({_size(p)}; by its content it is none of "
                    f"the formats it reads: {SLIDE_FORMATS}); open a slide in one of these formats"
                )
        except SlideError:
            raise
        except openslide.OpenSlideUnsupportedFormatError:
            raise SlideError(f"{p}: not a supported slide or image format") from None
        except openslide.OpenSlideError as e:
            raise SlideError(f"{p}: the slide is damaged or incomplete ({e})") from None
        except OSError as e:
            raise SlideError(f"{p}: cannot be opened ({e})") from None
        slide = cls(p, handle)
        if min(slide.dimensions) <= 0:
            slide.close()
            raise SlideError(f"{p}: the slide has no pixels")
        return slide

    def close(self) -> None:
        """Close now, or as soon as the reads in flight on other threads have finished."""
        with self._use_lock:
            self._closing = True
            if self._readers:
                return
        self._really_close()

    def _really_close(self) -> None:
        with self._use_lock:
            if self._closed:
                return
            self._closed = True
        for h in [*self._retired, self._h]:
            h.close()
        self._retired = []
        if self._direct is not None:
            self._direct.close()
            self._direct = None

    @contextlib.contextmanager
    def _reading(self):
        with self._use_lock:
            if self._closing:
                raise SlideError(f"{self.path}: the slide was closed")
            self._readers += 1
        try:
            yield
        finally:
            with self._use_lock:
                self._readers -= 1
                last = self._closing and self._readers == 0
            if last:
                self._really_close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ geometry

    @property
    def name(self) -> str:
        return self.path.name

    def level_mpp(self, level: int) -> float | None:
        if self.mpp is None:
            return None
        return float(np.mean(self.mpp)) * self.level_downsamples[level]

    def best_level_for_downsample(self, downsample: float) -> int:
        """The finest level no finer than needed: largest downsample ≤ the one asked for."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * 1.001:
                best = i
        return best

    # ------------------------------------------------------------------ pixels

    def read_region(self, x: int, y: int, level: int, w: int, h: int, reduction: int = 1) -> np.ndarray:
        """RGB uint8 (h, w, 3); (x, y) in level-0 pixels, size at `level` shrunk by `reduction`
        (1, or one of `reductions(level)`). Outside the slide and transparent areas are white,
        as on glass."""
        with self._reading():
            if reduction == 1:
                return self._read_region(x, y, level, w, h)
            return self._read_reduced(x, y, level, w, h, reduction)

    def reductions(self, level: int) -> tuple[int, ...]:
        """How much smaller than stored `level` can be read without resizing: (1,) for most
        formats; (1, 2, 4, 8) for a tiled JPEG level, which libjpeg decodes at 1/2, 1/4 or 1/8
        size (DCT scaling) faster than at full size. The pipeline treats them as levels."""
        return (self._direct.reductions(level) if self._direct is not None else ()) or (1,)

    def _read_reduced(self, x: int, y: int, level: int, w: int, h: int, reduction: int) -> np.ndarray:
        rgb = self._decode_directly(x, y, level, w, h, reduction)
        if rgb is not None:
            return rgb
        # Not decodable at that size (or a bad tile): read in full and shrink, as OpenSlide would.
        ds = self.level_downsamples[level] * reduction
        rx, ry = round(x / ds), round(y / ds)
        full = self._read_region(
            round(rx * ds), round(ry * ds), level, int(w) * reduction, int(h) * reduction
        )
        return resample.area_downscale(full, (int(w), int(h)))

    def _decode_directly(
        self, x: int, y: int, level: int, w: int, h: int, reduction: int = 1
    ) -> np.ndarray | None:
        """The region from Delineo's own JPEG tile decoder, or None where it does not apply.

        Requests made on a level's own pixel grid (the viewer's tiles, the pipeline's) come as
        level-0 positions rounded from it, and a level's downsample is rarely a whole number
        (Aperio's 4.0002): the level pixel within a level-0 pixel of it is taken. A full-size
        read between level pixels is left to OpenSlide, which interpolates; a reduced read
        takes the nearest pixel (there is no OpenSlide equivalent to match)."""
        if self._direct is None:
            return None
        ds = self.level_downsamples[level] * reduction
        lx, ly = round(x / ds), round(y / ds)
        if reduction == 1 and (abs(lx * ds - x) > 1 or abs(ly * ds - y) > 1):
            return None
        try:
            return self._direct.read(level, lx, ly, int(w), int(h), reduction)
        except Exception as e:  # noqa: BLE001 - the caller reads it another way (and reports errors)
            log.debug("%s: direct decoding failed at (%s, %s): %s", self.path, x, y, e)
            return None

    def _read_region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        rgb = self._decode_directly(x, y, level, w, h)
        if rgb is not None:
            return rgb
        error: Exception | None = None
        for _ in range(2):  # a second try on a fresh handle, see _recover
            handle = self._h
            try:
                if self._lock is None:
                    rgba = handle.read_region((int(x), int(y)), level, (int(w), int(h)))
                else:
                    with self._lock:
                        rgba = handle.read_region((int(x), int(y)), level, (int(w), int(h)))
                return _rgba_on_white(rgba, self._ycbcr_frames)
            except openslide.OpenSlideError as e:
                error = e
                self._recover(handle)
            except OSError as e:
                error = e
                break
        raise SlideError(f"{self.path}: a tile could not be read ({error})") from None

    def _recover(self, failed: openslide.AbstractSlide) -> None:
        """OpenSlide errors are sticky: after one bad tile every later read on that handle fails.
        Swap in a fresh handle so the rest of the slide stays readable. The old one may still be
        in use by another thread, so it is closed with the slide, not now."""
        with self._reopen_lock:
            if self._h is not failed:
                return  # another thread already replaced it
            try:
                self._h = openslide.OpenSlide(str(self.path))
            except openslide.OpenSlideError:
                return
            self._retired.append(failed)

    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        """RGB uint8, the whole slide fitted in max_side, read from the coarsest useful level."""
        w, h = self.dimensions
        ds = max(w, h) / max_side
        level = self.best_level_for_downsample(max(ds, 1.0))
        lw, lh = self.level_dimensions[level]
        img = self.read_region(0, 0, level, lw, lh)
        scale = min(1.0, max_side / max(lw, lh))
        if scale < 1.0:
            size = (max(1, round(lw * scale)), max(1, round(lh * scale)))
            img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))
        return img

    def thumbnail_with_gaps(self, max_side: int = 1024, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """As `thumbnail`, read block by block so that unreadable tiles do not fail it: the RGB
        image (unreadable blocks white) and a bool mask of the unreadable pixels."""
        w, h = self.dimensions
        level = self.best_level_for_downsample(max(max(w, h) / max_side, 1.0))
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        img = np.full((lh, lw, 3), 255, np.uint8)
        gaps = np.zeros((lh, lw), np.uint8)
        for y in range(0, lh, block):
            for x in range(0, lw, block):
                bw, bh = min(block, lw - x), min(block, lh - y)
                try:
                    img[y : y + bh, x : x + bw] = self.read_region(
                        round(x * ds), round(y * ds), level, bw, bh
                    )
                except SlideError as e:
                    log.info("%s: level %d block at (%d, %d) unreadable: %s", self.path, level, x, y, e)
                    gaps[y : y + bh, x : x + bw] = 1
        scale = min(1.0, max_side / max(lw, lh))
        if scale < 1.0:
            size = (max(1, round(lw * scale)), max(1, round(lh * scale)))
            img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))
            gaps = resample.nearest(gaps, size)
        return img, gaps.astype(bool)

    def associated_image(self, name: str) -> np.ndarray:
        with self._reading():
            return self._associated_image(name)

    def _associated_image(self, name: str) -> np.ndarray:
        try:
            return _rgba_on_white(self._h.associated_images[name])
        except KeyError:
            raise SlideError(f"{self.path}: no associated image '{name}'") from None
        except openslide.OpenSlideError as e:
            raise SlideError(f"{self.path}: associated image '{name}' unreadable ({e})") from None

    def properties(self) -> dict[str, str]:
        return dict(self._h.properties)

    def info(self) -> dict:
        """The fields `delineo info --json` prints, exactly."""
        return {
            "path": str(self.path),
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": self.level_downsamples,
            "mpp": list(self.mpp) if self.mpp else None,
            "objective_power": self.objective_power,
            "associated_images": self.associated_image_names,
            "bounds": list(self.bounds) if self.bounds else None,
        }


@contextlib.contextmanager
def _our_own_size_limit():
    """Pillow's bomb check off while MAX_PLAIN_IMAGE_PIXELS, checked before decoding, rules."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _open_plain_image(p: Path) -> openslide.ImageSlide:
    try:
        with _our_own_size_limit(), Image.open(p) as im:
            w, h = im.size
            if w * h > MAX_PLAIN_IMAGE_PIXELS:
                raise SlideError(
                    f"{p}: a {w}x{h} plain image is more than the {MAX_PLAIN_IMAGE_PIXELS / 1e6:.0f} M "
                    "pixels Delineo opens whole; convert it to a tiled pyramidal TIFF (e.g. with vips "
                    "tiffsave --pyramid --tile)"
                )
            im.load()  # surfaces truncation now rather than at the first tile
    except SlideError:
        raise
    except Image.DecompressionBombError:
        raise SlideError(
            f"{p}: a plain image of more than {MAX_PLAIN_IMAGE_PIXELS / 1e6:.0f} M pixels is too large to "
            "open whole; convert it to a tiled pyramidal TIFF (e.g. with vips tiffsave --pyramid --tile)"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = str(e)
        if "cannot identify image file" in reason:
            reason = "not a slide or an image Delineo can read"
        elif "truncated" in reason.lower():
            reason = "the file is truncated (incomplete download or copy?)"
        raise SlideError(f"{p}: {reason}") from None
    with _our_own_size_limit():
        return openslide.ImageSlide(str(p))


def _rgba_on_white(img: Image.Image, ycbcr: bool = False) -> np.ndarray:
    if img.mode != "RGBA":
        return np.asarray(img.convert("RGB"))
    a = np.asarray(img)
    if not ycbcr and a[..., 3].min() == 255:  # fully opaque, the usual tissue tile: no compositing
        return np.ascontiguousarray(a[..., :3])
    colour = a[..., :3]
    if ycbcr:
        colour = _ycbcr_to_rgb(colour)
        colour = np.where(a[..., 3:4] > 0, colour, 0)
    alpha = a[..., 3:4].astype(np.uint16)
    # OpenSlide returns premultiplied alpha: composite on white by adding the missing light.
    rgb = colour.astype(np.uint16) + (255 - alpha)
    return np.minimum(rgb, 255).astype(np.uint8)


def _ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """JPEG's full-range BT.601 YCbCr (uint8 Y, Cb, Cr) to RGB: OpenSlide hands over the
    components of such a tile undecoded."""
    y, cb, cr = (ycc[..., c].astype(np.float32) for c in range(3))
    cb -= 128.0
    cr -= 128.0
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _missing_levels(path: Path, dims: list[tuple[int, int]]) -> list[str]:
    """A DICOM series is one file per level and OpenSlide opens whatever files are there, so a
    missing file only shows as a gap: one step of the pyramid twice (or more) the others."""
    steps = [a[0] / max(1, b[0]) for a, b in itertools.pairwise(dims)]
    if len(steps) < 2:
        return []
    usual = float(np.median(steps))
    return [
        f"{path.parent}: the DICOM series has no level between {a[0]} x {a[1]} and {b[0]} x {b[1]} px "
        f"while its other levels step by {usual:.3g}x; a file of the series is probably missing"
        for (a, b), step in zip(itertools.pairwise(dims), steps, strict=True)
        if step > 1.5 * usual
    ]


JPEG_BASELINE_SYNTAXES = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")


def _mislabelled_ycbcr_dicom(path: Path, props) -> bool:
    """True for a DICOM whose header says RGB while its JPEG frames are YCbCr (a known
    converter defect that OpenSlide faithfully reproduces as wrong colours)."""
    if props.get("dicom.PhotometricInterpretation") != "RGB":
        return False
    if props.get("dicom.TransferSyntaxUID") not in JPEG_BASELINE_SYNTAXES:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4 << 20)
    except OSError:
        return False
    return jpeg_colour_space(head) == "ycbcr"


def _looks_like_a_slide(p: Path) -> bool:
    """The file begins as a slide format does (or is one whose named file is a text index)."""
    if p.suffix.lower() in INDEX_SUFFIXES:
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return True  # unreadable now: say what a failed read usually means
    return head.startswith(SLIDE_MAGIC) or head[128:132] == b"DICM"


def _size(p: Path) -> str:
    n = p.stat().st_size
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} bytes"


def _float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f > 0 else None


def _mpp(props) -> tuple[float, float] | None:
    x = _float(props.get(openslide.PROPERTY_NAME_MPP_X))
    y = _float(props.get(openslide.PROPERTY_NAME_MPP_Y))
    if x is None and y is None:
        return None
    return (x or y, y or x)


def _bounds(props) -> tuple[int, int, int, int] | None:
    keys = (
        openslide.PROPERTY_NAME_BOUNDS_X,
        openslide.PROPERTY_NAME_BOUNDS_Y,
        openslide.PROPERTY_NAME_BOUNDS_WIDTH,
        openslide.PROPERTY_NAME_BOUNDS_HEIGHT,
    )
    vals = [props.get(k) for k in keys]
    if any(v is None for v in vals):
        return None
    return tuple(int(v) for v in vals)
