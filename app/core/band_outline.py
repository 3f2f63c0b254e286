"""A run's outline made band by band, so a whole slide needs memory for a few bands only.

`BandBlender` hands each finished band of the class map here; it is decided (the model's
`ClassScheme`), traced and dropped. Parts that reach a band border stay open until the end,
when they are united with their neighbours' parts along the pixel edges they share and then
filtered and simplified like the rest: the same outline as tracing the whole map at once, but
for where a simplified vertex falls along a border.
"""

from __future__ import annotations

import numpy as np
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from app.core.class_scores import ClassScheme, threshold_level
from app.core.tracing import coarse, finish_open_parts, masked_map, region_mask, trace_band, within_region


class BandOutliner:
    """Collects the outline per class from bands of a class map (uint8 (C, rows, width), model
    pixels; canvas row 0 and column 0 at level-0 `offset`)."""

    def __init__(
        self,
        scheme: ClassScheme,
        threshold: float | None,
        region: BaseGeometry,
        level0_per_model: float,
        offset: tuple[float, float],
        canvas_rows: int,
        slide_mpp: float,
        factor: int,
        simplify_um: float,
        min_area_um2: float,
        min_hole_um2: float,
    ):
        self.scheme, self.threshold, self.region = scheme, threshold, region
        self.scale = level0_per_model * factor  # level-0 px per traced pixel
        self.offset, self.factor = offset, factor
        self.last_row = canvas_rows // factor  # corner row of the canvas's far edge
        px_per_um = 1.0 / slide_mpp
        self.simplify = simplify_um * px_per_um
        self.min_area = min_area_um2 * px_per_um**2
        self.min_hole = min_hole_um2 * px_per_um**2
        names = [c.name for c in scheme.foreground]
        self.closed: dict[str, list[Polygon]] = {n: [] for n in names}
        self.open: dict[str, list[Polygon]] = {n: [] for n in names}
        self._last: dict[tuple[str, int], np.ndarray] = {}  # (class, next band's top) -> a row

    def add_band(self, first_row: int, band: np.ndarray) -> None:
        """One finished band; `first_row` (a multiple of the factor) is its canvas row. The
        band above, when it came first (bands come in order on a row-major run), lends its last
        traced row, so pixels touching across the border are joined (and pinches bridged) as in
        a trace of the whole map; the parts then overlap by that row, and unite."""
        f = self.factor
        top = first_row // f
        ox, oy = self.offset
        inside = None
        for name, (prob, t) in self.scheme.layers(band, self.threshold).items():
            level = threshold_level(t)
            grid = coarse(prob, f)
            self._last[name, top + grid.shape[0]] = grid[-1:].copy()
            above = self._last.pop((name, top), None)
            start = top
            if above is not None:
                grid, start = np.vstack([above, grid]), top - 1
            offset = (ox, oy + start * self.scale)
            if inside is None or inside.shape != grid.shape:
                inside = region_mask(self.region, grid.shape, self.scale, offset)
            masked = masked_map(grid, inside)
            bottom = start + grid.shape[0]
            borders = ((0, start > 0), (grid.shape[0], bottom < self.last_row))
            open_rows = tuple(r for r, is_border in borders if is_border)
            closed, open_parts = trace_band(
                masked, level, self.scale, offset, self.simplify, self.min_area, self.min_hole, open_rows
            )
            self.closed[name].extend(closed)
            self.open[name].extend(open_parts)

    def outlines(self) -> dict[str, list[Polygon]]:
        """Every class's polygons: the finished parts, and the open ones united across bands."""
        out = {}
        for name, closed in self.closed.items():
            joined = finish_open_parts(
                self.open[name], self.scale, self.simplify, self.min_area, self.min_hole
            )
            out[name] = within_region(closed + joined, self.region)
        return out
