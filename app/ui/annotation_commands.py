"""What can be done to the selected outlines: delete, merge, split, class, lock, accept, centre;
as window actions with their shortcuts and as the context menu on an outline.

Each command is one call into `app.core.annotation_edits` and one undo step on the layer.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QAction, QColor, QIcon, QKeySequence, QPixmap
from PySide6.QtWidgets import QMenu, QWidget

from app.core.annotation_classes import AnnotationClass
from app.core.annotation_edits import merge, set_class, set_locked, split_along, split_parts
from app.ui.annotation_layer import AnnotationLayer


def swatch(colour: tuple[int, int, int]) -> QIcon:
    pm = QPixmap(14, 14)
    pm.fill(QColor(*colour))
    return QIcon(pm)


class AnnotationCommands(QObject):
    message = Signal(str, int)
    centreRequested = Signal(float, float)
    splitLineRequested = Signal()  # the window switches to the split-line tool

    def __init__(self, layer: AnnotationLayer, classes, parent: QWidget):
        super().__init__(parent)
        self.layer = layer
        self.classes = classes  # ClassList
        self.parent_widget = parent

        def action(text: str, slot, keys: str | list[str] | None = None, tip: str = "") -> QAction:
            a = QAction(text, parent)
            if keys:
                a.setShortcuts([QKeySequence(k) for k in ([keys] if isinstance(keys, str) else keys)])
            a.setToolTip(tip or text)
            a.triggered.connect(slot)
            parent.addAction(a)
            return a

        self.delete_action = action("&Delete selected", self.delete, ["Delete", "Backspace"])
        self.merge_action = action("&Merge selected", self.merge, "Ctrl+Shift+M")
        self.split_parts_action = action("Split into &parts", self.split_parts, "Ctrl+Shift+P")
        self.split_line_action = action("Split along a &line…", self.splitLineRequested.emit)
        self.lock_action = action("&Lock / unlock", self.toggle_lock, "Ctrl+L")
        self.accept_action = action("&Accept selected", self.accept, "Ctrl+Return")
        self.select_all_action = action("Select &all outlines", self.select_all, "Ctrl+A")
        self.class_actions: list[QAction] = []
        for n in range(2, 10):  # 1 is shared with View > Native resolution, see set_class_number
            self.class_actions.append(
                action(f"Class {n}", lambda _=False, n=n: self.set_class_number(n), str(n))
            )
        classes.changed.connect(self._name_class_actions)
        self._name_class_actions()

    def _name_class_actions(self) -> None:
        """The number keys' actions say which class they set (the shortcuts list reads them)."""
        names = [c.name for c in self.classes.classes]
        for n, a in enumerate(self.class_actions, start=2):
            a.setText(f"Set class {names[n - 1]}" if n <= len(names) else "")
            a.setEnabled(n <= len(names))

    # ------------------------------------------------------------------ commands

    def _selection(self, verb: str):
        sel = self.layer.selected_annotations()
        if not sel:
            self.message.emit(f"Select an outline to {verb} (click it; Shift-click adds)", 5000)
        return sel

    def delete(self) -> None:
        sel = self._selection("delete")
        locked = [a for a in sel if a.locked]
        doomed = [a.id for a in sel if not a.locked]
        if doomed:
            self.layer.remove(doomed, f"Delete {len(doomed)} outline(s)")
            self.message.emit(f"Deleted {len(doomed)} outline(s); Ctrl+Z brings them back", 6000)
        if locked:
            self.message.emit(f"{len(locked)} locked outline(s) kept: unlock them first (Ctrl+L)", 6000)

    def merge(self) -> None:
        sel = [a for a in self._selection("merge") if not a.locked]
        if len(sel) < 2:
            self.message.emit("Select two or more unlocked outlines to merge (Shift-click adds)", 5000)
            return
        merged = merge(sel)
        ids = {a.id for a in sel}
        out = []
        for a in self.layer.annotations:
            if a.id == merged.id:
                out.append(merged)
            elif a.id not in ids:
                out.append(a)
        self.layer.apply(out, f"Merge {len(sel)} outlines")
        self.layer.select([merged.id])

    def split_parts(self) -> None:
        sel = [a for a in self._selection("split") if not a.locked]
        out, made = [], 0
        chosen = {a.id for a in sel}
        for a in self.layer.annotations:
            if a.id in chosen:
                parts = split_parts(a)
                made += len(parts) - 1
                out.extend(parts)
            else:
                out.append(a)
        if made:
            self.layer.apply(out, "Split into parts")
        else:
            self.message.emit("Each selected outline is already one part", 5000)

    def split_line(self, line) -> None:
        sel = [a for a in self.layer.selected_annotations() if not a.locked]
        if len(sel) != 1:
            self.message.emit("Select one unlocked outline, then draw the line across it", 6000)
            return
        parts = split_along(sel[0], line)
        if len(parts) < 2:
            self.message.emit("The line does not cross the outline from edge to edge; nothing split", 6000)
            return
        out = []
        for a in self.layer.annotations:
            out.extend(parts if a.id == sel[0].id else [a])
        self.layer.apply(out, "Split along a line")

    def set_class(self, cls: AnnotationClass) -> None:
        sel = [a for a in self._selection("classify") if not a.locked]
        if not sel:
            return
        changed = {a.id: b for a, b in zip(sel, set_class(sel, cls), strict=True)}
        self.layer.replace(changed, f"Class {cls.name}")
        self.message.emit(f"{len(sel)} outline(s) set to {cls.name}", 4000)

    def set_class_number(self, n: int) -> bool:
        """Number key n: the n-th class for the selection; False when nothing is selected."""
        if not self.layer.selected:
            return False
        classes = self.classes.classes
        if 1 <= n <= len(classes):
            self.set_class(classes[n - 1])
        return True

    def toggle_lock(self) -> None:
        sel = self._selection("lock")
        if not sel:
            return
        lock = not all(a.locked for a in sel)
        changed = {a.id: b for a, b in zip(sel, set_locked(sel, lock), strict=True)}
        self.layer.replace(changed, "Lock" if lock else "Unlock")

    def accept(self) -> None:
        import dataclasses

        sel = [a for a in self._selection("accept") if a.review != "accepted"]
        self.layer.replace({a.id: dataclasses.replace(a, review="accepted") for a in sel}, "Accept")

    def select_all(self) -> None:
        self.layer.select([a.id for a in self.layer.annotations])

    def centre(self) -> None:
        sel = self.layer.selected_annotations()
        if sel:
            c = sel[0].geometry.centroid
            self.centreRequested.emit(c.x, c.y)

    # ------------------------------------------------------------------ context menu

    def context_menu(self) -> QMenu:
        """The menu for the selection (the window selects what was right-clicked first)."""
        menu = QMenu(self.parent_widget)
        sel = self.layer.selected_annotations()
        classes = menu.addMenu("Set &class")
        for i, cls in enumerate(self.classes.classes, start=1):
            a = classes.addAction(swatch(cls.color), f"{cls.name}\t{i}" if i <= 9 else cls.name)
            a.triggered.connect(lambda _=False, c=cls: self.set_class(c))
        locked = bool(sel) and all(a.locked for a in sel)
        menu.addAction("Un&lock" if locked else "&Lock", self.toggle_lock)
        menu.addAction("&Accept", self.accept)
        menu.addSeparator()
        m = menu.addAction("&Merge selected", self.merge)
        m.setEnabled(len(sel) >= 2)
        menu.addAction("Split into &parts", self.split_parts)
        menu.addAction("Split along a &line…", self.splitLineRequested.emit)
        menu.addSeparator()
        menu.addAction("&Centre in view", self.centre)
        menu.addAction("&Delete", self.delete)
        menu.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        return menu
