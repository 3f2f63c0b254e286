"""Help > Keyboard shortcuts and Help > About: what every key and mouse gesture does, and what
Delineo is for."""

from __future__ import annotations

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QMessageBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app import __version__

MOUSE = (
    ("Wheel", "Zoom to the cursor"),
    ("Drag", "Pan (also over the painted region)"),
    ("Click an outline", "Select it; Shift+click adds to the selection; a click elsewhere deselects"),
    ("Right-click an outline", "Class, lock, accept, merge, split, centre, delete"),
    ("Drag a vertex", "Move it (one selected outline; its vertices show as squares)"),
    ("Double-click an edge", "Insert a vertex"),
    ("Ctrl+drag the region", "Move the painted region"),
    ("Brush with an outline selected", "Add to the outline; Alt+brush or the eraser subtracts"),
    ("1-9 with outlines selected", "Set their class (Classes panel order); 1 alone is native resolution"),
    ("Ctrl+click or Alt+click a vertex", "Delete it (Ctrl where the desktop takes Alt+drag to move windows)"),
)

INTENDED_USE = (
    "For research use only; not for diagnosis. The shipped tumour model was trained on "
    "colorectal biopsies (EBHI-Seg, H&amp;E, about 1 µm/px): its outlines are proposals for a "
    "pathologist to check, correct and accept, and it is not meant for other organs or stains."
)


class ShortcutsDialog(QDialog):
    """Every action with a shortcut in the window, read from the actions themselves."""

    def __init__(self, actions: list[QAction], parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        rows = []
        seen = set()
        for a in actions:
            keys = ", ".join(s.toString(QKeySequence.SequenceFormat.NativeText) for s in a.shortcuts())
            text = a.text().replace("&", "").rstrip("…")
            for fixed in ("Undo", "Redo"):  # their text names the last step; the key is what matters
                if text.startswith(fixed):
                    text = fixed
            if keys and text and (text, keys) not in seen:
                seen.add((text, keys))
                rows.append((keys, text))
        rows.sort(key=lambda r: r[1].lower())
        rows += list(MOUSE)
        table = QTableWidget(len(rows), 2)
        table.setHorizontalHeaderLabels(["Key or gesture", "What it does"])
        table.verticalHeader().setVisible(False)
        table.horizontalHeader().setStretchLastSection(True)
        for r, (k, t) in enumerate(rows):
            table.setItem(r, 0, QTableWidgetItem(k))
            table.setItem(r, 1, QTableWidgetItem(t))
        table.resizeColumnToContents(0)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(table)
        layout.addWidget(buttons)
        self.table = table
        self.resize(620, 520)


def show_about(parent: QWidget, log_path: str) -> None:
    QMessageBox.about(
        parent,
        "About Delineo",
        f"<b>Delineo {__version__}</b><br>Whole-slide viewer with on-device tumour delineation."
        f"<br><br>{INTENDED_USE}<br><br>Log file for support:<br><code>{log_path}</code>",
    )
