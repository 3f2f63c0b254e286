"""`delineo annotations`: per-class counts and union areas of a slide's saved annotations."""

from __future__ import annotations

import argparse
import json
import sys

from app.cli.arguments import UsageError


def add_to(sub) -> None:
    a = sub.add_parser("annotations", help="per-class counts and areas of a slide's saved annotations")
    a.add_argument("slide")
    a.add_argument("--json", action="store_true")
    a.set_defaults(run=run)


def summary(slide_path: str) -> dict:
    """The figures `delineo annotations` prints: `class_totals` of the saved annotations
    (areas of the union per class), and how many are proposed, accepted and locked."""
    from app.core.annotation_edits import class_totals
    from app.core.annotation_store import AnnotationStore
    from app.core.slide import Slide
    from app.logs import data_dir

    with Slide.open(slide_path) as slide:
        offset = tuple(slide.bounds[:2]) if slide.bounds else (0, 0)
        slide_mpp = float(sum(slide.mpp) / 2) if slide.mpp else None
        store = AnnotationStore(slide.path, data_dir(), slide_mpp, offset)
        found = store.existing()
        if found is None:
            raise UsageError(f"{slide.path}: no saved annotations (looked for {store.path})")
        state = store.load()
    mpp = slide_mpp or state.mpp
    anns = state.annotations
    return {
        "slide": str(slide.path),
        "file": str(found),
        "mpp": mpp,
        "mpp_set_by_user": slide_mpp is None and state.mpp is not None,
        "annotations": len(anns),
        "review": {s: sum(a.review == s for a in anns) for s in ("proposed", "accepted")},
        "locked": sum(a.locked for a in anns),
        "classes": [
            {
                "class": t.cls,
                "color": list(t.color),
                "count": t.count,
                "area_um2": t.area_um2,
                "area_px": t.area_px,
            }
            for t in class_totals(anns, mpp)
        ],
        "notes": state.notes,
    }


def run(args: argparse.Namespace) -> int:
    s = summary(args.slide)
    if args.json:
        print(json.dumps(s, indent=2, ensure_ascii=False))
        return 0
    for note in s["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"{s['file']}: {s['annotations']} annotation(s)")
    rows = [("class", "count", "area (union)")]
    for c in s["classes"]:
        area = f"{c['area_um2'] / 1e6:.4f} mm²" if c["area_um2"] is not None else f"{c['area_px']:,.0f} px²"
        rows.append((c["class"], str(c["count"]), area))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"  {r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}")
    review = s["review"]
    print(f"review: {review['proposed']} proposed, {review['accepted']} accepted; {s['locked']} locked")
    if s["mpp"] is None:
        print("the slide records no pixel size: areas are in level-0 px²")
    elif s["mpp_set_by_user"]:
        print(f"areas use the pixel size set for this slide, {s['mpp']:g} µm/px")
    return 0
