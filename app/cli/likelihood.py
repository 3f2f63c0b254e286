"""`--likelihood` of `delineate` and `export`: the run's map streamed to disk as it goes, then
written as `<slide>_likelihood_map.tif` (one per class of a multi-class model), which ASAP
shows over the slide by itself."""

from __future__ import annotations

import sys
from pathlib import Path


class LikelihoodOutput:
    """The likelihood maps of one run: `sink` goes to the run as its `map_sink`; `prepare`
    (after the run is planned, before it starts) checks the disk; `write` makes the TIFFs."""

    def __init__(self, slide, card, folder: Path):
        self.slide, self.folder = slide, Path(folder)
        self.classes = card.scheme.foreground
        self.spool = None

    def sink(self, first_row: int, band) -> None:
        self.spool.add_band(first_row, band)

    def prepare(self, plan) -> None:
        from app.core.likelihood_map import LikelihoodSpool

        self.spool = LikelihoodSpool(
            self.folder,
            self.slide.dimensions,
            plan.level0_per_model,
            plan.model_to_level0(0, 0),
            [c.channel for c in self.classes],
        )

    def paths(self) -> dict[int, Path]:
        from app.core.likelihood_map import likelihood_map_path

        many = len(self.classes) > 1
        return {
            c.channel: likelihood_map_path(self.slide.path, self.folder, c.name if many else None)
            for c in self.classes
        }

    def write(self, tiles_done: int, mpp: float | None) -> None:
        """The TIFFs; `mpp`: the slide's µm per level-0 pixel (None: the TIFF records none)."""
        paths = self.paths()
        self.spool.write(paths, mpp)
        for c in self.classes:
            print(f"likelihood map of {c.name} ({tiles_done} tiles) -> {paths[c.channel]}", file=sys.stderr)

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
