"""The annotation classes: the list the user classifies with (persisted in the settings), and
a panel to add classes and choose how each is drawn (fill, outline)."""

from __future__ import annotations

from PySide6.QtCore import QObject, QSettings, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QColorDialog,
    QGridLayout,
    QInputDialog,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.core.annotation_classes import (
    DEFAULT_CLASSES,
    AnnotationClass,
    ClassListError,
    classes_from_json,
    classes_to_json,
)
from app.ui.overlay import ClassDisplay

SETTINGS_KEY = "annotations/classes"


class ClassList(QObject):
    """The classes in number-key order: QuPath's defaults, then the ones the user added."""

    changed = Signal()

    def __init__(self, settings: QSettings, parent: QObject | None = None):
        super().__init__(parent)
        self.settings = settings
        saved = settings.value(SETTINGS_KEY, "")
        try:
            self.classes: list[AnnotationClass] = classes_from_json(saved) if saved else list(DEFAULT_CLASSES)
        except ClassListError:
            self.classes = list(DEFAULT_CLASSES)
        if not self.classes:
            self.classes = list(DEFAULT_CLASSES)

    def add(self, cls: AnnotationClass) -> None:
        self.classes = [c for c in self.classes if c.name != cls.name] + [cls]
        self.settings.setValue(SETTINGS_KEY, classes_to_json(self.classes))
        self.changed.emit()

    def include(self, classes) -> None:
        """Add a model's classes (name, color) the list does not have yet, in the model's
        colours, so they can be shown, hidden and assigned like the user's own."""
        new = [AnnotationClass(c.name, tuple(c.color)) for c in classes if self.colour_of(c.name) is None]
        if new:
            self.classes = [*self.classes, *new]
            self.settings.setValue(SETTINGS_KEY, classes_to_json(self.classes))
            self.changed.emit()

    def colour_of(self, name: str) -> tuple[int, int, int] | None:
        return next((c.color for c in self.classes if c.name == name), None)


class ClassesPanel(QWidget):
    displayChanged = Signal(str, object)  # class name, ClassDisplay

    def __init__(self, classes: ClassList, parent: QWidget | None = None):
        super().__init__(parent)
        self.classes = classes
        self.boxes: dict[str, tuple[QCheckBox, QCheckBox]] = {}
        self.grid = QGridLayout()
        self.grid.setContentsMargins(0, 0, 0, 0)
        add = QPushButton("Add class…")
        add.setToolTip("A class of your own, with its colour (kept for every slide)")
        add.clicked.connect(self.add_dialog)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(self.grid)
        layout.addWidget(add)
        layout.addStretch(1)
        classes.changed.connect(self.rebuild)
        self.rebuild()

    def rebuild(self) -> None:
        while self.grid.count():
            w = self.grid.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        for col, text in enumerate(("Key", "Class", "Fill", "Outline")):
            self.grid.addWidget(QLabel(f"<b>{text}</b>"), 0, col)
        old = self.boxes
        self.boxes = {}
        for row, cls in enumerate(self.classes.classes, start=1):
            key = QLabel(str(row) if row <= 9 else "")
            name = QLabel(f"<span style='color:rgb{cls.color}'>■</span> {cls.name}")
            fill, outline = QCheckBox(), QCheckBox()
            was = old.get(cls.name)
            fill.setChecked(was[0].isChecked() if was else True)
            outline.setChecked(was[1].isChecked() if was else True)
            fill.setToolTip(f"Fill {cls.name} outlines")
            outline.setToolTip(f"Draw {cls.name} outlines")
            for box in (fill, outline):
                box.toggled.connect(lambda _=False, n=cls.name: self._changed(n))
            self.boxes[cls.name] = (fill, outline)
            for col, w in enumerate((key, name, fill, outline)):
                self.grid.addWidget(w, row, col)

    def _changed(self, name: str) -> None:
        fill, outline = self.boxes[name]
        self.displayChanged.emit(name, ClassDisplay(fill.isChecked(), outline.isChecked()))

    def add_dialog(self) -> None:
        name, ok = QInputDialog.getText(self, "Add class", "Name of the class:")
        name = name.strip()
        if not ok or not name:
            return
        colour = QColorDialog.getColor(QColor(0, 160, 220), self, f"Colour of {name}")
        if colour.isValid():
            self.classes.add(AnnotationClass(name, (colour.red(), colour.green(), colour.blue())))
