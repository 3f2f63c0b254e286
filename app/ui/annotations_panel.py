"""The annotations list: class, area and origin of each outline; selecting one centres the view."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.annotations import Annotation


def format_area(area_px: float, mpp: float | None) -> str:
    if mpp is None:
        return f"{area_px:,.0f} px²"
    mm2 = area_px * mpp * mpp / 1e6
    return f"{mm2:.3f} mm²" if mm2 >= 0.001 else f"{mm2 * 1e6:,.0f} µm²"


class AnnotationsPanel(QWidget):
    selected = Signal(str)  # annotation id
    deleteRequested = Signal(list)  # ids

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Class", "Area", "Source"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.summary = QLabel("No annotations")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.table)
        layout.addWidget(self.summary)
        self.ids: list[str] = []
        self.table.itemSelectionChanged.connect(self._on_selection)

    def set_annotations(self, annotations: list[Annotation], mpp: float | None) -> None:
        self.table.blockSignals(True)
        self.table.setRowCount(len(annotations))
        self.ids = [a.id for a in annotations]
        total = 0.0
        for row, a in enumerate(annotations):
            cls = QTableWidgetItem(a.cls)
            cls.setForeground(QColor(*a.color))
            area = QTableWidgetItem(format_area(a.geometry.area, mpp))
            area.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            area.setData(Qt.ItemDataRole.UserRole, a.geometry.area)
            self.table.setItem(row, 0, cls)
            self.table.setItem(row, 1, area)
            self.table.setItem(row, 2, QTableWidgetItem(a.source))
            total += a.geometry.area
        self.table.blockSignals(False)
        self.summary.setText(
            f"{len(annotations)} annotation(s), {format_area(total, mpp)} in all"
            if annotations
            else "No annotations"
        )

    def select_id(self, ann_id: str, quiet: bool = False) -> None:
        """Select a row; `quiet` does not emit `selected` (the caller handles it)."""
        if ann_id in self.ids:
            self.table.blockSignals(quiet)
            self.table.selectRow(self.ids.index(ann_id))
            self.table.blockSignals(False)

    def selected_ids(self) -> list[str]:
        return [self.ids[i.row()] for i in self.table.selectionModel().selectedRows()]

    def _on_selection(self) -> None:
        ids = self.selected_ids()
        if ids:
            self.selected.emit(ids[0])

    def keyPressEvent(self, event) -> None:
        if event.key() in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace) and self.selected_ids():
            self.deleteRequested.emit(self.selected_ids())
        else:
            super().keyPressEvent(event)
