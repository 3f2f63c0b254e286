"""File > Import annotations and File > Export: the file dialogs, and what the window shows when
the session's background read or write ends (the outlines added, a status line, a dialog)."""

from __future__ import annotations

from pathlib import Path

import shapely
from PySide6.QtCore import QObject, QRectF, Signal
from PySide6.QtWidgets import QFileDialog

from app.ui.window_menus import EXPORTS


class AnnotationFileDialogs(QObject):
    imported = Signal(int)  # count, -1 on failure
    exported = Signal(str)  # path, "" on failure

    def __init__(self, window):
        """`window`: the MainWindow, whose session, layer and view are built."""
        super().__init__(window)
        self.w = window
        s = window.session
        s.imported.connect(self._imported)
        s.importFailed.connect(self._import_failed)
        s.exported.connect(self._exported)
        s.exportFailed.connect(self._export_failed)

    # ------------------------------------------------------------------ import

    def import_dialog(self) -> None:
        slide = self.w.slide
        if slide is None:
            return
        folder = self.w.settings.value("export_dir", "") or str(slide.path.parent)
        path, _ = QFileDialog.getOpenFileName(
            self.w, "Import annotations", folder, "GeoJSON (*.geojson *.json);;All files (*)"
        )
        if path:
            self.import_annotations(path)

    def import_annotations(self, path: str) -> None:
        self.w.session.import_file(path)

    def _imported(self, annotations, notes, path: str) -> None:
        fresh = not_already_open(annotations, self.w.layer.annotations)
        if fresh:
            self.w.layer.add(fresh, f"Import {Path(path).name}")
        msg = f"Imported {len(fresh)} annotation(s) from {Path(path).name}"
        if len(fresh) < len(annotations):  # the same file imported twice, or an export of these
            msg += f"; {len(annotations) - len(fresh)} already open were left out"
        self.w.show_status(msg)
        if notes:
            self.w.show_info("Import notes", msg + ":\n\n" + "\n".join(notes[:20]))
        self.imported.emit(len(fresh))

    def _import_failed(self, message: str) -> None:
        self.w.show_error("Import failed", f"{message}\n\nThe open annotations are unchanged.")
        self.imported.emit(-1)

    # ------------------------------------------------------------------ export

    def export_dialog(self, fmt: str) -> None:
        if self.w.slide is None:
            return
        ext = next(e for f, _, e in EXPORTS if f == fmt)
        path, _ = QFileDialog.getSaveFileName(self.w, "Export", self.w.session.default_export_path(fmt), ext)
        if path:
            self.export_to(fmt, path)

    def export_to(self, fmt: str, path: str) -> None:
        """The PNG is the view as shown: its rectangle (within the slide) at its zoom."""
        w = self.w
        r = w.view.visible_rect().intersected(QRectF(0, 0, *w.slide.dimensions))
        mpp = w.session.mpp()
        view_mpp = (mpp / w.view.zoom) if mpp else 1 / w.view.zoom
        w.session.export(fmt, path, w.layer.annotations, (r.x(), r.y(), r.width(), r.height()), view_mpp)

    def _exported(self, fmt: str, path: str) -> None:
        self.w.show_status(f"Exported {fmt} to {path}", 10_000)
        self.exported.emit(path)

    def _export_failed(self, message: str) -> None:
        self.w.show_error("Export failed", message)
        self.exported.emit("")


def not_already_open(imported: list, existing: list) -> list:
    """The imported annotations that are not already open: one of the same class with the same
    outline (to a thousandth of its area, what a round trip through a file keeps) is."""
    if not existing:
        return list(imported)
    tree = shapely.STRtree([a.geometry for a in existing])
    out = []
    for a in imported:
        same = any(
            existing[i].cls == a.cls
            and existing[i].geometry.symmetric_difference(a.geometry).area <= 1e-3 * a.geometry.area
            for i in tree.query(a.geometry, predicate="intersects")
        )
        if not same:
            out.append(a)
    return out
