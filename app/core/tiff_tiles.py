"""Direct tile decoding for tiled JPEG TIFFs (Aperio SVS, generic tiled TIFF).

OpenSlide spends most of a large region read outside the JPEG decoder (compositing through
ARGB, premultiplied alpha, its tile cache): a 1027² region of the CMU-1 sample takes 26 ms
through OpenSlide, ~9 ms decoding the same tiles with libjpeg-turbo (imagecodecs, via
tifffile). The pipeline reads such regions for every tile when a slide must be resampled, so
for those reads this decodes the tiles itself. Neighbouring model tiles overlap and share
JPEG tiles at their edges, so decoded tiles are kept in a small LRU. Anything unusual (another
compression, planar data, a page whose size does not match the level) is left to OpenSlide.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from app.core.lru_cache import ByteLRU

log = logging.getLogger(__name__)

JPEG = 7  # TIFF compression tag value
DECODED_CACHE_BYTES = 48 * 2**20


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
        try:
            import tifffile

            tiff = tifffile.TiffFile(path)
        except Exception:  # noqa: BLE001 - not a TIFF tifffile reads: OpenSlide does it all
            return None
        pages = {}
        for level, (w, h) in enumerate(level_dimensions):
            for page in tiff.pages:
                if (
                    page.is_tiled
                    and page.compression == JPEG
                    and page.photometric in (2, 6)  # RGB, YCbCr
                    and page.planarconfig == 1
                    and page.bitspersample == 8
                    and page.samplesperpixel == 3
                    and (page.imagewidth, page.imagelength) == (w, h)
                ):
                    pages[level] = page
                    _ = page.decode  # tifffile builds the decoder lazily: once, here, not racing
                    break
        if not pages:
            tiff.close()
            return None
        return cls(Path(path), pages, tiff)

    def read(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray | None:
        """RGB (h, w, 3) at `level` from level pixel (lx, ly); white outside the image. None
        when this level is not one this decoder reads."""
        page = self.pages.get(level)
        if page is None:
            return None
        tw, th = page.tilewidth, page.tilelength
        iw, ih = page.imagewidth, page.imagelength
        across = -(-iw // tw)
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, iw), min(ly + h, ih)
        if x0 >= x1 or y0 >= y1:
            return out
        for row in range(y0 // th, (y1 - 1) // th + 1):
            for col in range(x0 // tw, (x1 - 1) // tw + 1):
                index = row * across + col
                tile = self._tile(level, page, index)
                if tile is None:
                    continue  # a tile never written: background
                tx, ty = col * tw, row * th
                sx0, sy0 = max(x0, tx), max(y0, ty)
                sx1, sy1 = min(x1, tx + tw), min(y1, ty + th)
                out[sy0 - ly : sy1 - ly, sx0 - lx : sx1 - lx] = tile[
                    sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx, :3
                ]
        return out

    def _tile(self, level: int, page, index: int) -> np.ndarray | None:
        tile = self.decoded.get((level, index))
        if tile is not None:
            return tile
        count = page.databytecounts[index]
        if count == 0:
            return None
        with self._file_lock:
            self._file.seek(page.dataoffsets[index])
            data = self._file.read(count)
        tile = page.decode(data, index, jpegtables=page.jpegtables)[0][0]
        tile.flags.writeable = False  # shared by every read that needs it
        self.decoded.put((level, index), tile, tile.nbytes)
        return tile

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._tiff.close()
            self.decoded.clear()
