"""The main window: wires the parts, each with one job (its menus: `window_menus`).

- `SlideView` (and its `RegionEditor` with the tools) shows the slide and takes the mouse;
- `AnnotationLayer` holds the outlines, the selection and the undo stack shared with the region;
- `AnnotationCommands` are what can be done to the selection (menu, keys, context menu);
- `DelineationController` runs the model and re-traces runs;
- `SlideSession` opens the slide and keeps its annotations on disk;
- `SlideLifecycle` shows an opened slide in every part, and forgets it on close;
- `AnnotationFileDialogs` are File > Import annotations and File > Export;
- docks (`window_layout`): slide info, annotations (list, totals, review), classes.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QEvent, QSettings, Qt, Signal
from PySide6.QtGui import QAction, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import QMainWindow, QMessageBox, QVBoxLayout, QWidget

from app.ui.annotation_commands import AnnotationCommands
from app.ui.annotation_file_dialogs import AnnotationFileDialogs
from app.ui.annotation_layer import AnnotationLayer
from app.ui.banner import BannerArea
from app.ui.classes_panel import ClassList
from app.ui.delineation_controller import DelineationController
from app.ui.garbage_collection import collect_garbage_on_gui_thread
from app.ui.help_dialogs import INTENDED_USE, ShortcutsDialog
from app.ui.settings_dialog import SettingsDialog, adaptive_enabled, load_settings
from app.ui.slide_lifecycle import SlideLifecycle
from app.ui.slide_session import SlideSession
from app.ui.slide_view import SlideView
from app.ui.status_line import StatusBar, StatusLine
from app.ui.tool_bar import ToolBar
from app.ui.tools import SelectTool, SplitLineTool
from app.ui.window_layout import build_docks, fit_to, restore_or_fit, save_layout
from app.ui.window_menus import build_menus


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
        self.setAcceptDrops(True)
        self.error_dialog: QMessageBox | None = None
        self.info_dialog: QMessageBox | None = None

        self.view = SlideView(self)
        self.editor = self.view.editor
        self.banners = BannerArea()
        central = QWidget()
        column = QVBoxLayout(central)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self.banners)
        column.addWidget(self.view, 1)
        self.setCentralWidget(central)

        self.layer = AnnotationLayer(self.view.scene(), self.editor.model.undo_stack, self)
        self.editor.attach_layer(self.layer)
        self.classes = ClassList(self.settings, self)
        self.commands = AnnotationCommands(self.layer, self.classes, self)
        self.session = SlideSession(self.settings, self)
        self.controller = DelineationController(self, self.view, self.layer, self.settings)
        build_docks(self)
        self.setStatusBar(StatusBar())
        self.status = StatusLine(self.statusBar(), self.controller.progress, self.controller.cancel_button)
        self.engine_label = self.status.engine_label
        self.level_label = self.status.level_label
        self.lifecycle = SlideLifecycle(self)
        self.annotation_files = AnnotationFileDialogs(self)
        self._connect()
        build_menus(self)
        self._build_toolbar()
        self.update_actions()
        self.statusBar().showMessage("Open a slide: File > Open (Ctrl+O) or drop a file here")
        worker = self.controller.worker
        worker.prepareRequested.emit(load_settings(self.settings), adaptive_enabled(self.settings))
        restore_or_fit(self)

    # ------------------------------------------------------------------ wiring

    def _connect(self) -> None:
        layer, panel, c, s = self.layer, self.annotations_panel, self.controller, self.session
        layer.changed.connect(self.annotations_changed)
        layer.selectionChanged.connect(self._selection_changed)
        panel.selectionChanged.connect(self._panel_selected)
        panel.activated.connect(self._centre_on_annotation)
        panel.contextMenuRequested.connect(lambda pos: self.commands.context_menu().popup(pos))
        self.commands.message.connect(self.show_status)
        self.commands.centreRequested.connect(self.view.centre_on)
        self.commands.splitLineRequested.connect(lambda: self.editor.set_tool(SplitLineTool.name))
        self.editor.lineDrawn.connect(self._split_line_drawn)
        self.classes_panel.displayChanged.connect(layer.set_class_display)
        self.review_panel.retraceRequested.connect(c.retrace)
        self.review_panel.acceptAllRequested.connect(c.accept_all_in_region)
        self.review_panel.min_area.valueChanged.connect(lambda v: setattr(c, "min_area_um2", float(v)))
        c.runChanged.connect(self.review_panel.set_run)
        c.message.connect(self.show_status)
        c.notice.connect(self._notice)
        c.started.connect(self._run_started)
        c.finished.connect(self._run_finished)
        c.failed.connect(self._run_failed)
        c.ended.connect(self.update_actions)
        self.lifecycle.opened.connect(lambda _: self.update_actions())
        self.lifecycle.closed.connect(self.update_actions)
        w = c.worker.worker
        # Bound methods (not lambdas): a slot of a QObject runs on that object's (GUI) thread.
        w.status.connect(self._show_worker_status)
        w.engineReady.connect(self._show_engine)
        self.editor.model.changed.connect(s.autosaver.changed)
        self.editor.model.changed.connect(lambda: self.banners.dismiss("region"))
        layer.changed.connect(s.autosaver.changed)
        self.lifecycle.opened.connect(self.slideOpened)
        self.lifecycle.openFailed.connect(self.openFailed)
        self.annotation_files.imported.connect(self.annotationsImported)
        self.annotation_files.exported.connect(self.exported)
        self.view.cursorMoved.connect(lambda x, y: self.status.show_cursor(self.slide, x, y))
        self.view.viewChanged.connect(lambda: self.status.show_level(self.view))
        self.view.tileFailed.connect(lambda msg: self.show_status(msg, 8000))
        self.view.contextMenuAt = self._context_menu_at

    # ------------------------------------------------------------------ what callers read most

    @property
    def slide(self):
        return self.session.slide

    @property
    def store(self):
        return self.session.store

    @property
    def autosaver(self):
        return self.session.autosaver

    @property
    def annotations(self):
        return self.layer.annotations

    @property
    def worker(self):
        return self.controller.worker

    @property
    def overlay(self):
        return self.controller.overlay

    @property
    def running(self) -> bool:
        return self.controller.running

    def add_annotations(self, new) -> None:
        self.layer.add(list(new))

    def delineate(self) -> None:
        self.controller.start()

    # ------------------------------------------------------------------ menus and tools

    def _action(self, text: str, slot, keys: str | list[str] | None = None, menu=None, **kw) -> QAction:
        a = QAction(text, self, **kw)
        if keys:
            a.setShortcuts([QKeySequence(k) for k in ([keys] if isinstance(keys, str) else keys)])
        if slot is not None:
            (a.toggled if a.isCheckable() else a.triggered).connect(slot)
        if menu is not None:
            menu.addAction(a)
        self.addAction(a)
        return a

    def _build_toolbar(self) -> None:
        self.delineate_action = self._action("Delineate region", self.delineate, "Ctrl+D")
        self.delineate_action.setToolTip("Delineate tumour in the painted region (Ctrl+D)")
        esc = self._action("Cancel delineation", self.controller.cancel, "Esc")
        esc.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        self.tool_bar = ToolBar(
            self.editor, self.undo_action, self.redo_action, self.delineate_action, self.overlay_action, self
        )
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, self.tool_bar)
        self.brush_size, self.opacity = self.tool_bar.brush_size, self.tool_bar.opacity
        self.tool_bar.opacityChanged.connect(self._set_opacity)
        self.editor.brushChanged.connect(self.show_brush)
        self._set_opacity(self.opacity.value())

    def show_self_test(self) -> None:
        from app.ui.self_test_dialog import SelfTestDialog

        self.self_test_dialog = SelfTestDialog(self)
        self.self_test_dialog.open()

    def show_shortcuts(self) -> None:
        tools = list(self.tool_bar.tool_actions.values())
        self.shortcuts_dialog = ShortcutsDialog(tools + self.actions(), self)
        self.shortcuts_dialog.open()

    # ------------------------------------------------------------------ display

    def overlay_opacity(self) -> float:
        return self.opacity.value() / 100

    def overlay_visible(self) -> bool:
        return self.overlay_action.isChecked()

    def _set_overlay_visible(self, visible: bool) -> None:
        if self.overlay is not None:
            self.overlay.setVisible(visible and self.running)
        self.layer.set_visible(visible)

    def _set_region_visible(self, visible: bool) -> None:
        self.editor.region_item.setVisible(visible)

    def _set_opacity(self, value: int) -> None:
        if self.overlay is not None:
            self.overlay.setOpacity(value / 100)
        self.layer.set_opacity(min(1.0, 0.3 + value / 100))

    def show_brush(self, um: float) -> None:
        unit = "µm" if self.slide is not None and self.slide.mpp else "px"
        self.tool_bar.show_brush(um, unit)
        self.statusBar().showMessage(f"Brush {um:.0f} {unit}", 2000)

    def show_status(self, message: str, timeout_ms: int = 8000) -> None:
        self.status.show(message, timeout_ms)

    def _show_worker_status(self, message: str) -> None:
        self.show_status(message, 10_000)

    def _show_engine(self, description: str) -> None:
        self.engine_label.setText(description)
        self.banners.dismiss("engine")

    # ------------------------------------------------------------------ delineation

    def update_actions(self) -> None:
        """What needs a slide is greyed while none is open, and Delineate while a run is going
        (a run ended however it ended, the slide closed midway included, gives them back)."""
        has_slide = self.slide is not None
        for a in self.slide_actions:
            a.setEnabled(has_slide)
        idle = has_slide and not self.controller.running
        self.delineate_action.setEnabled(idle)
        self.whole_slide_action.setEnabled(idle)
        self.review_panel.accept_button.setEnabled(has_slide)

    def _run_started(self) -> None:
        self.update_actions()
        if not self.settings.value("notices/intended_use_shown", False, type=bool):
            self.banners.show_message("intended-use", INTENDED_USE.replace("&amp;", "&"))
            self.settings.setValue("notices/intended_use_shown", True)

    def _run_finished(self, result) -> None:
        self.classes.include(result.probability_map.scheme.foreground)  # a model's own classes
        self.delineationFinished.emit(result)

    def _run_failed(self, message: str) -> None:
        if not self.controller.running:  # preparing failed: a device or endpoint that is not there
            self.engine_label.setText("model not ready")
            self.banners.show_message(
                "engine",
                f"The model is not ready: {message}. "
                "Choose another device or engine in Delineation settings.",
                ("Settings…", self.open_settings),
            )
        self.delineationFailed.emit(message)

    def open_settings(self) -> None:
        note = ""
        choice = self.controller.worker.worker.precision_choice
        if choice:
            ms = ", ".join(f"{p.upper()} {t:.0f} ms" for p, t in choice[1].items())
            note = f"Auto chose {choice[0].upper()} on this computer ({ms} per tile)."
        dlg = SettingsDialog(self.settings, note, self)
        if dlg.exec():
            self.controller.worker.prepareRequested.emit(dlg.value(), dlg.adaptive.isChecked())

    # ------------------------------------------------------------------ annotations

    def annotations_changed(self) -> None:
        self.controller.sync_with_layer()
        self.annotations_panel.set_annotations(
            self.layer.annotations, self.session.mpp(), self.layer.selected
        )
        self.annotationsChanged.emit()

    def _selection_changed(self) -> None:
        self.annotations_panel.show_selection(self.layer.selected)
        self.controller.follow_selection()

    def _panel_selected(self, ids: list[str]) -> None:
        """Chosen in the list: selected in the view, and one alone brought to the centre."""
        self.layer.select(ids)
        if len(ids) == 1:
            self._centre_on_annotation(ids[0])

    def _notice(self, key: str, text: str) -> None:
        if (
            "pixel size" in text
            and self.slide is not None
            and self.session.user_mpp is None
            and not self.slide.mpp
        ):
            return  # the no-pixel-size banner already says it, with the button to set one
        self.banners.show_message(key, text)

    def _centre_on_annotation(self, ann_id: str) -> None:
        a = self.layer.by_id(ann_id)
        if a is not None:
            c = a.geometry.centroid
            self.view.centre_on(c.x, c.y)

    def select_annotation(self, ann_id: str) -> None:
        self.layer.select([ann_id])
        self._centre_on_annotation(ann_id)

    def _split_line_drawn(self, line) -> None:
        self.commands.split_line(line)
        self.editor.set_tool(SelectTool.name)

    def _context_menu_at(self, x: float, y: float, global_pos) -> bool:
        hit = self.layer.at(x, y)
        if hit is None:
            return False
        if hit.id not in self.layer.selected:
            self.layer.select([hit.id])
        self.commands.context_menu().popup(global_pos)
        return True

    # ------------------------------------------------------------------ what tests and scripts call

    def open_slide(self, path: str | Path) -> None:
        self.lifecycle.open_slide(path)

    def close_slide(self) -> None:
        self.lifecycle.close_slide()

    def set_pixel_size(self, mpp: float) -> None:
        self.lifecycle.set_pixel_size(mpp)

    def import_annotations(self, path: str) -> None:
        self.annotation_files.import_annotations(path)

    def export_to(self, fmt: str, path: str) -> None:
        self.annotation_files.export_to(fmt, path)

    # ------------------------------------------------------------------ dialogs

    def show_error(self, title: str, message: str) -> None:
        """A window-modal dialog that does not block the event loop."""
        box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.open()
        self.error_dialog = box

    def show_info(self, title: str, message: str) -> None:
        box = QMessageBox(QMessageBox.Icon.Information, title, message, QMessageBox.StandardButton.Ok, self)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.open()
        self.info_dialog = box

    # ------------------------------------------------------------------ recent files and drops

    def recent_files(self) -> list[str]:
        return self.recent.files()

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        files = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if files:
            event.acceptProposedAction()
            self.lifecycle.open_slide(files[0])

    # ------------------------------------------------------------------ geometry and events

    def fit_to(self, available) -> None:
        fit_to(self, available)

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.StatusTip:  # e.g. Open Recent's paths: elided like any message
            self.statusBar().showMessage(event.tip())
            return True
        return super().event(event)

    def closeEvent(self, event) -> None:
        save_layout(self)
        self.session.autosaver.shutdown()
        self.controller.stop()  # cancels a run and waits for the worker thread to finish
        self.lifecycle.reset()
        self.session.close()
        super().closeEvent(event)
