"""The main window: slide view, overview, slide-info dock, menus, status bar."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtCore import QRectF, QSettings, Qt, Signal
from PySide6.QtGui import QAction, QActionGroup, QDragEnterEvent, QDropEvent, QImage, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QDoubleSpinBox,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QToolBar,
)
from shapely.geometry import Point, box
from superqt import QLabeledSlider

from app import __version__
from app.core import export
from app.core.annotation_store import AnnotationStore, SavedState
from app.core.annotations import Annotation, read_geojson
from app.core.slide import FORMAT_FILTER, Slide
from app.logs import data_dir, log_file
from app.ui import icons
from app.ui.annotations_panel import AnnotationsPanel, format_area
from app.ui.autosave import Autosaver
from app.ui.background import run_in_background
from app.ui.delineation_worker import TileUpdate, WorkerThread
from app.ui.garbage_collection import collect_garbage_on_gui_thread
from app.ui.image_convert import array_to_qimage
from app.ui.info_panel import SlideInfoPanel
from app.ui.overlay import AnnotationItem, TileOverlay
from app.ui.region_editor import BrushTool, EraserTool, PolygonTool, RectangleTool, SelectTool
from app.ui.settings_dialog import SettingsDialog, load_settings
from app.ui.slide_view import SlideView

log = logging.getLogger(__name__)
MAX_RECENT = 10
BASE_IMAGE_SIDE = 2048


@dataclass
class OpenedSlide:
    slide: Slide
    thumbnail: np.ndarray  # shown under the tiles, and the tissue mask is made from it
    base: QImage
    associated: dict[str, QImage]


def open_slide_job(path: str) -> OpenedSlide:
    """Everything opening a slide reads from disk, done off the GUI thread."""
    slide = Slide.open(path)
    try:
        thumbnail = slide.thumbnail(BASE_IMAGE_SIDE)
        base = array_to_qimage(thumbnail)
        associated = {}
        for name in slide.associated_image_names:
            try:
                associated[name] = array_to_qimage(slide.associated_image(name))
            except Exception:
                log.warning("associated image %s of %s unreadable", name, path, exc_info=True)
    except BaseException:
        slide.close()
        raise
    return OpenedSlide(slide, thumbnail, base, associated)


class MainWindow(QMainWindow):
    slideOpened = Signal(str)
    openFailed = Signal(str)
    delineationFinished = Signal(object)  # Delineation
    delineationFailed = Signal(str)
    annotationsChanged = Signal()
    annotationsImported = Signal(int)  # count, -1 on failure
    exported = Signal(str)  # path, "" on failure

    def __init__(self, settings: QSettings | None = None):
        super().__init__()
        collect_garbage_on_gui_thread()  # before any worker thread starts: see garbage_collection
        self.settings = settings or QSettings()
        self.setWindowTitle("Delineo")
        self.resize(1280, 820)
        self.setAcceptDrops(True)
        self.slide: Slide | None = None
        self.error_dialog: QMessageBox | None = None
        self.info_dialog: QMessageBox | None = None
        self._opening: str | None = None

        self.view = SlideView(self)
        self.setCentralWidget(self.view)
        self.info_panel = SlideInfoPanel()
        self.info_dock = QDockWidget("Slide info", self)
        self.info_dock.setObjectName("slide-info")
        self.info_dock.setWidget(self.info_panel)
        self.info_dock.setMinimumWidth(260)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.info_dock)

        self.annotations: list[Annotation] = []
        self.annotation_items: dict[str, AnnotationItem] = {}
        self.annotations_panel = AnnotationsPanel()
        self.annotations_dock = QDockWidget("Annotations", self)
        self.annotations_dock.setObjectName("annotations")
        self.annotations_dock.setWidget(self.annotations_panel)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.annotations_dock)
        self.annotations_panel.selected.connect(self.select_annotation)
        self.annotations_panel.deleteRequested.connect(self.delete_annotations)
        self.editor = self.view.editor
        self.editor.annotation_hit_test = self._annotation_at
        self.editor.annotationClicked.connect(self._annotation_clicked)
        self.overlay: TileOverlay | None = None
        self._run_slide: Slide | None = None
        self._run_region = None
        self._run_settings = None
        self._unfinished = None  # a Delineation an endpoint left unfinished, awaiting the user's choice
        self.running = False

        self.store: AnnotationStore | None = None
        self.autosaver = Autosaver(self)
        self.autosaver.saved.connect(self._on_saved)
        self.autosaver.failed.connect(self._on_save_failed)
        self.editor.model.changed.connect(self.autosaver.changed)
        self.annotationsChanged.connect(self.autosaver.changed)
        self.save_label = QLabel()
        self.save_label.setWordWrap(True)
        self.annotations_panel.layout().addWidget(self.save_label)

        self.worker = WorkerThread(self)
        w = self.worker.worker
        w.tileDone.connect(self._on_tile)
        w.finished.connect(self._on_delineated)
        w.failed.connect(self._on_delineation_failed)
        # Bound methods (not lambdas): a slot of a QObject runs on that object's (GUI) thread.
        w.status.connect(self._show_worker_status)
        w.engineReady.connect(self._show_engine)

        self.pos_label = QLabel()
        self.level_label = QLabel()
        self.engine_label = QLabel()
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(320)
        self.progress.setFormat("%v / %m tiles")
        self.cancel_button = QPushButton(icons.cancel_icon(), "Cancel")
        self.cancel_button.setToolTip("Stop after the current tile and keep what is done (Esc)")
        self.cancel_button.clicked.connect(self.cancel_delineation)
        for wdg in (self.progress, self.cancel_button):
            wdg.hide()
            self.statusBar().addPermanentWidget(wdg)
        self.statusBar().addPermanentWidget(self.pos_label)
        self.statusBar().addPermanentWidget(self.level_label)
        self.statusBar().addPermanentWidget(self.engine_label)
        self.view.cursorMoved.connect(self._show_cursor)
        self.view.viewChanged.connect(self._show_level)
        self.view.tileFailed.connect(lambda msg: self.statusBar().showMessage(msg, 8000))
        self._build_menus()
        self._build_toolbar()
        self.statusBar().showMessage("Open a slide: File > Open (Ctrl+O) or drop a file here")
        self.worker.prepareRequested.emit(load_settings(self.settings))

    # ------------------------------------------------------------------ menus

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.open_action = QAction("&Open…", self, shortcut=QKeySequence.StandardKey.Open)
        self.open_action.triggered.connect(self.open_dialog)
        file_menu.addAction(self.open_action)
        self.recent_menu = file_menu.addMenu("Open &Recent")
        self._refresh_recent()
        file_menu.addSeparator()
        import_action = QAction("&Import annotations…", self)
        import_action.setShortcut(QKeySequence("Ctrl+I"))
        import_action.triggered.connect(self.import_dialog)
        file_menu.addAction(import_action)
        export_menu = file_menu.addMenu("&Export")
        for fmt, text in (
            ("geojson", "QuPath &GeoJSON…"),
            ("asap-xml", "&ASAP XML…"),
            ("png", "&Picture of the view (PNG)…"),
            ("tiff-mask", "&TIFF mask…"),
            ("csv", "&CSV measurements…"),
        ):
            a = export_menu.addAction(text)
            a.triggered.connect(lambda _=False, f=fmt: self.export_dialog(f))
        file_menu.addSeparator()
        close_action = QAction("&Close slide", self, shortcut=QKeySequence.StandardKey.Close)
        close_action.triggered.connect(self.close_slide)
        file_menu.addAction(close_action)
        quit_action = QAction("&Quit", self, shortcut=QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(quit_action)

        view_menu = self.menuBar().addMenu("&View")
        for text, keys, slot in (
            ("Zoom &in", "+", lambda: self.view.zoom_by(1.25)),
            ("Zoom &out", "-", lambda: self.view.zoom_by(0.8)),
            ("&Fit slide", "0", self.view.fit),
            ("&Native resolution (1:1)", "1", self.view.native),
        ):
            a = QAction(text, self)
            a.setShortcut(QKeySequence(keys))
            a.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            a.triggered.connect(slot)
            view_menu.addAction(a)
        view_menu.addSeparator()
        self.overview_action = QAction("&Overview", self, checkable=True, checked=True)
        self.overview_action.toggled.connect(
            lambda on: self.view.overview.setVisible(on and self.slide is not None)
        )
        view_menu.addAction(self.overview_action)
        view_menu.addAction(self.info_dock.toggleViewAction())

        edit_menu = self.menuBar().addMenu("&Edit")
        stack = self.editor.model.undo_stack
        self.undo_action = stack.createUndoAction(self, "&Undo")
        self.undo_action.setShortcut(QKeySequence("Ctrl+Z"))
        self.redo_action = stack.createRedoAction(self, "&Redo")
        self.redo_action.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        edit_menu.addAction(self.undo_action)
        edit_menu.addAction(self.redo_action)
        clear = QAction("&Clear region", self)
        clear.triggered.connect(self.editor.model.clear)
        edit_menu.addAction(clear)
        edit_menu.addSeparator()
        settings = QAction("Delineation &settings…", self)
        settings.setShortcut(QKeySequence("Ctrl+,"))
        settings.triggered.connect(self.open_settings)
        edit_menu.addAction(settings)
        view_menu = self.menuBar().actions()[1].menu()
        view_menu.addAction(self.annotations_dock.toggleViewAction())

        help_menu = self.menuBar().addMenu("&Help")
        about = QAction("&About Delineo", self)
        about.triggered.connect(self._about)
        help_menu.addAction(about)

    def _build_toolbar(self) -> None:
        bar = QToolBar("Tools", self)
        bar.setObjectName("tools")
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, bar)
        group = QActionGroup(self)
        self.tool_actions: dict[str, QAction] = {}
        for cls, icon in (
            (SelectTool, icons.select_icon()),
            (BrushTool, icons.brush_icon()),
            (EraserTool, icons.eraser_icon()),
            (PolygonTool, icons.polygon_icon()),
            (RectangleTool, icons.rectangle_icon()),
        ):
            a = QAction(icon, cls.name, self, checkable=True)
            a.setShortcut(QKeySequence(cls.shortcut))
            a.setToolTip(f"{cls.tip}")
            a.triggered.connect(lambda _=False, n=cls.name: self.editor.set_tool(n))
            group.addAction(a)
            bar.addAction(a)
            self.tool_actions[cls.name] = a
        self.tool_actions[SelectTool.name].setChecked(True)
        self.editor.toolChanged.connect(lambda n: self.tool_actions[n].setChecked(True))
        self.brush_size = QDoubleSpinBox()
        self.brush_size.setRange(10, 20_000)
        self.brush_size.setDecimals(0)
        self.brush_size.setSuffix(" µm")
        self.brush_size.setValue(self.editor.brush_um)
        self.brush_size.setToolTip("Brush and eraser diameter ([ and ] change it)")
        self.brush_size.valueChanged.connect(self.editor.set_brush_um)
        self.editor.brushChanged.connect(self._brush_changed)
        bar.addWidget(self.brush_size)
        bar.addSeparator()
        bar.addAction(self.undo_action)
        bar.addAction(self.redo_action)
        bar.addSeparator()
        self.delineate_action = QAction(icons.delineate_icon(), "Delineate region", self)
        self.delineate_action.setShortcut(QKeySequence("Ctrl+D"))
        self.delineate_action.setToolTip("Delineate tumour in the painted region (Ctrl+D)")
        self.delineate_action.triggered.connect(self.delineate)
        bar.addAction(self.delineate_action)
        bar.widgetForAction(self.delineate_action).setToolButtonStyle(
            Qt.ToolButtonStyle.ToolButtonTextBesideIcon
        )
        esc = QAction(self)
        esc.setShortcut(QKeySequence("Esc"))
        esc.triggered.connect(lambda: self.running and self.cancel_delineation())
        self.addAction(esc)
        bar.addSeparator()
        self.overlay_action = QAction("Overlay", self, checkable=True, checked=True)
        self.overlay_action.setShortcut(QKeySequence("H"))
        self.overlay_action.setToolTip("Show or hide what the model drew (H)")
        self.overlay_action.toggled.connect(self._set_overlay_visible)
        bar.addAction(self.overlay_action)
        self.opacity = QLabeledSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(45)
        self.opacity.setMaximumWidth(160)
        self.opacity.setToolTip("Overlay opacity (%)")
        self.opacity.valueChanged.connect(self._set_opacity)
        bar.addWidget(self.opacity)

    def _show_worker_status(self, message: str) -> None:
        self.statusBar().showMessage(message, 10_000)

    def _show_engine(self, description: str) -> None:
        self.engine_label.setText(description)

    def _brush_changed(self, um: float) -> None:
        self.brush_size.blockSignals(True)
        self.brush_size.setValue(um)
        self.brush_size.blockSignals(False)
        unit = "µm" if self.slide is not None and self.slide.mpp else "px"
        self.brush_size.setSuffix(f" {unit}")
        self.statusBar().showMessage(f"Brush {um:.0f} {unit}", 2000)

    def _set_overlay_visible(self, visible: bool) -> None:
        if self.overlay is not None:
            self.overlay.setVisible(visible)
        for item in self.annotation_items.values():
            item.setVisible(visible)

    def _set_opacity(self, value: int) -> None:
        if self.overlay is not None:
            self.overlay.setOpacity(value / 100)
        for item in self.annotation_items.values():
            item.setOpacity(min(1.0, 0.3 + value / 100))

    def open_settings(self) -> None:
        note = ""
        choice = self.worker.worker.precision_choice
        if choice:
            ms = ", ".join(f"{p.upper()} {t:.0f} ms" for p, t in choice[1].items())
            note = f"Auto chose {choice[0].upper()} on this computer ({ms} per tile)."
        dlg = SettingsDialog(self.settings, note, self)
        if dlg.exec():
            self.worker.prepareRequested.emit(dlg.value())

    # ------------------------------------------------------------------ delineation

    def delineate(self) -> None:
        if self.running:
            return
        if self.slide is None:
            self.statusBar().showMessage("Open a slide first", 5000)
            return
        if self.editor.model.empty:
            self.statusBar().showMessage(
                "Paint a region first: B for the brush, P polygon, R rectangle", 6000
            )
            return
        self.running = True
        self._run_slide = self.slide
        self.delineate_action.setEnabled(False)
        if self.overlay is not None:
            self.view.scene().removeItem(self.overlay)
        w, h = self.slide.dimensions
        self.overlay = TileOverlay(QRectF(0, 0, w, h))
        self.overlay.setOpacity(self.opacity.value() / 100)
        self.overlay.setVisible(self.overlay_action.isChecked())
        self.view.scene().addItem(self.overlay)
        self.progress.setRange(0, 0)
        self.progress.setValue(0)
        self.progress.show()
        self.cancel_button.show()
        self.worker.worker.cancel_event.clear()
        self._run_region = self.editor.model.geometry
        self._run_settings = load_settings(self.settings)
        self.worker.runRequested.emit(self.slide, self._run_region, self._run_settings, None)

    def cancel_delineation(self) -> None:
        self.worker.cancel()
        self.cancel_button.setEnabled(False)
        self.statusBar().showMessage("Cancelling after the current tile…")

    def _on_tile(self, u: TileUpdate) -> None:
        if self._run_slide is not self.slide:
            return
        if self.overlay is not None and u.image is not None:
            self.overlay.add_tile(u.rect, u.image)
        self.progress.setRange(0, u.total)
        self.progress.setValue(u.done)
        if u.done and u.done < u.total:
            left = u.elapsed_s / u.done * (u.total - u.done)
            self.progress.setFormat(f"%v / %m tiles · {left:.0f} s left")
        if u.error:
            self.statusBar().showMessage(u.error, 8000)

    def _end_run(self) -> None:
        self.running = False
        self.delineate_action.setEnabled(True)
        self.progress.hide()
        self.cancel_button.hide()
        self.cancel_button.setEnabled(True)
        self.progress.setFormat("%v / %m tiles")

    def _on_delineated(self, result) -> None:
        self._end_run()
        if self._run_slide is not self.slide:
            return  # the slide was closed or replaced while the run was being cancelled
        if result.engine_error and self._run_settings is not None and self._run_settings.remote:
            self._offer_to_finish_locally(result)
            return
        if result.engine_error:  # a local engine failed mid-run: say so, keep what it finished
            self.show_error("Delineation stopped", f"{result.engine_error}\n\nThe finished tiles are kept.")
        self._keep(result)

    def _offer_to_finish_locally(self, result) -> None:
        """The engine (a remote endpoint) failed mid-run: say so, keep the finished tiles on
        screen, and let the user choose. Nothing switches engines silently."""
        done = result.tiles_done + result.tiles_skipped
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("The inference endpoint stopped")
        box.setText(
            f"{result.engine_error}\n\n{done} of {result.tiles_total} tiles are finished and kept. "
            f"Finish the remaining {len(result.pending)} tile(s) on this computer?"
        )
        self.finish_locally_button = box.addButton(
            "Finish on this computer", QMessageBox.ButtonRole.AcceptRole
        )
        box.addButton("Keep what is done", QMessageBox.ButtonRole.RejectRole)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.buttonClicked.connect(self._remote_choice)
        self.remote_failure_box = box
        self._unfinished = result
        self.statusBar().showMessage(f"Endpoint failed after {done} of {result.tiles_total} tiles", 20_000)
        box.open()

    def _remote_choice(self, button) -> None:
        result, self._unfinished = self._unfinished, None
        if result is None or self._run_slide is not self.slide:
            return
        if button is not self.finish_locally_button:
            self._keep(result)
            return
        self.running = True
        self.delineate_action.setEnabled(False)
        self.progress.show()
        self.cancel_button.show()
        self.worker.worker.cancel_event.clear()
        self._run_settings = self._run_settings.local()
        self.worker.runRequested.emit(self.slide, self._run_region, self._run_settings, result)

    def _keep(self, result) -> None:
        new = [Annotation(p, source=result.source) for p in result.polygons]
        self.add_annotations(new)
        if self.overlay is not None:
            self.overlay.setVisible(False)  # the annotations now show the same outline
        mpp = self._mpp()
        area = sum(a.geometry.area for a in new)
        what = "Cancelled; kept" if result.cancelled else "Kept" if result.pending else "Delineated"
        msg = (
            f"{what} {result.tiles_done} tiles ({result.tiles_skipped} background skipped) in "
            f"{result.seconds:.1f} s: {len(new)} tumour region(s), {format_area(area, mpp)}"
        )
        for note in result.notes:
            msg += f" — {note}"
            log.info("%s: %s", self.slide.name if self.slide else "delineation", note)
        self.show_long_status(msg, 20_000)
        self.delineationFinished.emit(result)

    def show_long_status(self, message: str, timeout_ms: int) -> None:
        """A status message elided to the room left of the position and engine labels (Qt
        would draw the rest under them); the whole text is the status bar's tooltip."""
        bar = self.statusBar()
        room = bar.width() - 24
        for w in (self.progress, self.cancel_button, self.pos_label, self.level_label, self.engine_label):
            if not w.isHidden():
                room -= w.sizeHint().width() + 8
        elided = bar.fontMetrics().elidedText(message, Qt.TextElideMode.ElideRight, max(room, 80))
        bar.setToolTip(message if elided != message else "")
        bar.showMessage(elided, timeout_ms)

    def _on_delineation_failed(self, message: str) -> None:
        was_running = self.running
        self._end_run()
        if was_running:
            self.show_error("Delineation failed", message)
        else:  # preparing in the background (say, an endpoint that is off): no dialog at startup
            self.statusBar().showMessage(f"Model not ready: {message}", 20_000)
            self.engine_label.setText("model not ready")
        self.delineationFailed.emit(message)

    # ------------------------------------------------------------------ annotations

    def _mpp(self) -> float | None:
        return float(sum(self.slide.mpp) / 2) if self.slide is not None and self.slide.mpp else None

    def add_annotations(self, new: list[Annotation]) -> None:
        for a in new:
            item = AnnotationItem(a)
            item.setVisible(self.overlay_action.isChecked())
            self.view.scene().addItem(item)
            self.annotation_items[a.id] = item
        self.annotations.extend(new)
        self._annotations_changed()

    def delete_annotations(self, ids: list[str]) -> None:
        for i in ids:
            item = self.annotation_items.pop(i, None)
            if item is not None:
                self.view.scene().removeItem(item)
        self.annotations = [a for a in self.annotations if a.id not in ids]
        self._annotations_changed()

    def _annotations_changed(self) -> None:
        self.annotations_panel.set_annotations(self.annotations, self._mpp())
        self.annotationsChanged.emit()

    def select_annotation(self, ann_id: str, centre: bool = True) -> None:
        """Highlight an annotation; from the list, also bring it to the centre of the view."""
        for i, item in self.annotation_items.items():
            item.set_selected(i == ann_id)
        a = next((a for a in self.annotations if a.id == ann_id), None)
        if a is not None and centre:
            c = a.geometry.centroid
            self.view.centre_on(c.x, c.y)

    def _annotation_clicked(self, ann_id: str) -> None:
        """Clicked in the view: select it in the list too, without moving the view."""
        self.annotations_panel.select_id(ann_id, quiet=True)
        self.select_annotation(ann_id, centre=False)

    def _annotation_at(self, x: float, y: float) -> str | None:
        pt = Point(x, y)
        hits = [a for a in self.annotations if a.geometry.contains(pt)]
        return min(hits, key=lambda a: a.geometry.area).id if hits else None

    def _clear_annotations(self) -> None:
        for item in self.annotation_items.values():
            self.view.scene().removeItem(item)
        self.annotation_items = {}
        self.annotations = []
        if self.overlay is not None:
            self.view.scene().removeItem(self.overlay)
            self.overlay = None
        self._annotations_changed()

    # ------------------------------------------------------------------ saving and restoring

    def _offset(self) -> tuple[float, float]:
        return tuple(self.slide.bounds[:2]) if self.slide is not None and self.slide.bounds else (0, 0)

    def _start_store(self, slide: Slide) -> None:
        store = AnnotationStore(slide.path, data_dir(), self._mpp(), self._offset())
        self.store = store
        run_in_background(
            store.load,
            lambda state: self._restored(slide, store, state),
            lambda e: self._restore_failed(slide, store, e),
        )

    def _restored(self, slide: Slide, store: AnnotationStore, state: SavedState) -> None:
        if self.slide is not slide:
            return
        if state.annotations:
            self.add_annotations(state.annotations)
        if not state.region.is_empty:
            current = self.editor.model.geometry
            self.editor.model.reset(state.region.union(current) if not current.is_empty else state.region)
        self.autosaver.attach(store, lambda: store.document(self.annotations, self.editor.model.geometry))
        where = (
            "beside the slide"
            if store.beside_slide
            else "in your data folder (the slide's folder is read-only)"
        )
        self.save_label.setText(f"Saved automatically {where}:\n{store.path}")
        self.save_label.setToolTip(str(store.path))
        if state.annotations or not state.region.is_empty:
            msg = f"Restored {len(state.annotations)} annotation(s) from {store.existing()}"
            self.statusBar().showMessage(msg, 8000)
        for note in state.notes:
            log.info("restore %s: %s", store.existing(), note)

    def _restore_failed(self, slide: Slide, store: AnnotationStore, exc: BaseException) -> None:
        if self.slide is not slide:
            return
        # Keep the unreadable file: save to a new name so nothing is overwritten.
        broken = store.existing()
        if broken is not None:
            store.path = broken.with_name(
                broken.name.replace(".annotations.geojson", ".recovered.annotations.geojson")
            )
        self.autosaver.attach(store, lambda: store.document(self.annotations, self.editor.model.geometry))
        self.show_error(
            "Saved annotations not restored",
            f"{exc}\n\nThe file was left as it is; new work is saved to {store.path}.",
        )

    def _on_saved(self, path: str) -> None:
        self.save_label.setText(f"Saved {time.strftime('%H:%M:%S')} to:\n{path}")

    def _on_save_failed(self, message: str) -> None:
        self.save_label.setText(f"<b>Not saved:</b> {message}")
        self.statusBar().showMessage(message, 15_000)

    def import_dialog(self) -> None:
        if self.slide is None:
            return
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Import annotations",
            str(self.slide.path.parent),
            "GeoJSON (*.geojson *.json);;All files (*)",
        )
        if path:
            self.import_annotations(path)

    def import_annotations(self, path: str) -> None:
        """Read in the background; on any error the open annotations stay as they are."""
        slide, offset = self.slide, self._offset()
        run_in_background(
            lambda: read_geojson(path, offset),
            lambda result: self._imported(slide, path, *result),
            lambda e: self._import_failed(path, e),
        )

    def _imported(self, slide: Slide, path: str, annotations: list[Annotation], notes: list[str]) -> None:
        if self.slide is not slide:
            return
        w, h = slide.dimensions
        outside = export.outside_slide(annotations, slide)
        if outside:
            notes.append(f"{len(outside)} annotation(s) reach outside the slide ({w} x {h} px); clipped")
            annotations = export.clip(annotations, box(0, 0, w, h))
        self.add_annotations(annotations)
        msg = f"Imported {len(annotations)} annotation(s) from {Path(path).name}"
        self.statusBar().showMessage(msg, 8000)
        if notes:
            self.show_info("Import notes", msg + ":\n\n" + "\n".join(notes[:20]))
        self.annotationsImported.emit(len(annotations))

    def _import_failed(self, path: str, exc: BaseException) -> None:
        self.show_error("Import failed", f"{exc}\n\nThe open annotations are unchanged.")
        self.annotationsImported.emit(-1)

    def export_dialog(self, fmt: str) -> None:
        if self.slide is None:
            return
        ext = {
            "geojson": "GeoJSON (*.geojson)",
            "asap-xml": "ASAP XML (*.xml)",
            "png": "PNG (*.png)",
            "tiff-mask": "TIFF (*.tif)",
            "csv": "CSV (*.csv)",
        }[fmt]
        suffix = {
            "geojson": ".geojson",
            "asap-xml": ".xml",
            "png": ".png",
            "tiff-mask": "_mask.tif",
            "csv": ".csv",
        }[fmt]
        default = str(self.slide.path.parent / (self.slide.path.stem + suffix))
        path, _ = QFileDialog.getSaveFileName(self, "Export", default, ext)
        if path:
            self.export_to(fmt, path)

    def export_to(self, fmt: str, path: str) -> None:
        """Export on a background thread; a failure says so and leaves no partial file."""
        slide, mpp, offset = self.slide, self._mpp(), self._offset()
        anns = list(self.annotations)
        r = self.view.visible_rect().intersected(QRectF(0, 0, *slide.dimensions))
        view_rect = (r.x(), r.y(), r.width(), r.height())
        view_mpp = (mpp / self.view.zoom) if mpp else 1 / self.view.zoom

        def job():
            if fmt == "geojson":
                return export.export_geojson(path, anns, mpp, offset)
            if fmt == "asap-xml":
                return export.export_asap_xml(path, anns, offset)
            if fmt == "csv":
                return export.export_csv(path, anns, mpp)
            if fmt == "png":  # the current view, at the resolution it is shown
                return export.export_png(path, slide, anns, view_rect, view_mpp)
            return export.export_tiff_mask(path, slide, anns)

        run_in_background(job, lambda p: self._exported(fmt, p), lambda e: self._export_failed(path, e))

    def _exported(self, fmt: str, path) -> None:
        self.statusBar().showMessage(f"Exported {fmt} to {path}", 10_000)
        self.exported.emit(str(path))

    def _export_failed(self, path: str, exc: BaseException) -> None:
        self.show_error("Export failed", str(exc))
        self.exported.emit("")

    def show_info(self, title: str, message: str) -> None:
        box = QMessageBox(QMessageBox.Icon.Information, title, message, QMessageBox.StandardButton.Ok, self)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.open()
        self.info_dialog = box

    def _about(self) -> None:
        QMessageBox.about(
            self,
            "About Delineo",
            f"<b>Delineo {__version__}</b><br>Whole-slide viewer with on-device tumour "
            f"delineation.<br><br>Log file for support:<br><code>{log_file()}</code>",
        )

    # ------------------------------------------------------------------ opening

    def open_dialog(self) -> None:
        start = self.settings.value("last_dir", str(Path.home()))
        path, _ = QFileDialog.getOpenFileName(self, "Open slide", start, FORMAT_FILTER)
        if path:
            self.open_slide(path)

    def open_slide(self, path: str | Path) -> None:
        """Open in the background; the window stays responsive and shows an error dialog on failure."""
        path = str(path)
        self._opening = path
        self.statusBar().showMessage(f"Opening {Path(path).name}…")
        QApplication.setOverrideCursor(Qt.CursorShape.BusyCursor)
        run_in_background(
            lambda: open_slide_job(path),
            lambda opened: self._on_opened(path, opened),
            lambda exc: self._on_open_failed(path, exc),
        )

    def _on_opened(self, path: str, opened: OpenedSlide) -> None:
        QApplication.restoreOverrideCursor()
        if self._opening != path:  # a newer open superseded this one
            opened.slide.close()
            return
        self._close_current()
        self.slide = opened.slide
        self.view.set_slide(opened.slide, opened.base)
        self.editor.model.reset()
        self._brush_changed(self.editor.brush_um)
        self.worker.slideRequested.emit(opened.slide, opened.thumbnail)
        self._start_store(opened.slide)
        self.view.overview.setVisible(self.overview_action.isChecked())
        self.info_panel.show_slide(opened.slide.info(), opened.associated)
        self.setWindowTitle(f"{opened.slide.name} — Delineo")
        self._add_recent(path)
        self.settings.setValue("last_dir", str(Path(path).parent))
        mpp_note = "" if opened.slide.mpp else " — no pixel size recorded; the scale bar shows pixels"
        self.statusBar().showMessage(f"Opened {opened.slide.name}{mpp_note}", 6000)
        log.info("opened %s", path)
        self.slideOpened.emit(path)

    def _on_open_failed(self, path: str, exc: BaseException) -> None:
        QApplication.restoreOverrideCursor()
        msg = str(exc) if str(exc) else type(exc).__name__
        log.warning("cannot open %s: %s", path, msg)
        self.statusBar().showMessage(f"Could not open {Path(path).name}", 6000)
        self.show_error("Cannot open slide", msg)
        self.openFailed.emit(msg)

    def show_error(self, title: str, message: str) -> None:
        """A window-modal dialog that does not block the event loop."""
        box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.open()
        self.error_dialog = box

    def close_slide(self) -> None:
        self._close_current()
        self.info_panel.clear()
        self.setWindowTitle("Delineo")

    def _close_current(self) -> None:
        self.autosaver.attach(None, None)  # writes what is pending for this slide first
        self.store = None
        self.save_label.setText("")
        self._clear_annotations()
        self.editor.model.reset()
        self.view.close_slide()
        if self.slide is not None:
            if self.running:
                self.worker.cancel()
            self.slide.close()  # deferred by Slide itself until reads in flight finish
        self.slide = None

    # ------------------------------------------------------------------ recent files & drops

    def recent_files(self) -> list[str]:
        value = self.settings.value("recent", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def _add_recent(self, path: str) -> None:
        path = str(Path(path).resolve())
        recent = [p for p in self.recent_files() if p != path]
        self.settings.setValue("recent", [path, *recent][:MAX_RECENT])
        self._refresh_recent()

    def _refresh_recent(self) -> None:
        self.recent_menu.clear()
        recent = self.recent_files()
        for p in recent:
            a = self.recent_menu.addAction(Path(p).name)
            a.setToolTip(p)
            a.setStatusTip(p)
            a.triggered.connect(lambda _=False, p=p: self.open_slide(p))
        self.recent_menu.setEnabled(bool(recent))

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        files = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if files:
            event.acceptProposedAction()
            self.open_slide(files[0])

    # ------------------------------------------------------------------ status

    def _show_cursor(self, x: float, y: float) -> None:
        if self.slide is None:
            return
        w, h = self.slide.dimensions
        if not (0 <= x < w and 0 <= y < h):
            self.pos_label.setText("")
            return
        text = f"x {x:,.0f}  y {y:,.0f} px"
        if self.slide.mpp:
            text += f"  |  {x * self.slide.mpp[0]:,.1f}, {y * self.slide.mpp[1]:,.1f} µm"
        self.pos_label.setText(text)

    def _show_level(self) -> None:
        if self.slide is not None and self.view.grid is not None:
            self.level_label.setText(
                f"{self.view.grid.describe(self.view.level_for_zoom())}  ·  zoom {self.view.zoom:.3g}  ·  "
                f"{self.view.scale_bar.mag_text}"
            )

    def closeEvent(self, event) -> None:
        self.autosaver.shutdown()
        self.worker.stop()  # cancels a run and waits for the worker thread to finish
        self.running = False
        self._close_current()
        super().closeEvent(event)
