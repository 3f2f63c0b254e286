"""summary.csv: one row per slide, rewritten whole (atomically) as each slide finishes, so a
killed batch keeps every finished row and a re-run knows what is done."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from app.batch.slides import slide_stem
from app.core.annotations import write_text_atomic

SUMMARY_NAME = "summary.csv"
AREA_PREFIX = "area_um2_"
STATUSES = ("ok", "failed", "skipped")


@dataclass
class SlideResult:
    """What one slide's task returns, and one row of summary.csv."""

    slide: str
    geojson: str  # the output's file name in the batch folder (its column is empty unless ok)
    status: str  # ok | failed | skipped
    tiles_run: int = 0
    areas_um2: dict[str, float | None] = field(default_factory=dict)  # class -> area (None: no mpp)
    seconds: float = 0.0
    error: str = ""
    notes: str = ""  # what the run noticed on a slide that still finished (no pixel size, ...)


class Summary:
    """The rows of a batch folder's summary.csv (sorted by slide), this run's and earlier runs'."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / SUMMARY_NAME
        self.rows: dict[str, SlideResult] = {}  # by output name
        if self.path.is_file():
            self._read()

    def is_done(self, geojson: str) -> bool:
        """Finished in an earlier run: the summary says ok and the GeoJSON is still there."""
        row = self.rows.get(geojson)
        return row is not None and row.status == "ok" and (self.path.parent / geojson).is_file()

    def has_results(self) -> bool:
        """Some slide is done: its row says ok and its GeoJSON is there."""
        return any(self.is_done(name) for name in self.rows)

    def clear(self) -> None:
        """Forget every earlier row (--redo): the next write holds this run's rows only."""
        self.rows.clear()

    def record(self, result: SlideResult) -> None:
        self.rows[result.geojson] = result
        self.write()

    def classes(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.rows.values():
            seen.update(dict.fromkeys(r.areas_um2))
        return list(seen)

    def write(self) -> None:
        classes = self.classes()
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(
            [
                "slide",
                "status",
                "tiles_run",
                *(AREA_PREFIX + c for c in classes),
                "seconds",
                "geojson",
                "error",
                "notes",
            ]
        )
        for r in sorted(self.rows.values(), key=lambda r: r.slide):
            areas = [_number(r.areas_um2.get(c)) if r.status == "ok" else "" for c in classes]
            w.writerow(
                [
                    r.slide,
                    r.status,
                    r.tiles_run,
                    *areas,
                    f"{r.seconds:.1f}",
                    r.geojson if r.status == "ok" else "",  # a failed or skipped slide wrote none
                    r.error,
                    r.notes,
                ]
            )
        write_text_atomic(self.path, buf.getvalue())

    def _read(self) -> None:
        with open(self.path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                # A failed or skipped row names no GeoJSON: its output name is the slide's.
                name = row.get("geojson") or (
                    f"{slide_stem(Path(row['slide']))}.geojson" if row.get("slide") else ""
                )
                if not name or row.get("status") not in STATUSES:
                    continue  # not a row this program wrote: ignored, and dropped on the next write
                areas = {
                    k[len(AREA_PREFIX) :]: _float(v)
                    for k, v in row.items()
                    if k and k.startswith(AREA_PREFIX) and v not in (None, "")
                }
                self.rows[name] = SlideResult(
                    slide=row.get("slide") or "",
                    geojson=name,
                    status=row["status"],
                    tiles_run=int(_float(row.get("tiles_run")) or 0),
                    areas_um2=areas,
                    seconds=_float(row.get("seconds")) or 0.0,
                    error=row.get("error") or "",
                    notes=row.get("notes") or "",
                )


def _number(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}"


def _float(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
