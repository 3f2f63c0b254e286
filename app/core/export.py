"""Exports other tools read: QuPath GeoJSON, ASAP XML, a report PNG, a pyramidal TIFF mask and a
CSV of measurements (the ASAP likelihood map, written as a run goes: `likelihood_map`).

Every writer is atomic: output goes to a temporary file in the target folder and is renamed into
place only when complete, so an export that fails (full disk, unwritable folder) leaves no
partial file. Failures raise `ExportError` naming the path.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from shapely.geometry import Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.strtree import STRtree

from app.core.annotation_edits import class_totals
from app.core.annotations import Annotation, to_feature_collection, write_json_atomic
from app.core.file_modes import make_ordinary
from app.core.geometry import area_um2, perimeter_um, polygonal
from app.core.pyramid_tiff import level_sizes, write_pyramidal_tiff
from app.core.scale import format_length_um, nice_length
from app.core.slide import Slide
from app.errors import DelineoError
from app.paths import FONTS_DIR

EXCLUSION_GROUP = "Exclusion"  # ASAP/CAMELYON convention for holes inside an annotation
MAX_PNG_SIDE = 16_384
MAX_MASK_PIXELS = 1 << 32  # level 0 of a 65 000 px square slide; finer takes hours and says nothing more


class ExportError(DelineoError):
    pass


@contextlib.contextmanager
def atomic_output(path: str | Path, binary: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place on success, delete on failure."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ExportError(f"{path}: folder {path.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as e:
        raise ExportError(f"{path}: cannot write here ({e.strerror or e}); choose another folder") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        make_ordinary(tmp)  # mkstemp's 0600 would follow the rename
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{path}: writing failed ({e.strerror or e}); nothing was written") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def clip(annotations: list[Annotation], region: BaseGeometry | None) -> list[Annotation]:
    """Annotations cut to a region (all of them when region is None)."""
    if region is None:
        return list(annotations)
    out = []
    for a in annotations:
        g = polygonal(a.geometry.intersection(region))
        if not g.is_empty:
            out.append(dataclasses.replace(a, geometry=g))
    return out


# ------------------------------------------------------------------------------- vector formats


def export_geojson(path, annotations: list[Annotation], mpp: float | None, offset=(0, 0)) -> Path:
    try:
        return write_json_atomic(path, to_feature_collection(annotations, mpp, offset))
    except OSError as e:
        raise ExportError(f"{path}: cannot write here ({e.strerror or e})") from None


def _hex(c) -> str:
    return "#{:02X}{:02X}{:02X}".format(*c)


def asap_xml(annotations: list[Annotation], offset=(0, 0)) -> bytes:
    """ASAP_Annotations: one Polygon per outer ring; holes as polygons of the Exclusion group.
    Every PartOfGroup names a group defined under AnnotationGroups (ASAP rejects the file
    otherwise)."""
    root = ET.Element("ASAP_Annotations")
    anns = ET.SubElement(root, "Annotations")
    groups: dict[str, tuple[int, int, int]] = {}
    ox, oy = offset
    n = 0

    def add(ring, name: str, group: str, colour) -> None:
        nonlocal n
        el = ET.SubElement(
            anns, "Annotation", Name=name, Type="Polygon", PartOfGroup=group, Color=_hex(colour)
        )
        coords = ET.SubElement(el, "Coordinates")
        pts = list(ring.coords)[:-1]  # ASAP closes polygons itself
        for i, (x, y) in enumerate(pts):
            ET.SubElement(coords, "Coordinate", Order=str(i), X=f"{x - ox:.2f}", Y=f"{y - oy:.2f}")
        n += 1

    for a in annotations:
        groups.setdefault(a.cls, a.color)
        for k, poly in enumerate(getattr(a.geometry, "geoms", [a.geometry])):
            if not isinstance(poly, Polygon):
                continue
            add(poly.exterior, f"{a.name or a.cls} {a.id[:8]}-{k}", a.cls, a.color)
            for h, hole in enumerate(poly.interiors):
                groups.setdefault(EXCLUSION_GROUP, (0, 0, 0))
                add(hole, f"hole {a.id[:8]}-{k}-{h}", EXCLUSION_GROUP, (0, 0, 0))
    groups_el = ET.SubElement(root, "AnnotationGroups")
    for name, colour in groups.items():
        g = ET.SubElement(groups_el, "Group", Name=name, PartOfGroup="None", Color=_hex(colour))
        ET.SubElement(g, "Attributes")
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def export_asap_xml(path, annotations: list[Annotation], offset=(0, 0)) -> Path:
    data = asap_xml(annotations, offset)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


CSV_COLUMNS = (
    "row",
    "id",
    "class",
    "area_um2",
    "perimeter_um",
    "centroid_x_px",
    "centroid_y_px",
    "centroid_x_um",
    "centroid_y_um",
    "count",
    "area_px",
    "origin",
    "review",
    "locked",
    "source",
)


def export_csv(path, annotations: list[Annotation], mpp: float | None) -> Path:
    """One row per annotation ("row" = "annotation"), then one per class ("class total") whose
    area is that of the class's union, the same figure as the panel and the PNG legend."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS)
    w.writeheader()
    for a in annotations:
        c = a.geometry.centroid
        a2, p = area_um2(a.geometry, mpp), perimeter_um(a.geometry, mpp)
        w.writerow(
            {
                "row": "annotation",
                "id": a.id,
                "class": a.cls,
                "area_um2": "" if a2 is None else f"{a2:.2f}",
                "perimeter_um": "" if p is None else f"{p:.2f}",
                "centroid_x_px": f"{c.x:.2f}",
                "centroid_y_px": f"{c.y:.2f}",
                "centroid_x_um": "" if mpp is None else f"{c.x * mpp:.2f}",
                "centroid_y_um": "" if mpp is None else f"{c.y * mpp:.2f}",
                "count": 1,
                "area_px": f"{a.geometry.area:.1f}",
                "origin": a.provenance.origin + (" (edited)" if a.provenance.edited else ""),
                "review": a.review,
                "locked": "yes" if a.locked else "no",
                "source": a.source,
            }
        )
    for t in class_totals(annotations, mpp):
        w.writerow(
            {
                "row": "class total",
                "class": t.cls,
                "area_um2": "" if t.area_um2 is None else f"{t.area_um2:.2f}",
                "count": t.count,
                "area_px": f"{t.area_px:.1f}",
            }
        )
    with atomic_output(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    return Path(path)


# ------------------------------------------------------------------------------- rasters


FONT_CANDIDATES = (
    str(
        FONTS_DIR / "DejaVuSans.ttf"
    ),  # shipped (resources/fonts), so every OS and the frozen app draw µ and ²
    "DejaVuSans.ttf",  # Linux (Pillow finds it in the system font folders)
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "LiberationSans-Regular.ttf",
    "arial.ttf",  # Windows
    "/System/Library/Fonts/Helvetica.ttc",  # macOS
    "/Library/Fonts/Arial.ttf",
)


def _font(size: int):
    """A TrueType font with µ and ², or Pillow's built-in one (then labels fall back to ASCII)."""
    for name in FONT_CANDIDATES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _text(font, text: str) -> str:
    """Replace µ and ² when the font cannot draw them."""
    if isinstance(font, ImageFont.FreeTypeFont) and "Aileron" not in " ".join(font.getname()):
        return text
    return text.replace("µm", "um").replace("mm²", "mm2").replace("px²", "px2")


def render_png(
    slide: Slide,
    annotations: list[Annotation],
    region: tuple[float, float, float, float] | None = None,
    mpp: float | None = None,
    fill_alpha: int = 70,
) -> Image.Image:
    """The region at `mpp` µm/px (default: fit in 2048 px) with outlines and translucent fills
    burned in, a scale bar and a legend: a picture for a report."""
    W, H = slide.dimensions
    x, y, w, h = region or (0, 0, W, H)
    slide_mpp = float(np.mean(slide.mpp)) if slide.mpp else None
    if mpp is None:
        ds = max(w, h) / 2048 if max(w, h) > 2048 else 1.0
    else:
        ds = mpp / slide_mpp if slide_mpp else mpp
    out_w, out_h = max(1, round(w / ds)), max(1, round(h / ds))
    if max(out_w, out_h) > MAX_PNG_SIDE:
        raise ExportError(
            f"a {out_w}x{out_h} px picture is too large; choose a larger --mpp or a smaller --region"
        )
    level = slide.best_level_for_downsample(ds)
    lds = slide.level_downsamples[level]
    rgb = slide.read_region(round(x), round(y), level, max(1, round(w / lds)), max(1, round(h / lds)))
    img = Image.fromarray(rgb).resize((out_w, out_h), Image.Resampling.LANCZOS).convert("RGBA")
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    line = max(2, round(min(out_w, out_h) / 400))

    def px(coords):
        return [((cx - x) / ds, (cy - y) / ds) for cx, cy in coords]

    view = box(x, y, x + w, y + h)
    for a in clip(annotations, view):
        for poly in getattr(a.geometry, "geoms", [a.geometry]):
            if not isinstance(poly, Polygon):
                continue
            # Fill the polygon minus its holes on a mask, so holes stay clear.
            mask = Image.new("L", img.size, 0)
            md = ImageDraw.Draw(mask)
            md.polygon(px(poly.exterior.coords), fill=fill_alpha)
            for hole in poly.interiors:
                md.polygon(px(hole.coords), fill=0)
            colour = Image.new("RGBA", img.size, (*a.color, 0))
            colour.putalpha(mask)
            layer = Image.alpha_composite(layer, colour)
            draw = ImageDraw.Draw(layer)
            draw.line(px(poly.exterior.coords), fill=(*a.color, 255), width=line, joint="curve")
            for hole in poly.interiors:
                draw.line(px(hole.coords), fill=(*a.color, 255), width=line, joint="curve")
    img = Image.alpha_composite(img, layer)
    _scale_bar_and_legend(img, ds, slide_mpp, annotations, view)
    return img.convert("RGB")


def _scale_bar_and_legend(img: Image.Image, ds: float, slide_mpp, annotations, view) -> None:
    draw = ImageDraw.Draw(img)
    size = max(12, img.width // 60)
    font = _font(size)
    pad = size // 2
    # Scale bar, bottom left.
    if slide_mpp:
        um_per_px = ds * slide_mpp
        length_um = nice_length(img.width / 5 * um_per_px)
        bar_px, label = length_um / um_per_px, format_length_um(length_um)
    else:
        length = nice_length(img.width / 5 * ds)
        bar_px, label = length / ds, f"{length:g} px"
    x0, y0 = pad * 2, img.height - pad * 2 - size
    draw.rectangle(
        [x0 - pad, y0 - size - pad, x0 + bar_px + pad, img.height - pad], fill=(255, 255, 255, 220)
    )
    draw.rectangle([x0, y0, x0 + bar_px, y0 + max(3, size // 4)], fill=(20, 20, 20, 255))
    draw.text((x0, y0 - size - pad // 2), _text(font, label), fill=(20, 20, 20, 255), font=font)
    # Legend, top right: each class with the area of its union inside the picture.
    totals = class_totals(clip(annotations, view), None)
    if not totals:
        return
    lines = []
    for t in totals:
        area = t.area_px
        text = f"{t.cls}: {area * slide_mpp**2 / 1e6:.3f} mm²" if slide_mpp else f"{t.cls}: {area:,.0f} px²"
        lines.append((t.color, _text(font, text)))
    width = max(draw.textlength(t, font=font) for _, t in lines) + size * 2 + pad * 3
    height = len(lines) * (size + pad) + pad
    lx = img.width - width - pad
    draw.rectangle([lx, pad, img.width - pad, pad + height], fill=(255, 255, 255, 220))
    for i, (colour, text) in enumerate(lines):
        ty = pad * 2 + i * (size + pad)
        draw.rectangle([lx + pad, ty, lx + pad + size, ty + size], fill=(*colour, 255))
        draw.text((lx + pad * 2 + size, ty - 1), text, fill=(20, 20, 20, 255), font=font)


def export_png(path, slide: Slide, annotations, region=None, mpp=None) -> Path:
    img = render_png(slide, annotations, region, mpp)
    with atomic_output(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def class_indices(annotations: list[Annotation]) -> dict[str, int]:
    """Label values of the mask: Tumor is 1 when present; other classes follow in order."""
    names = sorted({a.cls for a in annotations}, key=lambda c: (c != "Tumor", c))
    return {c: i + 1 for i, c in enumerate(names)}


def export_tiff_mask(path, slide: Slide, annotations: list[Annotation], mpp: float | None = None) -> Path:
    """A whole-slide label mask (uint8, 0 = background, 1.. = classes) as a lossless pyramidal
    TIFF at `mpp` µm/px. Tiles are rasterized from the polygons one by one, so a mask of a
    100k-pixel slide never exists whole in memory."""
    W, H = slide.dimensions
    slide_mpp = float(np.mean(slide.mpp)) if slide.mpp else None
    ds = (mpp / slide_mpp if slide_mpp else mpp) if mpp else 4.0
    if not ds > 0 or not math.isfinite(ds):
        raise ExportError("--mpp must be a positive number")
    mw, mh = math.ceil(W / ds), math.ceil(H / ds)
    if mw * mh > MAX_MASK_PIXELS:
        sane = max(1.0, math.sqrt(W * H / MAX_MASK_PIXELS)) * (slide_mpp or 1.0)
        raise ExportError(
            f"{path}: a {mw:,} x {mh:,} px mask at --mpp {mpp:g} is larger than the {MAX_MASK_PIXELS:,} px "
            f"Delineo writes; use --mpp {math.ceil(sane * 1000) / 1000:g} or larger"
        )
    sizes = level_sizes(max(1, mw), max(1, mh), 2, 256)
    labels = class_indices(annotations)
    geoms = [a.geometry for a in annotations]
    values = [labels[a.cls] for a in annotations]
    tree = STRtree(geoms) if geoms else None

    def source(level: int, tx: int, ty: int, tw: int, th: int) -> np.ndarray:
        s = W / sizes[level][0]  # level-0 px per mask px at this level
        out = np.zeros((th, tw), np.uint8)
        if tree is None:
            return out
        x0, y0 = tx * s, ty * s
        for i in tree.query(box(x0, y0, x0 + tw * s, y0 + th * s)):
            _fill(out, geoms[i], values[i], s, (x0, y0))
        return out

    out_mpp = ds * slide_mpp if slide_mpp else None
    with atomic_output(path) as tmp:
        write_pyramidal_tiff(tmp, source, sizes, channels=1, compression="zlib", mpp=out_mpp, atomic=False)
    return Path(path)


def _fill(out: np.ndarray, geom: BaseGeometry, value: int, scale: float, origin) -> None:
    from app.core.geometry import rasterize

    m = rasterize(geom, out.shape, scale, origin)
    out[m] = value


def outside_slide(annotations: list[Annotation], slide: Slide) -> list[Annotation]:
    W, H = slide.dimensions
    bounds = box(0, 0, W, H)
    return [a for a in annotations if not bounds.contains(a.geometry)]
