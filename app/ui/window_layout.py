"""Where the main window's parts go: the docks in the right column, and the window's size and
place on the screen (on a short one the docks share the column as tabs)."""

from __future__ import annotations

from PySide6.QtCore import QRect, Qt
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QFrame,
    QLabel,
    QMainWindow,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from app.ui.annotations_panel import AnnotationsPanel
from app.ui.classes_panel import ClassesPanel
from app.ui.info_panel import SlideInfoPanel
from app.ui.review_panel import ReviewPanel

PREFERRED_SIZE = (1280, 820)
DOCK_SHARE = 3  # the docks' column takes at most a third of the window by default
DOCK_FRAME = 8  # px a dock and its scroll area add around the panel


def _dock(w: QMainWindow, title: str, name: str, widget: QWidget) -> QDockWidget:
    """A dock whose content scrolls rather than forcing the window taller than a laptop."""
    dock = QDockWidget(title, w)
    dock.setObjectName(name)
    if not isinstance(widget, QScrollArea):
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(widget)
        widget = scroll
    dock.setWidget(widget)
    w.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    return dock


def build_docks(w) -> None:
    """Slide info, Annotations (review, list, autosave line) and Classes, kept as attributes of
    `w` (a MainWindow whose class list is built)."""
    w.info_panel = SlideInfoPanel()
    w.info_dock = _dock(w, "Slide info", "slide-info", w.info_panel)
    w.annotations_panel = AnnotationsPanel()
    w.review_panel = ReviewPanel()
    w.save_label = QLabel()
    w.save_label.setWordWrap(True)
    box = QWidget()
    column = QVBoxLayout(box)
    column.setContentsMargins(0, 0, 0, 0)
    column.addWidget(w.review_panel)
    column.addWidget(w.annotations_panel, 1)
    column.addWidget(w.save_label)
    w.annotations_dock = _dock(w, "Annotations", "annotations", box)
    w.classes_panel = ClassesPanel(w.classes)
    w.classes_dock = _dock(w, "Classes", "classes", w.classes_panel)
    w.tabifyDockWidget(w.info_dock, w.classes_dock)
    w.info_dock.raise_()


def restore_or_fit(w) -> None:
    """Open where the user left it, or to fit the screen (a 1366x768 laptop at 150 % is 911x512
    device-independent pixels)."""
    geometry = w.settings.value("window/geometry")
    state = w.settings.value("window/state")
    if geometry is not None and w.restoreGeometry(geometry):
        if state is not None:
            w.restoreState(state)
        return
    screen = w.screen() or QApplication.primaryScreen()
    fit_to(w, screen.availableGeometry() if screen is not None else None)


def fit_to(w, available: QRect | None) -> None:
    """Size and place the window for this screen; on a short one (a laptop) the docks share
    one column as tabs, Annotations in front, so its totals and controls are not cut off. The
    column is as wide as a typical list of outlines needs, up to a third of the window."""
    if available is not None and available.height() < 900:
        w.tabifyDockWidget(w.info_dock, w.annotations_dock)
        w.annotations_dock.raise_()
    width, height = PREFERRED_SIZE
    if available is not None:
        width, height = min(width, available.width()), min(height, available.height() - 30)  # the title bar
        w.resize(width, height)
        w.move(
            available.x() + (available.width() - width) // 2,
            available.y() + max(0, (available.height() - height) // 2),
        )
    else:
        w.resize(width, height)
    column = min(w.annotations_panel.preferred_width() + DOCK_FRAME, width // DOCK_SHARE)
    w.resizeDocks([w.annotations_dock], [column], Qt.Orientation.Horizontal)


def save_layout(w) -> None:
    w.settings.setValue("window/geometry", w.saveGeometry())
    w.settings.setValue("window/state", w.saveState())
