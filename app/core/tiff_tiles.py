"""Direct tile decoding for tiled JPEG TIFFs (Aperio SVS, generic tiled TIFF).

OpenSlide spends most of a large region read outside the JPEG decoder (compositing through
ARGB, premultiplied alpha, its tile cache): a 1027² region of the CMU-1 sample takes 26 ms
through OpenSlide, ~5 ms decoding the same tiles with libjpeg-turbo (imagecodecs, via
tifffile), pixel for pixel the same where OpenSlide starts on a level pixel (off the grid of a
level whose downsample is not whole, it interpolates). The pipeline reads such a region for
every model tile, so it decodes the tiles itself. Neighbouring model tiles overlap and share
JPEG tiles at their edges, so decoded tiles are kept in a small LRU.

Each level can also be decoded at 1/2, 1/4 or 1/8 size by libjpeg's DCT scaling (through
Pillow's JPEG decoder): fewer pixels to convert and nothing to resize. To the pipeline these are levels the
slide does not store: a 20x scan (0.5 µm/px, levels at 4x steps) has its 1 µm/px level after all.
Anything unusual (another compression, planar data, a page whose size does not match the level)
is left to OpenSlide.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from app.core.jpeg_markers import jpeg_frame_size
from app.core.lru_cache import ByteLRU

log = logging.getLogger(__name__)

JPEG = 7  # TIFF compression tag value
DECODED_CACHE_BYTES = 48 * 2**20
REDUCTIONS = (2, 4, 8)  # the DCT scalings libjpeg decodes at


def _adobe_marker(transform: int) -> bytes:
    """An APP14 "Adobe" segment: it tells libjpeg the components' colour space. TIFF says it in
    PhotometricInterpretation instead, and libjpeg would guess YCbCr for an Aperio RGB tile."""
    return b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00" + bytes([transform])


class JpegTiffLevels:
    def __init__(self, path: Path, pages: dict[int, object], tiff):
        self.path = path
        self.pages = pages  # level -> tifffile page
        self._tiff = tiff
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._file_lock = threading.Lock()  # seek + read; decoding runs outside it
        self.decoded = ByteLRU(DECODED_CACHE_BYTES)

    @classmethod
    def probe(cls, path: str | Path, level_dimensions: list[tuple[int, int]]) -> JpegTiffLevels | None:
        """The levels this decoder can read exactly as OpenSlide would, or None."""
        import tifffile

        try:
            tiff = tifffile.TiffFile(path)
        except Exception:  # noqa: BLE001 - not a TIFF tifffile reads: OpenSlide does it all
            return None
        try:
            pages = {}
            for level, size in enumerate(level_dimensions):
                page = next((p for p in tiff.pages if _plain_jpeg_tiles(p, size)), None)
                if page is not None:
                    _ = page.decode  # tifffile builds the decoder lazily: once, here, not racing
                    pages[level] = page
            if pages:
                return cls(Path(path), pages, tiff)
        except Exception:
            log.debug("%s: not decoded directly", path, exc_info=True)
        tiff.close()
        return None

    def reductions(self, level: int) -> tuple[int, ...]:
        """The sizes (1 = full, 2 = half, ...) this level can be decoded at."""
        page = self.pages.get(level)
        if page is None:
            return ()
        return (1, *(f for f in REDUCTIONS if page.tilewidth % f == 0 and page.tilelength % f == 0))

    def read(self, level: int, x: int, y: int, w: int, h: int, reduction: int = 1) -> np.ndarray | None:
        """RGB (h, w, 3) from (x, y) of `level` decoded at 1/`reduction` size (all in those
        pixels); white outside the image. None when this level or size is not one this decodes."""
        page = self.pages.get(level)
        if page is None or reduction not in self.reductions(level):
            return None
        tw, th = page.tilewidth // reduction, page.tilelength // reduction
        iw, ih = -(-page.imagewidth // reduction), -(-page.imagelength // reduction)
        across = -(-page.imagewidth // page.tilewidth)
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, iw), min(y + h, ih)
        if x0 >= x1 or y0 >= y1:
            return out
        for row in range(y0 // th, (y1 - 1) // th + 1):
            for col in range(x0 // tw, (x1 - 1) // tw + 1):
                tile = self._tile(level, page, row * across + col, reduction)
                if tile is None:
                    continue  # a tile never written: background
                tx, ty = col * tw, row * th
                sx0, sy0 = max(x0, tx), max(y0, ty)
                sx1, sy1 = min(x1, tx + tw), min(y1, ty + th)
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx, :3]
        return out

    def _tile(self, level: int, page, index: int, factor: int) -> np.ndarray | None:
        key = (level, index, factor)
        tile = self.decoded.get(key)
        if tile is not None:
            return tile
        count = page.databytecounts[index]
        if count == 0:
            return None
        with self._file_lock:
            self._file.seek(page.dataoffsets[index])
            data = self._file.read(count)
        if factor == 1:
            tile = page.decode(data, index, jpegtables=page.jpegtables)[0][0]
        else:
            tile = _decode_reduced(data, page.jpegtables, page.photometric, factor)
            if tile.shape[:2] != (page.tilelength // factor, page.tilewidth // factor):
                raise ValueError(f"reduced tile {index} decoded as {tile.shape}")
        tile.flags.writeable = False  # shared by every read that needs it
        self.decoded.put(key, tile, tile.nbytes)
        return tile

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._tiff.close()
            self.decoded.clear()


def _decode_reduced(data: bytes, tables: bytes | None, photometric: int, factor: int) -> np.ndarray:
    """One abbreviated TIFF JPEG tile, completed with the page's tables and its colour space,
    decoded by libjpeg at 1/factor size."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG tile")
    stream = b"\xff\xd8" + _adobe_marker(0 if photometric == 2 else 1)
    if tables:
        stream += tables[2:-2]  # the tables' own SOI and EOI dropped
    stream += data[2:]
    size = jpeg_frame_size(data)
    if size is None:
        raise ValueError("the tile has no JPEG frame header")
    want = (-(-size[0] // factor), -(-size[1] // factor))
    # Pillow's JPEG decoder straight on the stream (rawmode RGB, the colour space left to
    # libjpeg, which reads the Adobe marker, DCT scaling 1/factor): Image.open would parse the
    # tables in Python first, which doubled the time of a small tile.
    try:
        im = Image.frombytes("RGB", want, stream, "jpeg", "RGB", "", factor, 0)
    except (OSError, ValueError) as e:
        raise ValueError(f"libjpeg could not decode the tile at 1/{factor}: {e}") from None
    return np.asarray(im)


def _plain_jpeg_tiles(page, size: tuple[int, int]) -> bool:
    """A tiled, interleaved 8-bit RGB/YCbCr JPEG page of this size."""
    return (
        page.is_tiled
        and page.compression == JPEG
        and page.photometric in (2, 6)  # RGB, YCbCr
        and page.planarconfig == 1
        and page.bitspersample == 8
        and page.samplesperpixel == 3
        and (page.imagewidth, page.imagelength) == tuple(size)
    )
