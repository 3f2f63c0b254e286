"""The window's side of a slide's life: the open dialog, showing an opened slide in every part,
restoring its saved work, the missing pixel size, the autosave line, and forgetting it on close.

`SlideSession` reads and writes the disk and knows nothing of the window's parts; this puts
what it reports on screen, so the session stays testable without a window.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication, QFileDialog, QInputDialog

from app.ui.slide_session import OpenedSlide

log = logging.getLogger(__name__)


class SlideLifecycle(QObject):
    opened = Signal(str)  # the path asked for, once every part shows the slide
    closed = Signal()  # the slide is gone from every part (closed, or replaced by another)
    openFailed = Signal(str)  # message

    def __init__(self, window):
        """`window`: the MainWindow, whose parts (view, layer, controller, docks) are built."""
        super().__init__(window)
        self.w = window
        self._associated: dict[str, QImage] = {}
        s = window.session
        s.opened.connect(self._on_opened)
        s.openFailed.connect(self._on_open_failed)
        s.restored.connect(self._restored)
        s.restoreFailed.connect(lambda msg: window.show_error("Saved annotations not restored", msg))
        s.saved.connect(self._on_saved)
        s.saveFailed.connect(self._on_save_failed)

    # ------------------------------------------------------------------ opening

    def open_dialog(self) -> None:
        from app.core.slide import FORMAT_FILTER

        start = self.w.settings.value("last_dir", str(Path.home()))
        path, _ = QFileDialog.getOpenFileName(self.w, "Open slide", start, FORMAT_FILTER)
        if path:
            self.open_slide(path)

    def open_slide(self, path: str | Path) -> None:
        """Open in the background; the window stays responsive and shows an error dialog on failure."""
        path = str(path)
        self.w.statusBar().showMessage(f"Opening {Path(path).name}…")
        QApplication.setOverrideCursor(Qt.CursorShape.BusyCursor)
        self.w.session.open(path)

    def _on_opened(self, path: str, opened: OpenedSlide) -> None:
        w, session = self.w, self.w.session
        QApplication.restoreOverrideCursor()
        self.reset()
        slide = opened.slide
        w.view.set_slide(slide, opened.base)
        w.show_brush(w.editor.brush_um)
        w.controller.set_slide(slide, session.store)
        w.controller.worker.slideRequested.emit(slide, opened.thumbnail)
        # The runs of this session keep their maps: an undo or redo can bring their outlines back.
        session.restore(
            lambda: session.store.document(
                w.layer.annotations,
                w.editor.model.geometry,
                mpp=session.user_mpp,
                keep_runs=frozenset(w.controller.runs),
            )
        )
        w.view.overview.setVisible(w.overview_action.isChecked())
        self._associated = opened.associated
        w.info_panel.show_slide(slide.info(), opened.associated)
        w.setWindowTitle(f"{slide.name} — Delineo")
        w.recent.add(str(slide.path))
        w.settings.setValue("last_dir", str(Path(slide.path).parent))
        for i, note in enumerate(slide.notes):  # e.g. a DICOM series with a level file missing
            w.banners.show_message(f"slide-note:{i}", f"{slide.name}: {note}")
        w.statusBar().showMessage(f"Opened {slide.name}", 6000)
        log.info("opened %s", slide.path)
        self.opened.emit(path)

    def _on_open_failed(self, path: str, msg: str) -> None:
        QApplication.restoreOverrideCursor()
        self.w.statusBar().showMessage(f"Could not open {Path(path).name}", 6000)
        self.w.show_error("Cannot open slide", msg)
        self.openFailed.emit(msg)

    def _restored(self, state) -> None:
        w, session = self.w, self.w.session
        slide = session.slide
        if state.annotations:
            w.layer.reset(state.annotations)
        if not state.region.is_empty:
            current = w.editor.model.geometry
            w.editor.model.reset(state.region.union(current) if not current.is_empty else state.region)
        w.controller.restore_runs(getattr(state, "maps", {}) or {}, state.annotations)
        w.save_label.setText(session.where_saved())
        w.save_label.setToolTip(str(session.store.path))
        if state.annotations or not state.region.is_empty:
            w.show_status(f"Restored {len(state.annotations)} annotation(s) from {session.store.existing()}")
        if slide is not None and not slide.mpp:
            self._warn_no_pixel_size()
        elif session.user_mpp:
            w.view._view_changed()
            w.annotations_changed()

    # ------------------------------------------------------------------ pixel size

    def _warn_no_pixel_size(self) -> None:
        self.w.banners.show_message(
            "mpp",
            f"{self.w.slide.name} records no pixel size: the model assumes 1 µm/px and areas are in "
            "pixels. Set the pixel size if you know it.",
            ("Set pixel size…", self.pixel_size_dialog),
        )

    def pixel_size_dialog(self) -> None:
        slide = self.w.slide
        if slide is None:
            return
        current = self.w.session.mpp() or 1.0  # what runs assume until it is set
        value, ok = QInputDialog.getDouble(
            self.w,
            "Set pixel size",
            f"Pixel size of {slide.name} (µm per pixel):",
            current,
            0.01,
            100.0,
            4,
        )
        if ok:
            self.set_pixel_size(value)

    def set_pixel_size(self, mpp: float) -> None:
        w = self.w
        w.session.set_pixel_size(mpp)
        w.banners.dismiss("mpp")
        w.info_panel.show_slide(w.slide.info(), self._associated)
        w.view._view_changed()
        w.show_brush(w.editor.brush_um)
        w.annotations_changed()
        w.show_status(f"Pixel size of {w.slide.name} set to {mpp:g} µm/px; saved with its annotations")

    # ------------------------------------------------------------------ autosave line

    def _on_saved(self, path: str) -> None:
        self.w.save_label.setText(self.w.session.saved_text(path))
        self.w.save_label.setToolTip(path)

    def _on_save_failed(self, message: str) -> None:
        self.w.save_label.setText(f"<b>Not saved:</b> {message}")
        self.w.banners.show_message("save", f"Not saved: {message}")

    # ------------------------------------------------------------------ closing

    def reset(self) -> None:
        """Forget the previous slide: its outlines, region, history, banners and panels."""
        w = self.w
        w.session.autosaver.attach(None, None)
        w.controller.set_slide(None, None)
        w.layer.reset([])
        w.editor.model.reset()
        w.banners.clear()
        w.status.clear_position()
        w.save_label.setText("")
        w.view.close_slide()

    def close_slide(self) -> None:
        self.reset()
        self.w.session.close()
        self.w.info_panel.clear()
        self.w.setWindowTitle("Delineo")
        self.closed.emit()
