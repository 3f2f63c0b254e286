"""Read a JPEG stream's own colour-space markers.

Some DICOM converters store ordinary YCbCr JPEG frames but declare PhotometricInterpretation
RGB; OpenSlide trusts the DICOM header and skips the YCbCr->RGB transform, so the slide shows
salmon glass and cyan tissue. The JPEG's markers say what it really holds.
"""

from __future__ import annotations

SOI = b"\xff\xd8\xff"


def jpeg_colour_space(data: bytes) -> str | None:
    """'ycbcr', 'rgb' or None (no 3-component JPEG found) for the first JPEG in `data`.

    Follows libjpeg's rules: a JFIF marker means YCbCr; an Adobe marker's transform flag decides;
    component ids 'R','G','B' mean RGB; otherwise 3 components are YCbCr.
    """
    i = data.find(SOI)
    if i < 0:
        return None
    j = i + 2
    jfif = False
    adobe_transform: int | None = None
    while j + 4 <= len(data):
        if data[j] != 0xFF:
            return None
        marker = data[j + 1]
        length = int.from_bytes(data[j + 2 : j + 4], "big")
        seg = data[j + 4 : j + 2 + length]
        if marker == 0xE0 and seg.startswith(b"JFIF\x00"):
            jfif = True
        elif marker == 0xEE and seg.startswith(b"Adobe") and len(seg) >= 12:
            adobe_transform = seg[11]
        elif marker in (0xC0, 0xC1, 0xC2):  # start of frame: components follow
            ncomp = seg[5] if len(seg) > 5 else 0
            if ncomp != 3:
                return None
            ids = bytes(seg[6 + 3 * k] for k in range(3))
            if jfif:
                return "ycbcr"
            if adobe_transform is not None:
                return "ycbcr" if adobe_transform else "rgb"
            return "rgb" if ids == b"RGB" else "ycbcr"
        elif marker == 0xDA:
            return None
        j += 2 + length
    return None


def jpeg_frame_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame marker of a JPEG stream, or None."""
    j = 2 if data[:2] == b"\xff\xd8" else 0
    while j + 4 <= len(data):
        if data[j] != 0xFF:
            return None
        marker = data[j + 1]
        if marker == 0xFF:  # fill byte before a marker
            j += 1
            continue
        length = int.from_bytes(data[j + 2 : j + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2) and j + 9 <= len(data):
            return int.from_bytes(data[j + 7 : j + 9], "big"), int.from_bytes(data[j + 5 : j + 7], "big")
        if marker == 0xDA:
            return None
        j += 2 + length
    return None
