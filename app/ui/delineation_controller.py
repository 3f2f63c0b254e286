"""Delineate: the run from the click to the annotations, and re-tracing it afterwards.

The controller asks before a run would replace what a person drew, starts the run on the
worker thread, paints tiles as they finish, and, when the run ends, replaces the model's earlier
outlines inside the region with the new ones as one undo step. Each run's probability map is
kept (in memory and beside the slide), so the *Sensitivity* and *Minimum area* controls re-trace
its outlines without calling the model.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import shapely
import shapely.prepared
from PySide6.QtCore import QObject, QRectF, Qt, Signal
from PySide6.QtWidgets import QMessageBox, QProgressBar, QPushButton
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry
from superqt.utils import create_worker

from app.core.annotation_edits import accept_in_region, protected_overlapping, replace_in_region
from app.core.geometry import polygonal
from app.core.probability_map import ProbabilityMap
from app.inference.pipeline import tile_core_rect
from app.inference.tile_reader import Focus
from app.ui import icons
from app.ui.annotation_layer import AnnotationLayer
from app.ui.delineation_worker import RunFinished, TileUpdate, WorkerThread
from app.ui.overlay import TileOverlay
from app.ui.run_messages import run_summary, tiles_summary
from app.ui.settings_dialog import adaptive_enabled, load_settings
from app.ui.shapes import geometry_path

log = logging.getLogger(__name__)
DEFAULT_MIN_AREA_UM2 = 1000.0


@dataclass
class RunRecord:
    """A finished run whose outlines can be re-traced: its map, or where the map is on disk."""

    run_id: str
    map: ProbabilityMap | None
    path: Path | None
    threshold: float
    min_area_um2: float
    model: str = ""
    # Where its outlines were put (its region, less the tiles a cancelled run left): a later
    # run's re-trace gives way here. None: not known (a run restored from disk).
    covered: BaseGeometry | None = None
    made: float | None = None  # time.time() of a run of this session (a restored one: not known)

    def describe(self) -> str:
        """Which run the controls act on, so a pathologist with several runs can tell."""
        when = f" at {time.strftime('%H:%M', time.localtime(self.made))}" if self.made else ""
        return f"Run of {self.model}{when}" if self.model else f"The last run{when}"


class DelineationController(QObject):
    started = Signal()
    finished = Signal(object)  # Delineation
    failed = Signal(str)
    ended = Signal()  # a run stopped, however (finished, failed, cancelled, its slide closed)
    message = Signal(str, int)  # status text, timeout ms
    notice = Signal(str, str)  # key, something the user must read whole (the window shows a banner)
    runChanged = Signal(object)  # RunRecord | None: the run the sensitivity controls act on

    def __init__(self, window, view, layer: AnnotationLayer, settings):
        super().__init__(window)
        self.window = window
        self.view = view
        self.layer = layer
        self.region_model = view.editor.model
        self.settings = settings
        self.slide = None
        self.store = None
        self.running = False
        self.overlay: TileOverlay | None = None
        self.runs: dict[str, RunRecord] = {}
        self.current: RunRecord | None = None
        self.min_area_um2 = DEFAULT_MIN_AREA_UM2
        self.threshold: float | None = None  # None: the model card's
        self._run_slide = None
        self._run_region: BaseGeometry | None = None
        self._run_settings = None
        self._replace_protected = False
        self._unfinished = None
        self._retrace_generation = 0
        self.replace_box: QMessageBox | None = None
        self.remote_failure_box: QMessageBox | None = None
        self.finish_locally_button = None

        self.worker = WorkerThread(self)
        w = self.worker.worker
        w.tileDone.connect(self._on_tile)
        w.finished.connect(self._on_finished)
        w.failed.connect(self._on_failed)
        w.regionChosen.connect(self._on_region_chosen)
        self._focus: Focus | None = None

        self.progress = QProgressBar()
        self.progress.setMinimumWidth(190)
        self.progress.setMaximumWidth(280)
        self.progress.setFormat("%v / %m tiles")
        self.cancel_button = QPushButton(icons.cancel_icon(), "Cancel")
        self.cancel_button.setToolTip("Stop after the current tile and keep what is done (Esc)")
        self.cancel_button.clicked.connect(self.cancel)
        for wdg in (self.progress, self.cancel_button):
            wdg.hide()

    # ------------------------------------------------------------------ slide

    def set_slide(self, slide, store) -> None:
        """A slide opened (or None: closed). Runs of the previous slide are forgotten."""
        if self.running and slide is not self._run_slide:
            self.worker.cancel()
        self.slide, self.store = slide, store
        self._remove_overlay()
        self.runs = {}
        self._set_current(None)
        self.threshold, self.min_area_um2 = None, DEFAULT_MIN_AREA_UM2

    def restore_runs(self, maps: dict[str, Path], annotations) -> None:
        """Runs saved beside the slide: their maps load when first re-traced."""
        for run_id, path in maps.items():
            of_run = [a for a in annotations if a.provenance.run_id == run_id]
            # The settings the run's untouched outlines were traced with (edits keep older ones).
            best = next((a for a in of_run if a.is_proposal), of_run[0] if of_run else None)
            if best is None:
                continue
            prov = best.provenance
            self.runs[run_id] = RunRecord(
                run_id,
                None,
                path,
                prov.threshold or 0.5,
                prov.min_area_um2 or DEFAULT_MIN_AREA_UM2,
                " ".join(v for v in (prov.model, prov.engine and f"({prov.engine})") if v),
            )
        if self.runs and self.current is None:
            self._set_current(next(reversed(self.runs.values())))

    # ------------------------------------------------------------------ the run

    def start(self) -> None:
        if self.running:
            return
        if self.slide is None:
            self.message.emit("Open a slide first", 5000)
            return
        region = self.region_model.geometry
        if region.is_empty:
            self.notice.emit(
                "region", "Paint a region first (B brush, P polygon, R rectangle), then Delineate."
            )
            return
        protected = protected_overlapping(self.layer.annotations, region)
        if protected:
            self._ask_about(protected, region)
            return
        self._launch(region, replace_protected=False)

    def start_whole_slide(self) -> None:
        """Every piece of tissue on the slide; the worker finds it on the thumbnail, and the
        tiles nearest the middle of the view run first, following the view as it pans."""
        if self.running:
            return
        if self.slide is None:
            self.message.emit("Open a slide first", 5000)
            return
        whole = box(0, 0, *self.slide.dimensions)
        protected = protected_overlapping(self.layer.annotations, whole)
        if protected:
            self._ask_about(protected, whole, whole_slide=True)
            return
        self._launch(whole, replace_protected=False, whole_slide=True)

    def _on_region_chosen(self, region) -> None:
        if self.running and self._run_slide is self.slide:
            self._run_region = region
            if self.overlay is not None:
                self.overlay.clip = geometry_path(region)

    def _view_centre(self) -> tuple[float, float]:
        c = self.view.mapToScene(self.view.viewport().rect().center())
        return (c.x(), c.y())

    def _ask_about(self, protected, region, whole_slide: bool = False) -> None:
        """Painted, edited or locked outlines are never replaced without asking."""
        locked = sum(a.locked for a in protected)
        box_ = QMessageBox(self.window)
        box_.setIcon(QMessageBox.Icon.Question)
        box_.setWindowTitle("Replace outlines in the region?")
        text = (
            f"The region overlaps {len(protected)} outline(s) that were drawn, edited or accepted by hand"
            + (f" ({locked} locked, which are never changed)" if locked else "")
            + ".\n\nReplace them inside the region with the model's outline, keep both, or cancel?"
        )
        box_.setText(text)
        self.replace_button = box_.addButton("Replace", QMessageBox.ButtonRole.DestructiveRole)
        self.keep_both_button = box_.addButton("Keep both", QMessageBox.ButtonRole.AcceptRole)
        cancel = box_.addButton(QMessageBox.StandardButton.Cancel)
        box_.setDefaultButton(cancel)  # Enter never replaces nor stacks by accident
        box_.setEscapeButton(cancel)
        box_.setWindowModality(Qt.WindowModality.WindowModal)
        box_.buttonClicked.connect(lambda b: self._answered(b, region, whole_slide))
        self.replace_box = box_
        box_.open()

    def _answered(self, button, region, whole_slide: bool = False) -> None:
        self.replace_box = None
        if button is self.replace_button:
            self._launch(region, replace_protected=True, whole_slide=whole_slide)
        elif button is self.keep_both_button:
            self._launch(region, replace_protected=False, whole_slide=whole_slide)

    def _launch(
        self, region: BaseGeometry, replace_protected: bool, resume=None, whole_slide: bool = False
    ) -> None:
        self.running = True
        self._run_slide = self.slide
        self._run_region = region
        self._replace_protected = replace_protected
        if resume is None:
            self._run_settings = load_settings(self.settings)
            self._remove_overlay()
            w, h = self.slide.dimensions
            self.overlay = TileOverlay(QRectF(0, 0, w, h), geometry_path(region))
            self.overlay.setOpacity(self.window.overlay_opacity())
            self.overlay.setVisible(self.window.overlay_visible())
            self.view.scene().addItem(self.overlay)
            self.progress.setRange(0, 0)
            self.progress.setValue(0)
        else:
            self._run_settings = self._run_settings.local()
        self.progress.show()
        self.cancel_button.show()
        self.cancel_button.setEnabled(True)
        self.worker.worker.cancel_event.clear()
        self.started.emit()
        mpp = self.slide.mpp
        self._focus = Focus(self._view_centre()) if whole_slide else None
        self.worker.runRequested.emit(
            self.slide,
            region,
            self._run_settings,
            {
                "resume": resume,
                "min_area_um2": self.min_area_um2,
                "threshold": self.threshold,
                "slide_mpp": float(sum(mpp) / 2) if mpp else None,
                "whole_slide": whole_slide,
                "adaptive": adaptive_enabled(self.settings),
                "focus": self._focus,
            },
        )

    def cancel(self) -> None:
        if not self.running:
            return
        self.worker.cancel()
        self.cancel_button.setEnabled(False)
        self.message.emit("Cancelling after the current tile…", 0)

    def _on_tile(self, u: TileUpdate) -> None:
        if self._run_slide is not self.slide:
            return
        if self.overlay is not None and u.image is not None:
            self.overlay.add_tile(u.rect, u.image, u.coarse)
        if self._focus is not None:
            self._focus.point = self._view_centre()  # panning moves what runs next
        self.progress.setRange(0, u.total)
        self.progress.setValue(u.done)
        if u.done and u.done < u.total:
            left = u.elapsed_s / u.done * (u.total - u.done)
            self.progress.setFormat(f"%v / %m tiles · {left:.0f} s left")
        if u.error:
            self.message.emit(u.error, 8000)

    def _end_run(self) -> None:
        self.running = False
        self.ended.emit()
        self.progress.hide()
        self.cancel_button.hide()
        self.cancel_button.setEnabled(True)
        self.progress.setFormat("%v / %m tiles")

    def _on_finished(self, run: RunFinished) -> None:
        self._end_run()
        result = run.delineation
        if self._run_slide is not self.slide:
            # The slide was closed or replaced while the run was being cancelled.
            self.message.emit(
                "Delineation stopped: its slide was closed before it finished; nothing of it was kept", 8000
            )
            return
        if result.engine_error and self._run_settings is not None and self._run_settings.remote:
            self._offer_to_finish_locally(run)
            return
        if result.engine_error:  # a local engine failed mid-run: say so, keep what it finished
            self.window.show_error(
                "Delineation stopped", f"{result.engine_error}\n\nThe finished tiles are kept."
            )
        self._keep(run)

    def _covered(self, result) -> BaseGeometry:
        """The part of the region the run finished: a cancelled run replaces only there."""
        region = self._run_region
        if not result.pending:
            return region
        holes = shapely.union_all(
            [
                box(x, y, x + w, y + h)
                for x, y, w, h in (tile_core_rect(result.plan, t) for t in result.pending)
            ]
        )
        return region.difference(holes)

    def _keep(self, run: RunFinished) -> None:
        result = run.delineation
        covered = self._covered(result)
        pmap, new = run.map, run.annotations
        if result.pending:
            # Only what ran is replaced, and the new outlines stop there too: a done tile's
            # overlap reaches into the cores of tiles not run, where the old outlines stay.
            pmap = dataclasses.replace(pmap, region=covered)  # its re-traces stop there as well
            new = give_way(new, keep_within=covered, mpp=pmap.slide_mpp, min_area_um2=run.min_area_um2)
        before = len(self.layer.annotations)
        # What the clipping leaves of earlier outlines obeys this run's minimum area (no slivers).
        merged = replace_in_region(
            self.layer.annotations,
            new,
            covered,
            replace_protected=self._replace_protected,
            min_area=run.min_area_um2 / (pmap.slide_mpp or 1.0) ** 2,
        )
        self.layer.apply(merged, "Delineate")
        model = f"{pmap.model} ({pmap.engine})"
        record = RunRecord(
            pmap.run_id, pmap, None, run.threshold, run.min_area_um2, model, covered, time.time()
        )
        self.runs[record.run_id] = record
        self._set_current(record)
        self._save_map(pmap)
        if self.overlay is not None:
            self.overlay.setVisible(False)  # the annotations now show the same outline
        replaced = before + len(new) - len(merged)
        self.message.emit(run_summary(result, len(new), replaced), 20_000)
        for i, note in enumerate(result.notes):
            log.info("%s: %s", self.slide.name, note)
            self.notice.emit(f"run-note:{i}", note)
        if not new and not result.cancelled:
            found = " or ".join(c.name for c in pmap.scheme.foreground) or "tumour"
            self.notice.emit(
                "nothing-found",
                f"The model found no {found} in the region ({tiles_summary(result)}). Raise the "
                "Sensitivity to see weaker findings.",
            )
        self.finished.emit(result)

    def _save_map(self, pmap: ProbabilityMap) -> None:
        """Beside the slide, in the background, so the run can be re-traced after a restart."""
        if self.store is None:
            return
        path = self.store.map_path(pmap.run_id)
        create_worker(
            pmap.save,
            path,
            _start_thread=True,
            _connect={"errored": lambda e: self.message.emit(f"Run map not saved to {path}: {e}", 10_000)},
        )

    def _offer_to_finish_locally(self, run: RunFinished) -> None:
        """The engine (a remote endpoint) failed mid-run: say so, keep the finished tiles on
        screen, and let the user choose. Nothing switches engines silently."""
        result = run.delineation
        done = result.tiles_done + result.tiles_skipped
        box_ = QMessageBox(self.window)
        box_.setIcon(QMessageBox.Icon.Warning)
        box_.setWindowTitle("The inference endpoint stopped")
        box_.setText(
            f"{result.engine_error}\n\n{done} of {result.tiles_total} tiles are finished and kept. "
            f"Finish the remaining {len(result.pending)} tile(s) on this computer?"
        )
        self.finish_locally_button = box_.addButton(
            "Finish on this computer", QMessageBox.ButtonRole.AcceptRole
        )
        box_.addButton("Keep what is done", QMessageBox.ButtonRole.RejectRole)
        box_.setWindowModality(Qt.WindowModality.WindowModal)
        box_.buttonClicked.connect(self._remote_choice)
        self.remote_failure_box = box_
        self._unfinished = run
        self.message.emit(f"Endpoint failed after {done} of {result.tiles_total} tiles", 20_000)
        box_.open()

    def _remote_choice(self, button) -> None:
        run, self._unfinished = self._unfinished, None
        if run is None or self._run_slide is not self.slide:
            return
        if button is not self.finish_locally_button:
            self._keep(run)
            return
        self._launch(self._run_region, self._replace_protected, resume=run.delineation)

    def _on_failed(self, message: str) -> None:
        was_running = self.running
        self._end_run()
        if was_running:
            self.window.show_error("Delineation failed", message)
        else:  # preparing in the background (say, an endpoint that is off): no dialog at startup
            self.message.emit(f"Model not ready: {message}", 20_000)
        self.failed.emit(message)

    def _remove_overlay(self) -> None:
        if self.overlay is not None:
            self.view.scene().removeItem(self.overlay)
            self.overlay = None

    # ------------------------------------------------------------------ review

    def follow_selection(self) -> None:
        """The sensitivity controls act on the run of the selected outline, if it has one."""
        sel = self.layer.selected_annotations()
        run_id = sel[0].provenance.run_id if len(sel) == 1 else None
        if run_id in self.runs and self.runs[run_id] is not self.current:
            self._set_current(self.runs[run_id])

    def _set_current(self, record: RunRecord | None) -> None:
        """The run the sensitivity controls show and act on; the next run uses its settings."""
        self.current = record
        if record is not None:
            self.threshold, self.min_area_um2 = record.threshold, record.min_area_um2
        self.runChanged.emit(record)

    def sync_with_layer(self) -> None:
        """After any change (an undo or redo included) the controls show what the run's
        outlines were traced with; a run with no outline left (undone, deleted) cannot be
        re-traced, and one brought back by redo can again."""
        live_runs = {a.provenance.run_id for a in self.layer.annotations if a.provenance.run_id}
        record = self.current
        if record is None or record.run_id not in live_runs:
            alive = [r for r in self.runs.values() if r.run_id in live_runs]
            choice = alive[-1] if alive else None
            if choice is not record:
                self._set_current(choice)
            return
        traced = next(
            (
                a.provenance
                for a in self.layer.annotations
                if a.provenance.run_id == record.run_id and a.is_proposal
            ),
            None,
        )
        if traced is None or (traced.threshold, traced.min_area_um2) == (
            record.threshold,
            record.min_area_um2,
        ):
            return
        record.threshold = traced.threshold or record.threshold
        if traced.min_area_um2 is not None:
            record.min_area_um2 = traced.min_area_um2
        self._set_current(record)

    def retrace(self, threshold: float, min_area_um2: float) -> None:
        """Re-trace the current run's outlines at a new threshold and minimum area, off the GUI
        thread (the newest request wins); the engine is not called."""
        record = self.current
        if record is None or self.running:
            return
        self._retrace_generation += 1
        generation = self._retrace_generation

        def trace():
            pmap = record.map if record.map is not None else ProbabilityMap.load(record.path)
            return pmap, pmap.annotations(threshold, min_area_um2)

        def done(result):
            pmap, new = result
            record.map = pmap
            if generation != self._retrace_generation or self.runs.get(record.run_id) is not record:
                return
            record.threshold, record.min_area_um2 = threshold, min_area_um2
            self.threshold, self.min_area_um2 = threshold, min_area_um2  # the next run uses them too
            self._apply_retrace(record, new)

        create_worker(
            trace,
            _start_thread=True,
            _connect={
                "returned": done,
                "errored": lambda e: self.message.emit(f"Re-trace failed: {e}", 10_000),
            },
        )

    def _apply_retrace(self, record: RunRecord, new) -> None:
        """The run's untouched proposals give way to its new outlines, and nothing else changes:
        where another outline lies (another run's, one drawn, edited or locked by hand) or a
        later run has delineated since, the new ones give way in turn, and what is left of them
        obeys the minimum area (no slivers)."""
        run_id = record.run_id
        old = [a for a in self.layer.annotations if a.provenance.run_id == run_id and a.is_proposal]
        kept = [a for a in self.layer.annotations if not (a.provenance.run_id == run_id and a.is_proposal)]
        later = list(self.runs.values())
        later = later[later.index(record) + 1 :] if record in later else []
        blocked = [a.geometry for a in kept] + [r.covered for r in later if r.covered is not None]
        new = give_way(
            new,
            keep_within=record.covered,
            blocked=blocked,
            mpp=record.map.slide_mpp,
            min_area_um2=record.min_area_um2,
        )
        if not old and not new:
            return
        self.layer.apply(
            kept + new,
            f"Sensitivity {record.threshold:.2f}, min area {record.min_area_um2:g} µm²",
            merge_key=f"retrace:{run_id}",
        )

    def accept_all_in_region(self) -> None:
        region = self.region_model.geometry
        if region.is_empty:
            self.message.emit(
                "Paint a region first: Accept all in region accepts the outlines inside it", 6000
            )
            return
        self.layer.apply(accept_in_region(self.layer.annotations, region), "Accept all in region")

    def stop(self) -> None:
        self.worker.stop()
        self.running = False


def give_way(
    new: list,
    *,
    keep_within: BaseGeometry | None = None,
    blocked: list[BaseGeometry] = (),
    mpp: float | None,
    min_area_um2: float,
) -> list:
    """New outlines cut to `keep_within` and clear of every `blocked` geometry. A cut one that
    falls apart is one outline per part, as tracing there would give; a part below
    `min_area_um2` is dropped, so no sliver is ever proposed."""
    tree = shapely.STRtree(list(blocked)) if blocked else None
    inside = shapely.prepared.prep(keep_within) if keep_within is not None else None
    out = []
    for a in new:
        g, cut = a.geometry, False
        if inside is not None and not inside.contains(g):
            g, cut = polygonal(g.intersection(keep_within)), True
        if tree is not None and not g.is_empty:
            hits = tree.query(g, predicate="intersects")
            if len(hits):
                g, cut = polygonal(g.difference(shapely.union_all(tree.geometries.take(hits)))), True
        if not cut:
            out.append(a)
            continue
        parts = [p for p in getattr(g, "geoms", [g]) if not p.is_empty]
        parts = [p for p in parts if p.area * (mpp or 1.0) ** 2 >= min_area_um2]
        for k, p in enumerate(parts):  # the first part keeps the outline's id
            out.append(
                dataclasses.replace(a, geometry=p)
                if k == 0
                else dataclasses.replace(a, geometry=p, id=str(uuid.uuid4()))
            )
    return out
